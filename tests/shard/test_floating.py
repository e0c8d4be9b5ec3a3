"""Floating concurrency limits through a shard (DESIGN §5): refresh tasks handed to the job's
task group ahead of its jobs, a refreshed max applied at once, refreshes only while the queue has
work, and a backoff of 1 s doubling to 60 s after failed or expired refreshes."""

from __future__ import annotations

import pytest

from silo.errors import InvalidArgument, NotFound
from silo.model import DEFAULT_TENANT as T
from silo.model import FloatingConcurrencyLimit, RefreshRequest, Success
from tests.shard.support import (
    LEASE_MS,
    WORKER,
    World,
    holder_rows,
    lease,
    lease_one,
    limited_job,
    report,
    request_rows,
    store_items,
    where_is,
)

INTERVAL = 10_000
F = FloatingConcurrencyLimit("F", 1, INTERVAL, {"region": "eu"})
QF = (T, "F")


def refresh_task_id(shard, queue: str = "F") -> str | None:  # noqa: ANN001
    qs = shard._mirror.queues.get((T, queue))  # an idle queue keeps no state
    return None if qs is None else qs.refresh_task_id


def refresh_timers(shard) -> list[tuple[str, int]]:  # noqa: ANN001
    return [(t.task_id, t.due_ms) for t in shard._mirror.timers.values() if t.is_refresh]


async def test_first_acquisition_schedules_a_refresh_ahead_of_jobs(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue_batch([limited_job(f"j{i}", F) for i in range(4)])
        assert await holder_rows(shard) == {QF: ["j0"]}
        assert shard.queue_info(T, "F")["floating"] is True
        # The refresh task comes first (ahead of the ready job of the same group).
        task = await lease_one(shard)
        assert task.refresh == RefreshRequest("F", 1, {"region": "eu"})
        assert task.attempt == 0 and task.task_group == "g"
        assert (await lease_one(shard)).job_id == "j0"
        # A refreshed max applies at once: the waiting requests are granted in that batch.
        await shard.report_refresh(WORKER, task.task_id, 3)
        info = shard.queue_info(T, "F")
        assert info["max_concurrency"] == 3
        assert info["refresh_backoff_ms"] == 0
        assert info["next_refresh_ms"] == world.now_ms() + INTERVAL
        assert await holder_rows(shard) == {QF: ["j0", "j1", "j2"]}
        assert await request_rows(shard) == {QF: ["j3"]}
        # A lower max grants nothing until the holders drop below it.
        world.advance(INTERVAL)
        again = await lease_one(shard)
        assert again.refresh is not None and again.task_id != task.task_id
        await shard.report_refresh(WORKER, again.task_id, 1)
        assert await holder_rows(shard) == {QF: ["j0", "j1", "j2"]}
        running = [t for t in await lease(shard) if t.refresh is None]
        assert sorted(t.job_id for t in running) == ["j1", "j2"]
        await shard.report_outcome(report(running[0], Success()))
        assert await request_rows(shard) == {QF: ["j3"]}


async def test_refresh_repeats_only_while_the_queue_has_work(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(limited_job("j", F))
        refresh = await lease_one(shard)
        assert refresh.refresh is not None
        job = await lease_one(shard)
        await shard.report_refresh(WORKER, refresh.task_id, 2)
        # While the job runs the refresh comes back every interval, not before.
        for _ in range(2):
            world.advance(INTERVAL - 1)
            assert await lease(shard) == []
            world.advance(1)
            refresh = await lease_one(shard)
            assert refresh.refresh == RefreshRequest("F", 2, {"region": "eu"})
            await shard.report_refresh(WORKER, refresh.task_id, 2)
        await shard.heartbeat(WORKER, job.task_id)
        await shard.report_outcome(report(job, Success()))
        # No work left: past the interval no refresh task is handed out, and none is pending.
        world.advance(INTERVAL)
        assert await lease(shard) == []
        assert refresh_task_id(shard) is None
        world.advance(10 * INTERVAL)
        assert await lease(shard) == []
        # New work brings the refresh back at once (its time has passed).
        await shard.enqueue(limited_job("k", F))
        tasks = await lease(shard)
        assert [t.refresh is not None for t in tasks] == [True, False]


async def test_failed_refreshes_back_off_doubling_to_a_minute(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(limited_job("j", F))  # stays READY (holding its slot): work
        expected = [1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000]
        for backoff in expected:
            refresh = await lease_one(shard)  # the refresh comes first
            assert refresh.refresh is not None
            await shard.report_refresh(WORKER, refresh.task_id, None, "boom")
            info = shard.queue_info(T, "F")
            assert info["refresh_backoff_ms"] == backoff
            assert info["next_refresh_ms"] == world.now_ms() + backoff
            assert info["max_concurrency"] == 1  # unchanged by a failure
            # The next refresh waits in the timer index for its time (not in the ready queue).
            assert refresh_timers(shard) == [(refresh_task_id(shard), world.now_ms() + backoff)]
            assert all(not t.is_refresh for t in shard._mirror.ready.values())
            world.advance(backoff)
        # A success resets the backoff.
        refresh = await lease_one(shard)
        await shard.report_refresh(WORKER, refresh.task_id, 1)
        assert shard.queue_info(T, "F")["refresh_backoff_ms"] == 0


async def test_expired_refresh_leases_back_off_too(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(limited_job("j", F))
        for backoff in [1000, 2000, 4000]:
            refresh = await lease_one(shard)
            assert refresh.refresh is not None
            world.advance(LEASE_MS)
            await shard.reap_expired()
            info = shard.queue_info(T, "F")
            assert info["refresh_backoff_ms"] == backoff
            assert info["next_refresh_ms"] == world.now_ms() + backoff
            with pytest.raises(NotFound):
                await shard.report_refresh(WORKER, refresh.task_id, 5)
            world.advance(backoff)
        assert await where_is(shard, "j") == "READY"


async def test_refresh_reports_are_checked(memory_world: World) -> None:
    async with memory_world.open() as shard:
        await shard.enqueue(limited_job("j", F))
        refresh = await lease_one(shard)
        with pytest.raises(InvalidArgument):
            await shard.report_refresh(WORKER, refresh.task_id, -1)
        with pytest.raises(NotFound):
            await shard.report_refresh(WORKER, "no-such-task", 1)
        job = await lease_one(shard)
        with pytest.raises(NotFound):
            await shard.report_refresh(WORKER, job.task_id, 1)  # not a refresh task
        with pytest.raises(InvalidArgument):
            await shard.report_outcome(report(refresh, Success()))  # not a job


@pytest.mark.parametrize("interval_ms", [2**64 - 1, 24 * 3600 * 1000 + 1])
async def test_refresh_interval_is_bounded_at_enqueue(world: World, interval_ms: int) -> None:
    """An interval that would overflow the stored refresh time (msgpack's uint64) is refused,
    with the limit named, before anything is written."""
    async with world.open() as shard:
        before = await store_items(shard)
        limit = FloatingConcurrencyLimit("F", 1, interval_ms)
        with pytest.raises(InvalidArgument, match="refresh_interval_max_ms"):
            await shard.enqueue(limited_job("j", limit))
        assert await store_items(shard) == before
