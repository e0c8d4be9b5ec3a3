"""Handing a lease back unstarted (DESIGN §4 "Delivery"): a worker that prefetched a task and
will not run it reports it ``released``. That is not an attempt: the attempt row ends
UNDELIVERED with error code RELEASED, the job is re-queued at once with its retry budget intact
and without counting one of its ``MAX_UNDELIVERED`` expiries, acknowledged or not. A cancelled
job ends CANCELLED; a job that may make no further attempt ends FAILED RELEASED."""

from __future__ import annotations

from dataclasses import replace

import pytest

from silo.errors import FailedPrecondition, NotFound
from silo.model import DEFAULT_TENANT as T
from silo.model import (
    MAX_UNDELIVERED,
    RELEASED,
    AttemptState,
    ConcurrencyLimit,
    Failure,
    JobStatus,
    Released,
    Success,
)
from silo.shard import ShardConfig
from silo.shard.validation import ShardLimits
from tests.shard.support import (
    WORKER,
    World,
    check_counters,
    holder_rows,
    lease_one,
    limited_job,
    new_job,
    report,
    status_of,
)

S = JobStatus


async def test_released_lease_is_requeued_without_charging_the_budget(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=0))
        first = await lease_one(shard)
        await shard.heartbeat(WORKER, first.task_id)  # acknowledged: released all the same
        await shard.report_outcome(report(first, Released()))
        view = await shard.get_job(T, "j", include_attempts=True)
        assert view.state.status == S.SCHEDULED
        assert view.state.undelivered == 0
        assert view.state.run_attempts == 0
        assert view.state.next_attempt_at_ms == world.now_ms()  # no backoff
        (att,) = view.attempts
        assert (att.attempt, att.state, att.error_code) == (1, AttemptState.UNDELIVERED, RELEASED)
        # retry_count 0 still allows its one attempt, which fails for good.
        second = await lease_one(shard)
        assert second.attempt == 2 and second.task_id != first.task_id
        await shard.report_outcome(report(second, Failure("BOOM")))
        result = await shard.get_result(T, "j")
        assert (result.status, result.error_code) == (S.FAILED, "BOOM")
        await check_counters(shard)


async def test_releases_do_not_use_up_the_undelivered_allowance(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=0))
        for _ in range(MAX_UNDELIVERED + 2):
            task = await lease_one(shard)
            await shard.report_outcome(report(task, Released()))
            assert await status_of(shard, "j") == S.SCHEDULED
        task = await lease_one(shard)
        await shard.report_outcome(report(task, Success(b"\xa2ok")))
        assert await status_of(shard, "j") == S.SUCCEEDED
        view = await shard.get_job(T, "j")
        assert view.state.undelivered == 0
        await check_counters(shard)


async def test_repeated_release_is_idempotent_and_fenced(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        with pytest.raises(FailedPrecondition):
            await shard.report_outcome(report(task, Released(), worker="someone-else"))
        await shard.report_outcome(report(task, Released()))
        await shard.report_outcome(report(task, Released()))  # a retried report: answered OK
        with pytest.raises(NotFound):
            await shard.report_outcome(report(task, Success(b"\xa2ok")))
        assert len((await shard.get_job(T, "j", include_attempts=True)).attempts) == 1


async def test_released_lease_of_a_cancelled_job_ends_it_cancelled(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=3))
        task = await lease_one(shard)
        await shard.cancel(T, "j")
        await shard.report_outcome(report(task, Released()))
        view = await shard.get_job(T, "j", include_attempts=True)
        assert view.state.status == S.CANCELLED
        assert [a.state for a in view.attempts] == [AttemptState.CANCELLED]
        await check_counters(shard)


async def test_release_at_max_attempts_per_job_fails_the_job(world: World) -> None:
    cfg = ShardConfig(limits=replace(ShardLimits(), max_attempts_per_job=4))
    async with world.open(cfg) as shard:
        await shard.enqueue(new_job("j", retry_count=0))
        for _ in range(3):
            await shard.report_outcome(report(await lease_one(shard), Released()))
            assert await status_of(shard, "j") == S.SCHEDULED
        await shard.report_outcome(report(await lease_one(shard), Released()))
        result = await shard.get_result(T, "j")
        assert (result.status, result.error_code) == (S.FAILED, RELEASED)
        await check_counters(shard)


async def test_release_gives_back_the_concurrency_slot(world: World) -> None:
    async with world.open() as shard:
        limit = ConcurrencyLimit("q", 1)
        await shard.enqueue(limited_job("a", limit))
        await shard.enqueue(limited_job("b", limit))
        task = await lease_one(shard)
        await shard.report_outcome(report(task, Released()))
        # The slot was released and granted again in the same batch (as for an undelivered
        # lease): one holder, whose task is ready to lease.
        holders = await holder_rows(shard)
        assert len(holders[(T, "q")]) == 1
        nxt = await lease_one(shard)
        assert [nxt.job_id] == holders[(T, "q")]
        assert nxt.task_id != task.task_id
        await check_counters(shard)
