"""Hung handlers: timeouts, the bounded thread pool, stuck slots, cancels that handlers ignore
(real server over TCP, real Worker)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator

import pytest
import trio

import silo.client.worker as worker_module
from silo.client import (
    JobCancelled,
    JobFailed,
    JobStatus,
    SiloClient,
    TaskContext,
    Worker,
    asyncio_handler,
)
from silo.errors import Code, SiloError
from silo.model import AttemptState
from tests.integration.conftest import StartNode
from tests.integration.support import wait_until


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Blocks the test's hung sync handlers; opened at the end whatever happens."""
    event = threading.Event()
    yield event
    event.set()


async def test_trio_handler_that_sleeps_forever_fails_with_timeout(start_node: StartNode) -> None:
    node = await start_node(lease_ms=1000)

    async def handler(ctx: TaskContext) -> None:
        await trio.sleep_forever()

    async with SiloClient.connect(node.address) as client:
        worker = Worker(client, "forever", handler, lease_wait_ms=200, default_timeout_ms=300)
        job = await client.enqueue("forever", None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with pytest.raises(JobFailed) as failed:
                await job.result(timeout=10)
            worker.stop(5)
        assert failed.value.error_code == "TIMEOUT"
        assert failed.value.error_data["timeout_ms"] == 300
        info = await job.get(attempts=True)
        assert info.attempts is not None
        assert [(a.state, a.error_code, a.worker_id) for a in info.attempts] == [
            (AttemptState.FAILED, "TIMEOUT", worker.worker_id)]
        assert worker.stats.timeouts == 1


async def test_hung_sync_handlers_do_not_starve_another_workers_sync_handlers(
    start_node: StartNode, gate: threading.Event
) -> None:
    """41 sync handlers blocked at once (more than trio's process-wide default of 40 threads)
    hold only their own worker's slots: another worker's sync handlers still run."""
    node = await start_node(lease_ms=2000)
    hung: list[str] = []

    def block(ctx: TaskContext) -> None:
        hung.append(ctx.job_id)
        gate.wait(30)

    def work(ctx: TaskContext) -> str:
        return f"ran {ctx.payload}"

    async with SiloClient.connect(node.address) as client:
        stuck = Worker(client, "hung", block, max_concurrent_tasks=41, lease_wait_ms=200)
        other = Worker(client, "healthy", work, max_concurrent_tasks=2, lease_wait_ms=200)
        for i in range(41):
            await client.enqueue("hung", i)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stuck.run)
            await wait_until(lambda: len(hung) >= 40, timeout=20, what="40 hung handlers")
            nursery.start_soon(other.run)
            jobs = [await client.enqueue("healthy", i) for i in range(3)]
            for i, job in enumerate(jobs):
                assert await job.result(timeout=10) == f"ran {i}"
            assert len(hung) == 41
            gate.set()
            stuck.stop(5)
            other.stop(5)


async def test_sync_handler_blocking_forever_times_out_and_holds_only_its_slot(
    start_node: StartNode, gate: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync handler blocked past its timeout is reported TIMEOUT and abandoned; its thread
    keeps its slot (the pool is bounded) while the other slot goes on running handlers. Once
    every slot is held by a stuck handler the worker says so and leases nothing; when the
    threads return, their slots come back."""
    node = await start_node(lease_ms=1000)

    def handler(ctx: TaskContext) -> str:
        if ctx.payload == "hang":
            gate.wait(30)
            return "too late"
        return f"ran {ctx.payload}"

    async with SiloClient.connect(node.address) as client:
        worker = Worker(client, "blocking", handler, max_concurrent_tasks=2, lease_wait_ms=200,
                        default_timeout_ms=300)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            first = await client.enqueue("blocking", "hang")
            with pytest.raises(JobFailed) as failed:
                await first.result(timeout=10)
            assert failed.value.error_code == "TIMEOUT"
            assert worker.stats.stuck_handlers == 1
            others = [await client.enqueue("blocking", i) for i in range(3)]
            for i, job in enumerate(others):
                assert await job.result(timeout=10) == f"ran {i}"

            with caplog.at_level(logging.WARNING, "silo.worker"):
                second = await client.enqueue("blocking", "hang")
                with pytest.raises(JobFailed):
                    await second.result(timeout=10)
            assert worker.stats.stuck_handlers == 2
            assert worker.stats.all_slots_stuck == 1
            assert any("all 2 slots are held by abandoned handlers" in r.getMessage()
                       for r in caplog.records if r.levelno == logging.WARNING)
            waiting = await client.enqueue("blocking", "after")
            await trio.sleep(1)
            assert await waiting.status() == JobStatus.SCHEDULED

            gate.set()
            assert await waiting.result(timeout=10) == "ran after"
            assert worker.stats.stuck_handlers == 0
            worker.stop(5)


async def test_sync_handler_ignoring_cancel_is_abandoned_and_reported_cancelled(
    start_node: StartNode, gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "CANCEL_GRACE_S", 0.3)
    node = await start_node(lease_ms=1000)
    started: list[str] = []

    def handler(ctx: TaskContext) -> str:
        started.append(ctx.job_id)
        gate.wait(30)  # never looks at ctx.cancelled
        return "too late"

    async with SiloClient.connect(node.address) as client:
        worker = Worker(client, "ignores-cancel", handler, lease_wait_ms=200)
        job = await client.enqueue("ignores-cancel", None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await wait_until(lambda: bool(started), timeout=10, what="the handler to start")
            await job.cancel()
            with pytest.raises(JobCancelled):
                await job.result(timeout=10)
            gate.set()
            worker.stop(5)
        info = await job.get(attempts=True)
        assert info.attempts is not None
        assert [a.state for a in info.attempts] == [AttemptState.CANCELLED]


async def test_asyncio_handler_swallowing_cancellation_still_times_out(
    start_node: StartNode,
) -> None:
    node = await start_node(lease_ms=1000)
    swallowed: list[str] = []

    @asyncio_handler
    async def handler(ctx: TaskContext) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed.append(ctx.job_id)
            await asyncio.sleep(1)  # goes on regardless, for a while
        return "too late"

    async with SiloClient.connect(node.address) as client:
        worker = Worker(client, "aio-stubborn", handler, lease_wait_ms=200,
                        default_timeout_ms=300)
        job = await client.enqueue("aio-stubborn", None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with pytest.raises(JobFailed) as failed:
                await job.result(timeout=5)
            assert failed.value.error_code == "TIMEOUT"
            worker.stop(5)
        assert swallowed == [job.id]


async def test_job_timeout_ms_is_stored_leased_and_enforced(start_node: StartNode) -> None:
    """``enqueue(timeout_ms=300)``: GetJob shows it, the leased task carries it, and a trio
    handler that sleeps forever is reported FAILED with TIMEOUT (the worker has no default)."""
    node = await start_node(lease_ms=1000)
    seen: list[int | None] = []

    async def handler(ctx: TaskContext) -> None:
        seen.append(ctx.timeout_ms)
        await trio.sleep_forever()

    async with SiloClient.connect(node.address) as client:
        job = await client.enqueue("job-timeout", None, timeout_ms=300)
        assert (await job.get()).timeout_ms == 300
        worker = Worker(client, "job-timeout", handler, lease_wait_ms=200)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with pytest.raises(JobFailed) as failed:
                await job.result(timeout=10)
            worker.stop(5)
        assert failed.value.error_code == "TIMEOUT"
        assert seen == [300]
        untimed = await client.enqueue("job-timeout", None)
        assert (await untimed.get()).timeout_ms is None


async def test_timeout_ms_above_the_limit_is_refused(start_node: StartNode) -> None:
    node = await start_node()
    async with SiloClient.connect(node.address) as client:
        with pytest.raises(SiloError) as refused:
            await client.enqueue("job-timeout", None, timeout_ms=24 * 3600 * 1000 + 1)
        assert refused.value.code == Code.INVALID_ARGUMENT
        assert "max_timeout_ms" in str(refused.value)
        job = await client.enqueue("job-timeout", None, timeout_ms=24 * 3600 * 1000)
        assert (await job.get()).timeout_ms == 24 * 3600 * 1000
