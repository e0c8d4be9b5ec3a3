"""Closing and reopening a shard keeps every acknowledged operation: jobs, attempts, leases,
timers, cancel flags and counters, on LevelDB and on MemoryDisk."""

from __future__ import annotations

import pytest

from silo.errors import NotFound
from silo.model import DEFAULT_TENANT as T
from silo.model import WORKER_CRASHED, Failure, JobStatus, Success
from silo.shard import JobShard
from tests.shard.support import (
    LEASE_MS,
    WORKER,
    World,
    check_counters,
    durable_stats,
    lease,
    lease_one,
    new_job,
    report,
    status_of,
)

S = JobStatus
IDS = ["sched", "future", "running", "flagged", "retrying", "done", "failed", "cancelled",
       "deleted", "other-tenant"]


async def build_state(world: World, shard: JobShard) -> dict:
    """One job in every interesting situation; returns the leased tasks still running."""
    await shard.enqueue_batch([
        new_job("running", priority=0),
        new_job("flagged", priority=1),
        new_job("retrying", priority=2, retry_count=2, initial_ms=5000),
        new_job("done", priority=3),
        new_job("failed", priority=4),
        new_job("deleted", priority=5),
    ])
    world.advance(1)
    tasks = {t.job_id: t for t in await lease(shard, 6)}
    assert set(tasks) == {"running", "flagged", "retrying", "done", "failed", "deleted"}
    await shard.enqueue(new_job("sched", metadata={"k": "v"}))
    await shard.enqueue(new_job("future", start_at_ms=world.now_ms() + 10_000))
    await shard.enqueue(new_job("cancelled"))
    await shard.enqueue(new_job("other-tenant", tenant="acme"))
    await shard.cancel(T, "cancelled")
    await shard.cancel(T, "flagged")
    world.advance(1000)
    await shard.heartbeat(WORKER, tasks["running"].task_id)  # extends that lease
    await shard.report_outcomes([
        report(tasks["retrying"], Failure("E")),
        report(tasks["done"], Success(b"result")),
        report(tasks["failed"], Failure("E_FINAL", b"why")),
        report(tasks["deleted"], Success()),
    ])
    await shard.delete(T, "deleted")
    return {k: tasks[k] for k in ("running", "flagged")}


async def capture(shard: JobShard) -> dict:
    views = {}
    for job_id in IDS:
        tenant = "acme" if job_id == "other-tenant" else T
        try:
            views[job_id] = await shard.get_job(tenant, job_id, include_attempts=True)
        except NotFound:
            views[job_id] = None
    return {
        "views": views,
        "counters": shard.counters(),
        "stats": durable_stats(shard),
    }


async def test_reopen_keeps_every_acknowledged_operation(world: World) -> None:
    async with world.open() as shard:
        running = await build_state(world, shard)
        before = await capture(shard)
        await check_counters(shard)
    assert before["views"]["deleted"] is None
    assert before["stats"]["leases_held"] == 2
    assert before["stats"]["scheduled_future_tasks"] == 2  # "future" and the retry

    async with world.open() as shard:
        assert await capture(shard) == before
        await check_counters(shard)
        # Leases survived with their owners and expiries: heartbeats still work.
        world.advance(1)  # t = 1002
        hb = await shard.heartbeat(WORKER, running["flagged"].task_id)
        assert hb.cancelled
        assert hb.lease_expiry_ms == world.now_ms() + LEASE_MS
        # The due tasks, then the timers, come out in order.
        assert [t.job_id for t in await lease(shard)] == ["other-tenant", "sched"]
        world.advance(4999)  # t = 6001: the retry's backoff is over
        assert [t.job_id for t in await lease(shard)] == ["retrying"]
        world.advance(4000)  # t = 10001: "future" is due
        assert [t.job_id for t in await lease(shard)] == ["future"]
        # The lease last extended at t = 1001 expires on time; the one extended at 1002 not yet.
        world.advance(21_000)  # t = 31001
        await shard.reap_expired()
        view = await shard.get_job(T, "running", include_attempts=True)
        assert view.attempts[0].error_code == WORKER_CRASHED  # the newest attempt
        assert view.state.status == S.FAILED
        assert await status_of(shard, "flagged") == S.RUNNING
        after = await capture(shard)

    async with world.open() as shard:
        assert await capture(shard) == after
        await check_counters(shard)


async def test_reopen_an_empty_shard(world: World) -> None:
    async with world.open() as shard:
        assert shard.counters() == {}
        assert await shard.recount() == {}
    async with world.open() as shard:
        assert shard.counters() == {}
        assert durable_stats(shard)["jobs_total"] == 0


@pytest.mark.parametrize("cycles", [3])
async def test_many_reopen_cycles(world: World, cycles: int) -> None:
    ids = []
    for cycle in range(cycles):
        async with world.open() as shard:
            for job_id in ids:
                assert (await shard.get_job(T, job_id)).state.status == S.SUCCEEDED
            await shard.enqueue(new_job(f"c{cycle}"))
            task = await lease_one(shard)
            await shard.report_outcome(report(task, Success(b"%d" % cycle)))
            ids.append(task.job_id)
            await check_counters(shard)
    async with world.open() as shard:
        for i, job_id in enumerate(ids):
            assert (await shard.get_result(T, job_id)).result == b"%d" % i
