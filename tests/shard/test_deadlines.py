"""Deadlines (DESIGN §4): lease expiry and timers follow the monotonic clock, so a wall-clock
step neither reaps healthy leases nor delays reaping; stored times stay wall-clock ms.

``World.step_wall_ms`` steps wall time alone; ``World.advance`` moves monotonic (and trio)
time with it, which is what wakes the shard's reaper and timer loops.
"""

from __future__ import annotations

import trio
import trio.testing

from silo.model import DEFAULT_TENANT as T
from silo.model import WORKER_CRASHED, Failure, JobStatus, Success
from tests.shard.support import (
    LEASE_MS,
    WORKER,
    World,
    check_counters,
    lease_one,
    new_job,
    report,
    status_of,
    where_is,
)

S = JobStatus


async def _settle() -> None:
    for _ in range(3):
        await trio.testing.wait_all_tasks_blocked()


async def test_a_forward_wall_step_does_not_reap_a_heartbeating_lease(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        world.step_wall_ms(2 * LEASE_MS)
        for _ in range(6):
            world.advance(LEASE_MS // 3)
            await _settle()
            assert await shard.reap_expired() == 0
            await shard.heartbeat(WORKER, task.task_id)
        assert await status_of(shard, "j") == S.RUNNING
        await shard.report_outcome(report(task, Success(b"ok")))
        assert await status_of(shard, "j") == S.SUCCEEDED
        await check_counters(shard)


async def test_a_backward_wall_step_does_not_delay_reaping(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        await shard.acknowledge(WORKER, [task.task_id])  # delivered: its expiry is a crash
        world.step_wall_ms(-2 * LEASE_MS)
        world.advance(LEASE_MS - 1)
        await _settle()
        assert await shard.reap_expired() == 0
        assert await status_of(shard, "j") == S.RUNNING
        world.advance(1)
        await _settle()
        result = await shard.get_result(T, "j")
        assert (result.status, result.error_code) == (S.FAILED, WORKER_CRASHED)
        await check_counters(shard)


async def test_heartbeats_after_a_backward_wall_step_keep_the_lease(world: World) -> None:
    """After stepping back, ``now + lease_ms`` is below the stored expiry: the heartbeat must
    still push the monotonic deadline out."""
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        world.step_wall_ms(-2 * LEASE_MS)
        for _ in range(6):
            world.advance(LEASE_MS // 3)
            await shard.heartbeat(WORKER, task.task_id)
            await _settle()
        assert await status_of(shard, "j") == S.RUNNING
        world.advance(LEASE_MS)
        await _settle()
        assert await status_of(shard, "j") == S.FAILED


async def test_a_forward_wall_step_does_not_cut_a_retry_backoff_short(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=1, initial_ms=10_000, max_ms=10_000))
        task = await lease_one(shard)
        await shard.report_outcome(report(task, Failure("E")))
        assert await where_is(shard, "j") == "TIMER"
        world.step_wall_ms(2 * LEASE_MS)
        world.advance(9_999)
        await _settle()
        assert await where_is(shard, "j") == "TIMER"
        world.advance(1)
        await _settle()
        assert (await lease_one(shard)).attempt == 2
