"""EnqueueBatch per-job results and request fingerprints (issue 8, defect 9): a batch is atomic
and says, job by job, what happened; ALREADY_EXISTS means a *different* job holds the id; an
identical re-sent job is OK ``existed``."""

from __future__ import annotations

from dataclasses import replace

import pytest

from silo.errors import AlreadyExists, Code
from silo.model import DEFAULT_TENANT as T
from silo.model import Success
from tests.shard.support import World, check_counters, lease_one, new_job, report, store_items


async def test_identical_resend_is_ok_existed_and_writes_nothing(world: World) -> None:
    jobs = [new_job("a", payload=b"\x01"), new_job("b", payload=b"\x02")]
    async with world.open() as shard:
        first = await shard.enqueue_each(jobs)
        assert [(r.job_id, r.error, r.existed) for r in first] == [
            ("a", None, False), ("b", None, False)]
        before = await store_items(shard)
        again = await shard.enqueue_each(jobs)
        assert [(r.job_id, r.error, r.existed) for r in again] == [
            ("a", None, True), ("b", None, True)]
        assert await store_items(shard) == before
        # Enqueue (one job) is idempotent the same way.
        assert await shard.enqueue(jobs[0]) == "a"
        assert await store_items(shard) == before
        await check_counters(shard)


async def test_batch_refused_for_one_different_job_writes_none_and_says_which(
    world: World,
) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("taken", payload=b"\x01"))
        before = await store_items(shard)
        batch = [new_job("new-1"), new_job("taken", payload=b"\x09"), new_job("new-2")]
        results = await shard.enqueue_each(batch)
        codes = [(r.job_id, r.error.code if r.error else Code.OK) for r in results]
        assert codes == [("new-1", Code.ABORTED), ("taken", Code.ALREADY_EXISTS),
                         ("new-2", Code.ABORTED)]
        assert "another job in the batch was refused" in (results[0].error.message or "")
        assert await store_items(shard) == before
        # The all-or-nothing enqueue_batch raises the cause, not a held-back job.
        with pytest.raises(AlreadyExists, match="taken"):
            await shard.enqueue_batch(batch)
        await check_counters(shard)


async def test_duplicate_id_within_one_batch_is_refused(world: World) -> None:
    async with world.open() as shard:
        results = await shard.enqueue_each([new_job("d"), new_job("d", payload=b"\x05")])
        assert results[1].error is not None and results[1].error.code == Code.ALREADY_EXISTS
        assert results[0].error is not None and results[0].error.code == Code.ABORTED
        assert await shard.recount() == {}


async def test_different_job_under_existing_id_is_already_exists(world: World) -> None:
    job = new_job("j", payload=b"\x01")
    async with world.open() as shard:
        await shard.enqueue(job)
        for changed in (replace(job, payload=b"\x02"), replace(job, priority=3),
                        replace(job, task_group="other"), replace(job, metadata={"k": "v"})):
            with pytest.raises(AlreadyExists):
                await shard.enqueue(changed)


async def test_resend_after_the_job_finished_is_still_existed(world: World) -> None:
    job = new_job("j", payload=b"\x01")
    async with world.open() as shard:
        await shard.enqueue(job)
        task = await lease_one(shard)
        await shard.report_outcome(report(task, Success(b"\xc0")))
        [res] = await shard.enqueue_each([job])
        assert res.error is None and res.existed
        assert (await shard.get_job(T, "j")).state.attempt == 1
