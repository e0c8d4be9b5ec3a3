"""A job's attempt timeout (``timeout_ms``) is stored with the job and handed to its worker."""

from __future__ import annotations

from dataclasses import replace

from silo.model import DEFAULT_TENANT as T
from silo.shard import ShardLimits
from tests.shard.support import World, lease_one, new_job


async def test_timeout_ms_is_stored_and_leased(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(replace(new_job("timed"), timeout_ms=300))
        await shard.enqueue(new_job("untimed"))
        assert (await shard.get_job(T, "timed")).info.timeout_ms == 300
        assert (await shard.get_job(T, "untimed")).info.timeout_ms == 0
        leased = {t.job_id: t.timeout_ms for t in [await lease_one(shard), await lease_one(shard)]}
        assert leased == {"timed": 300, "untimed": 0}
    async with world.open() as shard:
        assert (await shard.get_job(T, "timed")).info.timeout_ms == 300


async def test_timeout_ms_at_the_limit_is_accepted(memory_world: World) -> None:
    async with memory_world.open() as shard:
        await shard.enqueue(replace(new_job("j"), timeout_ms=ShardLimits().max_timeout_ms))
        assert (await shard.get_job(T, "j")).info.timeout_ms == ShardLimits().max_timeout_ms
