"""Limits over gRPC with real Workers (issue 8, defects 3, 4 and 8): two jobs naming two queues
in opposite orders both complete; cancelled jobs give their rate-limit tokens back; an unbounded
refresh interval is refused."""

from __future__ import annotations

import trio

from silo.client import (
    ConcurrencyLimit,
    FloatingConcurrencyLimit,
    JobStatus,
    RateLimit,
    SiloClient,
    Worker,
)
from silo.errors import InvalidArgument
from tests.integration.conftest import StartNode


async def test_two_jobs_naming_two_queues_in_opposite_orders_both_complete(
    start_node: StartNode,
) -> None:
    node = await start_node(lease_ms=5000)
    a, b = ConcurrencyLimit("A", 1), ConcurrencyLimit("B", 1)

    async def handler(ctx):  # type: ignore[no-untyped-def]
        # The holder of A finishes after the holder of B: J2 is granted B while J1 waits for
        # A, then J1 is granted A (it asked first) and asks for B.
        if ctx.payload == "hold-a":
            await trio.sleep(0.5)
        return ctx.payload

    async with SiloClient.connect(node.address) as client:
        holders = [await client.enqueue("cyc", "hold-a", limits=[a]),
                   await client.enqueue("cyc", "hold-b", limits=[b])]
        j1 = await client.enqueue("cyc", "j1", limits=[a, b])
        j2 = await client.enqueue("cyc", "j2", limits=[b, a])
        worker = Worker(client, "cyc", handler, max_concurrent_tasks=4)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with trio.fail_after(20):
                results = [await h.result() for h in [*holders, j1, j2]]
            # Later jobs on A or B are not stuck behind them.
            later = await client.enqueue("cyc", "later", limits=[b, a])
            with trio.fail_after(10):
                assert await later.result() == "later"
            worker.stop(5)
    assert results == ["hold-a", "hold-b", "j1", "j2"]


async def test_cancelled_jobs_give_their_rate_tokens_back(start_node: StartNode) -> None:
    """1 per 3 s, 20 jobs, 19 cancelled while they wait for their tokens: a new job runs within
    6 s (not a minute)."""
    node = await start_node()
    rate = RateLimit("api", "slow", 1, 3000)
    async with SiloClient.connect(node.address) as client:
        handles = [await client.enqueue("rate", i, limits=[rate]) for i in range(20)]
        for h in handles[1:]:
            await h.cancel()
        assert {await h.status() for h in handles[1:]} == {JobStatus.CANCELLED}

        async def handler(ctx):  # type: ignore[no-untyped-def]
            return ctx.payload

        worker = Worker(client, "rate", handler)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with trio.fail_after(10):
                assert await handles[0].result() == 0
            new = await client.enqueue("rate", "new", limits=[rate])
            with trio.fail_after(6.5):
                assert await new.result() == "new"
            worker.stop(5)


async def test_refresh_interval_beyond_its_limit_is_refused(start_node: StartNode) -> None:
    node = await start_node()
    async with SiloClient.connect(node.address) as client:
        limit = FloatingConcurrencyLimit("F", 1, 2**64 - 1)
        try:
            await client.enqueue("g", 1, limits=[limit])
        except InvalidArgument as exc:
            assert "refresh_interval_max_ms" in exc.message
        else:
            raise AssertionError("a refresh interval of 2**64-1 ms was accepted")
