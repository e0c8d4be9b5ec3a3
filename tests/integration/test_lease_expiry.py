"""Leases over real gRPC: a worker that heartbeats too late is reaped, its job is retried on
another worker, and the stale worker's late result is not accepted; a worker that heartbeats
properly keeps a task far longer than one lease."""

from __future__ import annotations

from collections.abc import Callable

import trio

from silo.client import JobStatus, RetryPolicy, SiloClient, TaskContext, Worker, pack
from silo.errors import Code
from silo.model import AttemptState
from silo.wire import pb
from tests.integration.conftest import StartNode
from tests.integration.support import Raw, expect_error, wait_until

LEASE_MS = 500
RETRY = RetryPolicy(retry_count=2, initial_backoff_ms=10, max_backoff_ms=10)


async def acknowledge_running_attempt(raw: Raw, job_id: str, worker_id: str) -> None:
    """Acknowledge the running attempt's lease as ``worker_id`` (one heartbeat), so that its
    expiry counts as a crash of a worker that had the task, not as an undelivered lease."""
    job = await raw.get(job_id, attempts=True)
    (running,) = [a for a in job.attempts if a.state == pb.AttemptState.RUNNING]
    task = pb.Task(shard=await raw.shard(), task_id=running.task_id)
    await raw.heartbeat(task, worker_id)


def _counter(events: list[tuple[str, int]]) -> Callable[[str, int], None]:
    return lambda kind, n: events.append((kind, n))


async def test_stale_worker_is_reaped_and_its_late_report_refused(start_node: StartNode) -> None:
    node = await start_node(lease_ms=LEASE_MS)
    release = trio.Event()
    a_attempts: list[int] = []
    a_events: list[tuple[str, int]] = []

    async def slow(ctx: TaskContext) -> str:
        a_attempts.append(ctx.attempt)
        with trio.fail_after(20):
            await release.wait()
        return "from A"

    async def fast(ctx: TaskContext) -> str:
        return f"from B, attempt {ctx.attempt}"

    async with SiloClient.connect(node.address) as client:
        # A heartbeats every 10 leases: far too late to keep its lease. Without prefetch, so
        # that the re-queued attempt goes to B rather than waiting (and lapsing) behind A's.
        a = Worker(client, "stale", slow, worker_id="worker-A", max_concurrent_tasks=1,
                   prefetch=0, heartbeat_fraction=10, lease_wait_ms=200,
                   observer=_counter(a_events))
        b = Worker(client, "stale", fast, worker_id="worker-B", lease_wait_ms=200)
        job = await client.enqueue("stale", None, retry=RETRY)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.run)
            await wait_until(lambda: a_attempts == [1], timeout=10, what="A to start attempt 1")
            await acknowledge_running_attempt(Raw(client, node.address), job.id, "worker-A")
            nursery.start_soon(b.run)
            # A's lease expires, the reaper fails attempt 1, B runs attempt 2.
            assert await job.result(timeout=15) == "from B, attempt 2"
            assert a_attempts == [1]

            # Now A's handler finishes and A reports: the server must refuse it.
            release.set()
            await wait_until(lambda: ("dropped", 1) in a_events, timeout=10,
                             what="A's report to be answered (and refused)")
            a.stop(5)
            b.stop(5)

        info = await job.get(attempts=True)
        assert info.status == JobStatus.SUCCEEDED
        assert info.attempts is not None
        second, first = info.attempts  # newest first
        assert (first.attempt, first.state, first.worker_id, first.error_code) == (
            1, AttemptState.FAILED, "worker-A", "WORKER_CRASHED")
        assert (second.attempt, second.state, second.worker_id) == (
            2, AttemptState.SUCCEEDED, "worker-B")
        assert await job.result(timeout=1) == "from B, attempt 2"
        assert b.completed == 1

        # Replaying A's report by hand shows exactly what A was told.
        raw = Raw(client, node.address)
        task = pb.Task(shard=await client.shard_for("default"), task_id=first.task_id,
                       tenant="default", job_id=job.id, attempt=1)
        await expect_error(raw.report(task, "worker-A", success=pack("from A")), Code.NOT_FOUND,
                           "lease not found", "lease expired")
        await expect_error(raw.heartbeat(task, "worker-A"), Code.NOT_FOUND, "lease not found")


async def test_stale_worker_abandons_when_its_heartbeat_finds_the_lease_gone(
    start_node: StartNode,
) -> None:
    node = await start_node(lease_ms=LEASE_MS)
    interrupted: list[int] = []

    async def stuck(ctx: TaskContext) -> str:
        try:
            await trio.sleep(30)
        except trio.Cancelled:
            interrupted.append(ctx.attempt)
            raise
        return "never"

    async def fast(ctx: TaskContext) -> str:
        return "from B"

    async with SiloClient.connect(node.address) as client:
        # Heartbeat every 4 leases (2 s): the first heartbeat finds the lease reaped. Without
        # prefetch, so that the re-queued attempt goes to B rather than waiting behind A's.
        a = Worker(client, "abandon", stuck, worker_id="worker-A", max_concurrent_tasks=1,
                   prefetch=0, heartbeat_fraction=4, lease_wait_ms=200)
        b = Worker(client, "abandon", fast, worker_id="worker-B", lease_wait_ms=200)
        job = await client.enqueue("abandon", None, retry=RETRY)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.run)
            await wait_until(lambda: a._running != {}, timeout=10, what="A to start")
            await acknowledge_running_attempt(Raw(client, node.address), job.id, "worker-A")
            nursery.start_soon(b.run)
            assert await job.result(timeout=15) == "from B"
            await wait_until(lambda: a.abandoned == 1, timeout=10,
                             what="A to abandon its task")
            a.stop(5)
            b.stop(5)

        assert interrupted == [1]
        assert (a.completed, a.failed, a.abandoned) == (0, 0, 1)
        info = await job.get(attempts=True)
        assert info.status == JobStatus.SUCCEEDED
        assert info.attempts is not None
        assert [(x.worker_id, x.state, x.error_code) for x in info.attempts] == [
            ("worker-B", AttemptState.SUCCEEDED, None),
            ("worker-A", AttemptState.FAILED, "WORKER_CRASHED"),
        ]


async def test_heartbeats_keep_a_long_task_leased(start_node: StartNode) -> None:
    """A handler running for several lease periods keeps its one lease (the worker's first
    heartbeat must come within the server's lease, not the client's 30 s default)."""
    node = await start_node(lease_ms=LEASE_MS)

    async def long_task(ctx: TaskContext) -> int:
        await trio.sleep(4 * LEASE_MS / 1000)
        return ctx.attempt

    async with SiloClient.connect(node.address) as client:
        worker = Worker(client, "long", long_task, lease_wait_ms=200)
        job = await client.enqueue("long", None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            assert await job.result(timeout=15) == 1
            worker.stop(5)
        info = await job.get(attempts=True)
        assert info.attempts is not None and len(info.attempts) == 1
        assert (worker.completed, worker.abandoned) == (1, 0)
