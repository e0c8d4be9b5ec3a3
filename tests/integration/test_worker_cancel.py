"""A cancel reaches a running handler through the worker's heartbeats (real gRPC, real Worker)."""

from __future__ import annotations

import pytest
import trio

import silo.client.worker as worker_module
from silo.client import Cancel, JobCancelled, JobStatus, SiloClient, TaskContext, Worker
from silo.model import AttemptState
from tests.integration.conftest import StartNode
from tests.integration.support import wait_until

LEASE_MS = 1000


async def test_handler_sees_cancel_and_raises_cancel(start_node: StartNode) -> None:
    node = await start_node(lease_ms=LEASE_MS)
    started = trio.Event()
    seen: list[str] = []

    async def handler(ctx: TaskContext) -> None:
        started.set()
        with trio.fail_after(20):
            await ctx.cancelled.wait()
        seen.append(ctx.job_id)
        raise Cancel()

    async with SiloClient.connect(node.address) as client:
        worker = Worker(client, "cancel-me", handler, lease_wait_ms=200)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            job = await client.enqueue("cancel-me", {"work": 1})
            with trio.fail_after(10):
                await started.wait()
            assert await job.status() == JobStatus.RUNNING
            await job.cancel()
            with pytest.raises(JobCancelled):
                await job.result(timeout=15)
            worker.stop(5)

        assert seen == [job.id]
        info = await job.get(attempts=True)
        assert info.status == JobStatus.CANCELLED and info.cancel_requested
        assert info.attempts is not None
        assert [a.state for a in info.attempts] == [AttemptState.CANCELLED]
        assert info.attempts[0].worker_id == worker.worker_id
        assert (worker.completed, worker.failed, worker.abandoned) == (0, 1, 0)


async def test_handler_ignoring_cancel_still_succeeds(start_node: StartNode) -> None:
    node = await start_node(lease_ms=LEASE_MS)
    contexts: list[TaskContext] = []
    release = trio.Event()

    async def handler(ctx: TaskContext) -> str:
        contexts.append(ctx)
        with trio.fail_after(20):
            await release.wait()
        return "done anyway"

    async with SiloClient.connect(node.address) as client:
        worker = Worker(client, "ignore-cancel", handler, lease_wait_ms=200)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            job = await client.enqueue("ignore-cancel", None)
            await wait_until(lambda: bool(contexts), timeout=10, what="the handler to start")
            await job.cancel()
            # The worker learns about the cancel on its next heartbeat...
            await wait_until(lambda: contexts[0].is_cancelled, timeout=10,
                             what="ctx.cancelled to be set")
            # ...but the handler finishes its work and returns normally.
            release.set()
            assert await job.result(timeout=15) == "done anyway"
            worker.stop(5)

        info = await job.get(attempts=True)
        assert info.status == JobStatus.SUCCEEDED
        assert info.cancel_requested
        assert info.attempts is not None
        assert [a.state for a in info.attempts] == [AttemptState.SUCCEEDED]
        assert worker.completed == 1


async def test_handler_ignoring_cancel_forever_is_stopped(
    start_node: StartNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trio handler that neither raises Cancel nor returns gets CANCEL_GRACE_S after the
    worker learns of the cancel; then the worker cancels it and reports the attempt cancelled
    (it does not wait for the lease to expire)."""
    monkeypatch.setattr(worker_module, "CANCEL_GRACE_S", 0.3)
    node = await start_node(lease_ms=LEASE_MS)
    interrupted: list[str] = []

    async def handler(ctx: TaskContext) -> None:
        try:
            await trio.sleep(30)
        except trio.Cancelled:
            interrupted.append(ctx.job_id)
            raise

    async with SiloClient.connect(node.address) as client:
        worker = Worker(client, "stubborn", handler, lease_wait_ms=200)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            job = await client.enqueue("stubborn", None)
            await wait_until(lambda: worker._running != {}, timeout=10,
                             what="the handler to start")
            await job.cancel()
            with pytest.raises(JobCancelled):
                await job.result(timeout=15)
            worker.stop(5)

        assert interrupted == [job.id]
        assert worker.abandoned == 0 and worker.completed == 0
        info = await job.get(attempts=True)
        assert info.status == JobStatus.CANCELLED
        assert info.attempts is not None
        assert [a.state for a in info.attempts] == [AttemptState.CANCELLED]
        assert info.attempts[0].error_code is None  # reported by the worker, not reaped
