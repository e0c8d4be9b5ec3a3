"""Concurrency, floating and rate limits through the whole stack: gRPC, the Python client and
real Workers. The max is never exceeded and every job completes."""

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


class Gauge:
    """Counts handlers running at once, per key; remembers the peak."""

    def __init__(self) -> None:
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    def enter(self, key: str) -> None:
        self.now[key] = self.now.get(key, 0) + 1
        self.peak[key] = max(self.peak.get(key, 0), self.now[key])

    def leave(self, key: str) -> None:
        self.now[key] -= 1


async def test_concurrency_max_is_never_exceeded_and_every_job_completes(
    start_node: StartNode,
) -> None:
    node = await start_node(lease_ms=5000)
    gauge = Gauge()

    async def handler(ctx):  # type: ignore[no-untyped-def]
        key = f"{ctx.tenant}/{ctx.payload['queue']}"
        gauge.enter(key)
        try:
            await trio.sleep(0.01)
        finally:
            gauge.leave(key)
        return ctx.payload["i"]

    async with SiloClient.connect(node.address) as client:
        handles = []
        for i in range(60):
            queue = f"q{i % 3}"
            handles.append(
                await client.enqueue(
                    "work", {"i": i, "queue": queue}, tenant=f"tenant-{i % 2}",
                    limits=[ConcurrencyLimit(queue, 2)],
                )
            )
        parked = await handles[-1].get()
        assert parked.status == JobStatus.SCHEDULED
        assert "concurrency queue 'q2'" in parked.waiting_for
        workers = [Worker(client, "work", handler, max_concurrent_tasks=16) for _ in range(2)]
        async with trio.open_nursery() as nursery:
            for w in workers:
                nursery.start_soon(w.run)
            with trio.fail_after(30):
                results = [await h.result() for h in handles]
            for w in workers:
                w.stop(5)
    assert results == list(range(60))
    # Queues are per tenant: each (tenant, queue) admits 2 at once, and does reach 2.
    assert len(gauge.peak) == 6
    assert all(peak <= 2 for peak in gauge.peak.values()), gauge.peak
    assert max(gauge.peak.values()) == 2


async def test_floating_limit_is_refreshed_by_workers(start_node: StartNode) -> None:
    node = await start_node(lease_ms=5000)
    gauge = Gauge()
    refreshed: list[dict[str, str]] = []

    async def handler(ctx):  # type: ignore[no-untyped-def]
        gauge.enter("f")
        try:
            await trio.sleep(0.02)
        finally:
            gauge.leave("f")

    async def refresh(ctx):  # type: ignore[no-untyped-def]
        refreshed.append(dict(ctx.metadata))
        return 3

    async with SiloClient.connect(node.address) as client:
        limit = FloatingConcurrencyLimit("fq", 1, 60_000, {"source": "test"})
        handles = [await client.enqueue("float", i, limits=[limit]) for i in range(20)]
        worker = Worker(client, "float", handler, max_concurrent_tasks=10,
                        refresh_handler=refresh)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with trio.fail_after(30):
                for h in handles:
                    await h.result()
            worker.stop(5)
        queue = await client.queue("fq")
    assert refreshed and refreshed[0] == {"source": "test"}
    assert queue.floating and queue.max_concurrency == 3
    assert gauge.peak["f"] <= 3


async def test_rate_limit_spaces_jobs_out(start_node: StartNode) -> None:
    node = await start_node()
    async with SiloClient.connect(node.address) as client:
        limit = RateLimit("api", "k", 2, 60_000)
        handles = [await client.enqueue("rate", i, limits=[limit]) for i in range(3)]
        third = await handles[2].get()
        assert third.status == JobStatus.SCHEDULED
        assert "rate limit api/k" in third.waiting_for
        assert third.next_attempt_at_ms is not None
        assert third.next_attempt_at_ms > third.enqueued_at_ms + 20_000

        async def handler(ctx):  # type: ignore[no-untyped-def]
            return ctx.payload

        worker = Worker(client, "rate", handler)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with trio.fail_after(10):
                assert [await h.result() for h in handles[:2]] == [0, 1]
            assert (await handles[2].status()) == JobStatus.SCHEDULED
            worker.stop(5)


async def test_limit_errors_over_the_wire(start_node: StartNode) -> None:
    node = await start_node()
    async with SiloClient.connect(node.address) as client:
        try:
            await client.enqueue("g", 1, limits=[ConcurrencyLimit("", 1)])
        except InvalidArgument as exc:
            assert "concurrency limit key" in exc.message
        else:
            raise AssertionError("an empty limit key was accepted")
        try:
            await client.enqueue("g", 1, limits=[RateLimit("api", "k", 0, 1000)])
        except InvalidArgument as exc:
            assert "rate_limit_max" in exc.message
        else:
            raise AssertionError("a zero rate limit was accepted")
        # A queue without state (never used, or idle) has no holders and nobody waiting.
        idle = await client.queue("never-used")
        assert (idle.holders, idle.waiting, idle.holder_task_ids) == (0, 0, [])
