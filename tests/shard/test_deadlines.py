"""Deadlines (DESIGN §4): lease expiry and timers follow the monotonic clock, so a wall-clock
step neither reaps healthy leases nor delays reaping; stored times stay wall-clock ms.

``World.step_wall_ms`` steps wall time alone; ``World.advance`` moves monotonic (and trio)
time with it, which is what wakes the shard's reaper and timer loops.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from silo.errors import Unavailable
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


# -- a failed write keeps the deadlines of the rows it did not change --------------------------
#
# A batch changes the in-memory deadline index when it is submitted, before it is durable. If
# its write fails, the shard reloads its tables: the rows that batch deleted (a promoted timer,
# the old expiry row of a heartbeat) are on disk again and must get back the monotonic deadline
# they had, not one re-based on the wall clock of the reload, which a wall step since would move.


async def test_a_failed_promotion_keeps_the_timer_due_after_a_backward_wall_step(
    tmp_path,  # noqa: ANN001
) -> None:
    world = World("memory", str(tmp_path), trio_follows=False)
    async with world.open() as shard:
        await shard.enqueue(new_job("j", start_at_ms=world.now_ms() + 10_000))
        assert await where_is(shard, "j") == "TIMER"
        world.step_wall_ms(-5_000)
        world.advance(10_000)  # due now on the monotonic clock
        world.faults.rates["disk.write.error"] = 1.0
        with pytest.raises(Unavailable):
            await shard.promote_due()  # the promotion's write fails; the shard reloads
        world.faults.rates.clear()
        assert await where_is(shard, "j") == "TIMER"
        assert shard._mirror.next_timer_deadline_ms() == world.monotonic_ms()
        assert (await lease_one(shard)).job_id == "j"  # not 5 s later
        await check_counters(shard)


async def test_a_failed_heartbeat_keeps_the_lease_deadline_after_a_forward_wall_step(
    tmp_path,  # noqa: ANN001
) -> None:
    world = World("memory", str(tmp_path), trio_follows=False)
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        await shard.acknowledge(WORKER, [task.task_id])
        world.step_wall_ms(LEASE_MS // 2)
        world.advance(1_000)
        world.faults.rates["disk.write.error"] = 1.0
        with pytest.raises(Unavailable):
            await shard.heartbeat(WORKER, task.task_id)  # moves the expiry row; fails
        world.faults.rates.clear()
        assert shard._mirror.next_expiry_deadline_ms() == LEASE_MS
        world.advance(LEASE_MS - 1_000 - 1)
        assert await shard.reap_expired() == 0  # not reaped half a lease early
        assert await status_of(shard, "j") == S.RUNNING
        world.advance(1)
        assert await shard.reap_expired() == 1
        await check_counters(shard)
