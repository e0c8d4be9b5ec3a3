"""Attempt numbers strictly increase per (tenant, job id) for the life of the shard, across
delete and re-enqueue of the same id (handlers fence on the attempt number)."""

from __future__ import annotations

from silo import keys
from silo.keys import Prefix
from silo.model import DEFAULT_TENANT as T
from silo.model import Failure, JobStatus, Success
from tests.shard.support import (
    World,
    check_counters,
    lease_one,
    new_job,
    report,
    store_items,
)

S = JobStatus


async def test_re_enqueue_after_delete_numbers_attempts_above_the_old_ones(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=2, initial_ms=0, max_ms=0))
        for _ in range(2):
            await shard.report_outcome(report(await lease_one(shard), Failure("E")))
        await shard.report_outcome(report(await lease_one(shard), Success(b"")))
        old_max = (await shard.get_job(T, "j")).state.attempt
        assert old_max == 3
        await shard.delete(T, "j")
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        assert task.attempt > old_max
        await shard.report_outcome(report(task, Success(b"")))
        await shard.delete(T, "j")
    async with world.open() as shard:  # for the life of the shard: across a reopen too
        await shard.enqueue(new_job("j"))
        assert (await lease_one(shard)).attempt > task.attempt
        await check_counters(shard)


async def test_the_high_water_row_is_consumed_by_the_re_enqueue(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        await shard.report_outcome(report(await lease_one(shard), Success(b"")))
        await shard.delete(T, "j")
        mark = keys.key(Prefix.ATTEMPT_HIGH_WATER, T, "j")
        assert mark in dict(await store_items(shard))
        await shard.enqueue(new_job("j"))
        assert mark not in dict(await store_items(shard))
        assert (await shard.get_job(T, "j")).state.status == S.SCHEDULED
