"""A damaged stored record surfaces as CorruptRecord naming its key to a reader; it is never
dropped (a background loop or the open quarantines it instead)."""

from __future__ import annotations

import msgpack
import pytest

from silo import keys
from silo.errors import AlreadyExists
from silo.keys import Prefix
from silo.model import DEFAULT_TENANT as T
from silo.model import CorruptRecord, JobStatus
from silo.runtime.disk import WriteBatch
from silo.shard.tables import quarantine_key
from tests.shard.support import World, lease_one, new_job, status_of

GARBAGE = {
    "garbage": b"\xc1\xc1 not a record",
    "wrong-version": msgpack.packb([2, 1, 0, None, 1, 0, None, None]),
    "wrong-arity": msgpack.packb([1, 1, 0]),
}


async def _overwrite(world: World, k: bytes, value: bytes) -> None:
    async with world.raw_store() as kv:
        assert await kv.get(k) is not None
        batch = WriteBatch()
        batch.put(k, value)
        await kv.write(batch)


@pytest.mark.parametrize("damage", list(GARBAGE))
async def test_corrupt_status_row_raises_corrupt_record_naming_the_key(
    world: World, damage: str
) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("victim"))
        await shard.enqueue(new_job("bystander"))
    status_key = keys.key(Prefix.STATUS, T, "victim")
    await _overwrite(world, status_key, GARBAGE[damage])

    async with world.open() as shard:
        for read in (
            shard.get_job(T, "victim"),
            shard.get_job(T, "victim", include_attempts=True),
            shard.get_result(T, "victim"),
            shard.cancel(T, "victim"),
            shard.expedite(T, "victim"),
        ):
            with pytest.raises(CorruptRecord) as info:
                await read
            assert status_key.hex() in str(info.value)
            assert info.value.key == status_key
        # The job is not silently treated as absent ...
        with pytest.raises(CorruptRecord):
            await shard.delete(T, "victim")
        # ... nor can it be overwritten by an enqueue with the same id (a different job).
        with pytest.raises(AlreadyExists):
            await shard.enqueue(new_job("victim", payload=b"another"))
        # Other jobs are unaffected.
        assert await status_of(shard, "bystander") == JobStatus.SCHEDULED
        with pytest.raises(CorruptRecord, match=status_key.hex()):
            await shard.recount()


async def test_corrupt_attempt_row_is_reported(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        await lease_one(shard)
    attempt_key = keys.key(Prefix.ATTEMPT, T, "j", 1)
    await _overwrite(world, attempt_key, b"\x00\x01\x02")
    async with world.open() as shard:
        with pytest.raises(CorruptRecord, match=attempt_key.hex()):
            await shard.get_job(T, "j", include_attempts=True)


async def test_a_corrupt_lease_row_is_quarantined_at_open(world: World) -> None:
    """A damaged lease row must not keep the shard from opening (DESIGN §4 "No poison"): it is
    moved, byte for byte, to the quarantine table and counted; the job it belonged to ends
    FAILED ``INTERNAL_ERROR``."""
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        await shard.enqueue(new_job("other"))
    lease_key = keys.key(Prefix.LEASE, task.task_id)
    await _overwrite(world, lease_key, GARBAGE["wrong-arity"])
    async with world.open() as shard:
        assert shard.statistics().poison_items == 1
        assert shard.statistics().leases_held == 0
        result = await shard.get_result(T, "j")
        assert (result.status, result.error_code) == (JobStatus.FAILED, "INTERNAL_ERROR")
        assert (await lease_one(shard)).job_id == "other"
    items = dict(await world.raw_items())
    assert lease_key not in items
    assert items[quarantine_key(lease_key)] == GARBAGE["wrong-arity"]
