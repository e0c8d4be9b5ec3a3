"""A later try of an enqueue call whose earlier try's answer was lost (issue 8, defect 9): if
that try created the job and it has been deleted since, the later try (same request id) must
not create it again; a new call (a new request id, or none) re-creates a deleted id's job."""

from __future__ import annotations

import msgpack
import pytest

from silo import keys
from silo.errors import InvalidArgument, NotFound
from silo.keys import Prefix
from silo.model import DEFAULT_TENANT as T
from silo.model import (
    AttemptHighWater,
    CorruptRecord,
    JobFingerprint,
    JobStatus,
    Success,
    encode_int,
)
from silo.runtime.disk import WriteBatch
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
PRINT = keys.key(Prefix.JOB_FINGERPRINT, T, "j")
CALL = "a" * 32
"""The request id of the call that first enqueues "j"."""
OTHER_CALL = "b" * 32


async def _run_and_delete(shard: JobShard, request_id: str = CALL) -> None:
    """Enqueue "j" (as call ``request_id``), lease it, succeed it and delete it (what an
    operator does after the run)."""
    await shard.enqueue(new_job("j"), request_id=request_id)
    await shard.report_outcome(report(await lease_one(shard), Success(b"")))
    await shard.delete(T, "j")


async def test_a_later_try_of_the_call_that_created_a_deleted_job_creates_nothing(
    world: World,
) -> None:
    async with world.open() as shard:
        await _run_and_delete(shard)
        before = dict(await store_items(shard))
        [result] = await shard.enqueue_each([new_job("j")], request_id=CALL)
        assert result.error is None and result.existed and result.deleted
        assert await shard.enqueue(new_job("j"), request_id=CALL) == "j"
        with pytest.raises(NotFound):
            await shard.get_job(T, "j")
        assert await shard.lease_tasks(WORKER, GROUP, 10) == []
        assert dict(await store_items(shard)) == before  # nothing written, the row stays
        assert AttemptHighWater.decode(MARK, before[MARK]).request_id == CALL
        await check_counters(shard)


async def test_a_delayed_first_try_after_its_retry_created_and_deleted_creates_nothing(
    world: World,
) -> None:
    """Gap 2 of the yes/no retry mark: the call's first try (unmarked then) is delayed in the
    network until after its own retry created the job and the job was deleted. It carries the
    call's request id like every try, so it is recognised and creates nothing."""
    async with world.open() as shard:
        await _run_and_delete(shard)  # the retry's work
        [result] = await shard.enqueue_each([new_job("j")], request_id=CALL)  # the first try
        assert result.error is None and result.existed and result.deleted
        with pytest.raises(NotFound):
            await shard.get_job(T, "j")
        await check_counters(shard)


async def test_a_new_call_re_enqueuing_an_identical_deleted_job_creates_it(
    world: World,
) -> None:
    """Gap 1 of the yes/no retry mark: an identical job deliberately enqueued again after its
    delete, by a new call whose first try never arrived; what arrives (its retry) carries the
    new call's request id, so the job is created again."""
    async with world.open() as shard:
        await _run_and_delete(shard)
        [result] = await shard.enqueue_each([new_job("j")], request_id=OTHER_CALL)
        assert result.error is None and not result.existed and not result.deleted
        assert (await shard.get_job(T, "j")).state.status == JobStatus.SCHEDULED
        items = dict(await store_items(shard))
        assert MARK not in items  # consumed: attempts go on above it
        assert JobFingerprint.decode(PRINT, items[PRINT]).request_id == OTHER_CALL
        assert (await lease_one(shard)).attempt == 2
        await check_counters(shard)


async def test_an_enqueue_without_a_request_id_after_delete_creates_the_job_again(
    world: World,
) -> None:
    async with world.open() as shard:
        await _run_and_delete(shard)
        [result] = await shard.enqueue_each([new_job("j")])
        assert result.error is None and not result.existed and not result.deleted
        assert (await shard.get_job(T, "j")).state.status == JobStatus.SCHEDULED
        assert MARK not in dict(await store_items(shard))
        assert (await lease_one(shard)).attempt == 2
        await check_counters(shard)


async def test_a_job_created_without_a_request_id_is_never_taken_for_a_repeat(
    world: World,
) -> None:
    async with world.open() as shard:
        await _run_and_delete(shard, request_id="")
        [result] = await shard.enqueue_each([new_job("j")])
        assert result.error is None and not result.existed
        assert (await shard.get_job(T, "j")).state.status == JobStatus.SCHEDULED


async def test_an_existing_identical_job_is_existed_whatever_the_request_id(
    world: World,
) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"), request_id=CALL)
        for request_id in (CALL, OTHER_CALL, ""):
            [result] = await shard.enqueue_each([new_job("j")], request_id=request_id)
            assert result.error is None and result.existed and not result.deleted
        items = dict(await store_items(shard))
        assert JobFingerprint.decode(PRINT, items[PRINT]).request_id == CALL


async def test_a_later_try_with_a_different_job_under_a_deleted_id_creates_it(
    world: World,
) -> None:
    async with world.open() as shard:
        await _run_and_delete(shard)
        [result] = await shard.enqueue_each([new_job("j", payload=b"other")], request_id=CALL)
        assert result.error is None and not result.existed and not result.deleted
        assert (await shard.get_job(T, "j")).info.payload == b"other"
        assert MARK not in dict(await store_items(shard))
        await check_counters(shard)


async def test_a_later_try_of_a_batch_writes_its_new_jobs_beside_a_deleted_one(
    world: World,
) -> None:
    async with world.open() as shard:
        await _run_and_delete(shard)
        results = await shard.enqueue_each([new_job("new"), new_job("j")], request_id=CALL)
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
        [result] = await shard.enqueue_each([new_job("j")], request_id=CALL)
        assert result.existed and result.deleted


async def test_a_request_id_over_its_limit_is_refused_and_writes_nothing(world: World) -> None:
    async with world.open() as shard:
        before = dict(await store_items(shard))
        too_long = "r" * (shard.config.limits.request_id_max_chars + 1)
        with pytest.raises(InvalidArgument, match="request_id_max_chars is 64"):
            await shard.enqueue(new_job("j"), request_id=too_long)
        assert dict(await store_items(shard)) == before


async def test_old_rows_without_request_ids_still_match(world: World) -> None:
    """A version-1 fingerprint row (the bare fingerprint) is matched as before, and its delete
    leaves a high-water row no later try can claim (no request id was kept)."""
    async with world.open() as shard:
        await shard.enqueue(new_job("j"), request_id=CALL)
        items = dict(await store_items(shard))
        bare = JobFingerprint.decode(PRINT, items[PRINT]).fingerprint
    async with world.raw_store() as kv:
        batch = WriteBatch()
        batch.put(PRINT, bare)
        await kv.write(batch)
    async with world.open() as shard:
        [result] = await shard.enqueue_each([new_job("j")], request_id=OTHER_CALL)
        assert result.existed
        await shard.report_outcome(report(await lease_one(shard), Success(b"")))
        await shard.delete(T, "j")
        items = dict(await store_items(shard))
        assert AttemptHighWater.decode(MARK, items[MARK]) == AttemptHighWater(1, bare, "")
        [result] = await shard.enqueue_each([new_job("j")], request_id=CALL)
        assert not result.existed


def test_records_decode_every_version() -> None:
    assert AttemptHighWater.decode(MARK, encode_int(7)) == AttemptHighWater(7, None, "")
    assert AttemptHighWater.decode(MARK, msgpack.packb([2, 7, b"f" * 16])) == (
        AttemptHighWater(7, b"f" * 16, ""))
    assert AttemptHighWater.decode(MARK, AttemptHighWater(7, b"f" * 16, CALL).encode()) == (
        AttemptHighWater(7, b"f" * 16, CALL))
    assert JobFingerprint.decode(PRINT, b"f" * 16) == JobFingerprint(b"f" * 16, "")
    assert JobFingerprint.decode(PRINT, JobFingerprint(b"f" * 16, CALL).encode()) == (
        JobFingerprint(b"f" * 16, CALL))
    assert JobFingerprint.decode(PRINT, JobFingerprint(b"f" * 16).encode()) == (
        JobFingerprint(b"f" * 16))
    for bad in (msgpack.packb([2, "x", None]), msgpack.packb([3, 1, None]),
                msgpack.packb([3, 1, None, 5]), msgpack.packb([4, 1, None, ""])):
        with pytest.raises(CorruptRecord):
            AttemptHighWater.decode(MARK, bad)
    for bad in (msgpack.packb([2, None, ""]), msgpack.packb([2, b"f" * 16, 5]),
                msgpack.packb([1, b"f" * 16, ""]), b"short"):
        with pytest.raises(CorruptRecord):
            JobFingerprint.decode(PRINT, bad)
