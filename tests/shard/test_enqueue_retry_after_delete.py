"""An enqueue marked as a retry of a call whose answer was lost (issue 8, defect 9): if the
first try created the job and it has been deleted since, the retry must not create it again;
an enqueue not so marked re-creates a deleted id's job as before."""

from __future__ import annotations

import msgpack
import pytest

from silo import keys
from silo.errors import NotFound
from silo.keys import Prefix
from silo.model import DEFAULT_TENANT as T
from silo.model import AttemptHighWater, CorruptRecord, JobStatus, Success, encode_int
from silo.shard.shard import JobShard
from tests.shard.support import (
    GROUP,
    WORKER,
    World,
    check_counters,
    lease_one,
    new_job,
    report,
    store_items,
)

MARK = keys.key(Prefix.ATTEMPT_HIGH_WATER, T, "j")


async def _run_and_delete(shard: JobShard) -> None:
    """Enqueue "j", lease it, succeed it and delete it (what an operator does after the run)."""
    await shard.enqueue(new_job("j"))
    await shard.report_outcome(report(await lease_one(shard), Success(b"")))
    await shard.delete(T, "j")


async def test_a_retried_enqueue_of_a_deleted_job_answers_existed_and_creates_nothing(
    world: World,
) -> None:
    async with world.open() as shard:
        await _run_and_delete(shard)
        before = dict(await store_items(shard))
        [result] = await shard.enqueue_each([new_job("j")], resent=True)
        assert result.error is None and result.existed and result.deleted
        assert await shard.enqueue(new_job("j"), resent=True) == "j"
        with pytest.raises(NotFound):
            await shard.get_job(T, "j")
        assert await shard.lease_tasks(WORKER, GROUP, 10) == []
        assert dict(await store_items(shard)) == before  # nothing written, the row stays
        assert MARK in before
        await check_counters(shard)


async def test_an_unmarked_identical_enqueue_after_delete_creates_the_job_again(
    world: World,
) -> None:
    async with world.open() as shard:
        await _run_and_delete(shard)
        [result] = await shard.enqueue_each([new_job("j")])
        assert result.error is None and not result.existed and not result.deleted
        assert (await shard.get_job(T, "j")).state.status == JobStatus.SCHEDULED
        assert MARK not in dict(await store_items(shard))  # consumed: attempts go on above it
        assert (await lease_one(shard)).attempt == 2
        await check_counters(shard)


async def test_a_retried_enqueue_of_a_different_job_under_a_deleted_id_creates_it(
    world: World,
) -> None:
    async with world.open() as shard:
        await _run_and_delete(shard)
        [result] = await shard.enqueue_each([new_job("j", payload=b"other")], resent=True)
        assert result.error is None and not result.existed and not result.deleted
        assert (await shard.get_job(T, "j")).info.payload == b"other"
        assert MARK not in dict(await store_items(shard))
        await check_counters(shard)


async def test_a_retried_batch_writes_its_new_jobs_beside_a_deleted_one(world: World) -> None:
    async with world.open() as shard:
        await _run_and_delete(shard)
        results = await shard.enqueue_each([new_job("new"), new_job("j")], resent=True)
        assert [(r.job_id, r.error, r.existed, r.deleted) for r in results] == [
            ("new", None, False, False), ("j", None, True, True)]
        assert (await shard.get_job(T, "new")).state.status == JobStatus.SCHEDULED
        with pytest.raises(NotFound):
            await shard.get_job(T, "j")
        await check_counters(shard)


async def test_the_deleted_job_is_recognised_after_a_reopen(world: World) -> None:
    async with world.open() as shard:
        await _run_and_delete(shard)
    async with world.open() as shard:
        [result] = await shard.enqueue_each([new_job("j")], resent=True)
        assert result.existed and result.deleted


def test_a_version_1_high_water_row_decodes_without_a_fingerprint() -> None:
    assert AttemptHighWater.decode(MARK, encode_int(7)) == AttemptHighWater(7, None)
    assert AttemptHighWater.decode(MARK, AttemptHighWater(7, b"f" * 16).encode()) == (
        AttemptHighWater(7, b"f" * 16))
    with pytest.raises(CorruptRecord):
        AttemptHighWater.decode(MARK, msgpack.packb([2, "x", None]))
    with pytest.raises(CorruptRecord):
        AttemptHighWater.decode(MARK, msgpack.packb([3, 1, None]))
