"""No poison (DESIGN §4): no request and no stored record can kill a shard. A background loop
that hits an unexpected error on one item ends that job FAILED ``INTERNAL_ERROR`` (or
quarantines the row), counts it (``ShardStatistics.poison_items``) and goes on; a report batch
with one bad report answers the others.

Every test here runs the shard's own loops: had one died, the error would leave ``world.open()``
and fail the test.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio
import trio.testing

from silo import keys
from silo.errors import Code, InvalidArgument, SiloError
from silo.keys import Prefix
from silo.model import DEFAULT_TENANT as T
from silo.model import ConcurrencyLimit, Failure, JobStatus, RetryPolicy, Success, Task
from silo.runtime.disk import WriteBatch
from silo.shard.tables import ready_key, timer_key
from tests.shard.support import (
    LEASE_MS,
    WORKER,
    World,
    check_counters,
    lease,
    lease_one,
    limited_job,
    new_job,
    report,
    status_of,
    where_is,
)

S = JobStatus
POISON = b"\xc1\xc1 not a record"


async def _overwrite(world: World, k: bytes, value: bytes) -> None:
    async with world.raw_store() as kv:
        assert await kv.get(k) is not None, k
        batch = WriteBatch()
        batch.put(k, value)
        await kv.write(batch)


async def _settle() -> None:
    for _ in range(3):
        await trio.testing.wait_all_tasks_blocked()


async def _runs_to_success(shard, job_id: str) -> None:  # noqa: ANN001
    await shard.enqueue(new_job(job_id, priority=0))
    task = await lease_one(shard)
    assert task.job_id == job_id
    await shard.report_outcome(report(task, Success(b"ok")))
    assert await status_of(shard, job_id) == S.SUCCEEDED


async def test_1000_retries_with_factor_100_fail_after_1001_attempts(
    memory_world: World,
) -> None:
    """Backoff factor 100 overflowed a float at the 156th failure: the report answered
    INTERNAL, the reaper raised on the expired lease and the shard died."""
    async with memory_world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=1000, initial_ms=0, max_ms=0, factor=100.0))
        for n in range(1, 1002):
            task = await lease_one(shard)
            assert task.attempt == n
            await shard.report_outcome(report(task, Failure("E")))
        result = await shard.get_result(T, "j")
        assert (result.status, result.error_code) == (S.FAILED, "E")
        assert (await shard.get_job(T, "j")).state.attempt == 1001
        await _runs_to_success(shard, "after")
        await check_counters(shard)


@pytest.mark.parametrize(
    "retry, limit",
    [
        (RetryPolicy(1001, 0, 0, 2.0), "retry_count_max"),
        (RetryPolicy(3, 0, 7 * 24 * 3600 * 1000 + 1, 2.0), "backoff_max_ms"),
        (RetryPolicy(3, 7 * 24 * 3600 * 1000 + 1, 0, 2.0), "backoff_max_ms"),
        (RetryPolicy(3, 10, 10, 100.5), "backoff_factor_max"),
        (RetryPolicy(3, 10, 10, float("inf")), "backoff_factor_max"),
        (RetryPolicy(3, 10, 10, float("nan")), "backoff_factor"),
        (RetryPolicy(3, 10, 10, 0.5), "backoff_factor_min"),
    ],
)
async def test_enqueue_refuses_a_retry_policy_past_a_named_limit(
    memory_world: World, retry: RetryPolicy, limit: str
) -> None:
    async with memory_world.open() as shard:
        job = replace(new_job("j"), retry=retry)
        with pytest.raises(InvalidArgument, match=limit):
            await shard.enqueue(job)
        assert shard.statistics().jobs_total == 0


async def test_a_corrupt_status_row_under_a_lease_does_not_kill_the_reaper(
    memory_world: World,
) -> None:
    world = memory_world
    async with world.open() as shard:
        await shard.enqueue(new_job("victim", priority=1))
        await shard.enqueue(new_job("bystander", priority=50))
        assert (await lease_one(shard)).job_id == "victim"
        bystander = await lease_one(shard)
    await _overwrite(world, keys.key(Prefix.STATUS, T, "victim"), POISON)
    async with world.open() as shard:
        world.advance(LEASE_MS // 2)
        await shard.heartbeat(WORKER, bystander.task_id)
        world.advance(LEASE_MS // 2 + 1)
        await _settle()
        assert shard.statistics().poison_items == 1
        assert shard.statistics().leases_held == 1  # the bystander's
        result = await shard.get_result(T, "victim")
        assert (result.status, result.error_code) == (S.FAILED, "INTERNAL_ERROR")
        await shard.report_outcome(report(bystander, Success(b"ok")))
        assert await status_of(shard, "bystander") == S.SUCCEEDED
        await _runs_to_success(shard, "after")
        await check_counters(shard)


@pytest.mark.parametrize("table", ["timer", "ready"])
async def test_a_corrupt_queue_row_does_not_kill_promotion_or_leasing(
    memory_world: World, table: str
) -> None:
    world = memory_world
    start_at = world.now_ms() + 1000 if table == "timer" else 0
    async with world.open() as shard:
        await shard.enqueue(new_job("victim", priority=1, start_at_ms=start_at))
        await shard.enqueue(new_job("bystander", priority=50, start_at_ms=start_at))
        victim = (await shard.get_job(T, "victim")).state.task
    assert victim is not None
    attempt, due_ms, _where, task_id = victim
    task = Task(task_id, T, "victim", attempt, "g", 1, due_ms)
    await _overwrite(world, timer_key(task) if table == "timer" else ready_key(task), POISON)
    async with world.open() as shard:
        world.advance(1000)
        await _settle()
        tasks = await lease(shard)
        assert [t.job_id for t in tasks] == ["bystander"]
        assert shard.statistics().poison_items == 1
        result = await shard.get_result(T, "victim")
        assert (result.status, result.error_code) == (S.FAILED, "INTERNAL_ERROR")
        await shard.report_outcome(report(tasks[0], Success(b"ok")))
        await _runs_to_success(shard, "after")
        await check_counters(shard)


async def test_one_poison_report_does_not_fail_the_others_in_its_batch(
    memory_world: World,
) -> None:
    world = memory_world
    async with world.open() as shard:
        await shard.enqueue(new_job("victim", priority=1))
        await shard.enqueue(new_job("bystander", priority=50))
        victim, bystander = await lease(shard)
        assert (victim.job_id, bystander.job_id) == ("victim", "bystander")
    await _overwrite(world, keys.key(Prefix.ATTEMPT, T, "victim", 1), POISON)
    async with world.open() as shard:
        results = await shard.report_outcomes(
            [report(victim, Success(b"v")), report(bystander, Success(b"b"))]
        )
        assert results[1] is None
        assert isinstance(results[0], SiloError) and results[0].code == Code.INTERNAL
        assert await status_of(shard, "bystander") == S.SUCCEEDED
        result = await shard.get_result(T, "victim")
        assert (result.status, result.error_code) == (S.FAILED, "INTERNAL_ERROR")
        assert shard.statistics().poison_items == 1
        assert shard.statistics().leases_held == 0
        await _runs_to_success(shard, "after")
        await check_counters(shard)


class PoisonWriteStore:
    """A store whose next synced write raises an unexpected (non-disk) error once."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self._inner = inner
        self.poison_next = False

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._inner, name)

    async def write(self, batch: WriteBatch, *, sync: bool = True) -> None:
        if self.poison_next:
            self.poison_next = False
            raise TypeError("poison batch")
        await self._inner.write(batch, sync=sync)


async def test_an_unexpected_write_error_fails_that_batch_and_the_writer_goes_on(
    memory_world: World,
) -> None:
    world = memory_world
    stores: list[PoisonWriteStore] = []
    inner_open = world.disk.open

    async def poison_open(path: str) -> PoisonWriteStore:
        stores.append(PoisonWriteStore(await inner_open(path)))
        return stores[-1]

    world.disk.open = poison_open  # type: ignore[method-assign]
    async with world.open() as shard:
        stores[0].poison_next = True
        with pytest.raises(SiloError) as info:
            await shard.enqueue(new_job("lost"))
        assert info.value.code == Code.UNAVAILABLE
        assert shard.statistics().poison_items == 1
        await _runs_to_success(shard, "after")
        assert shard.statistics().jobs_total == 1
        await check_counters(shard)


async def test_a_corrupt_parked_request_does_not_block_the_grants_behind_it(
    memory_world: World,
) -> None:
    world = memory_world
    one = ConcurrencyLimit("q", 1)
    async with world.open() as shard:
        await shard.enqueue(limited_job("holder", one, priority=1))
        holder = await lease_one(shard)
        await shard.enqueue(limited_job("victim", one, priority=2))
        await shard.enqueue(limited_job("bystander", one, priority=3))
        assert await where_is(shard, "victim") == "PARKED"
    async with world.raw_store() as kv:
        start, end = keys.prefix_range(Prefix.CONCURRENCY_REQUEST, T, "q")
        victim_rows = [k for k, _ in await kv.scan(start, end) if b"victim" in k]
    assert len(victim_rows) == 1
    await _overwrite(world, victim_rows[0], POISON)
    async with world.open() as shard:
        await shard.report_outcome(report(holder, Success(b"ok")))
        assert (await lease_one(shard)).job_id == "bystander"
        assert shard.statistics().poison_items == 1
        result = await shard.get_result(T, "victim")
        assert (result.status, result.error_code) == (S.FAILED, "INTERNAL_ERROR")
        await check_counters(shard)


async def test_a_parked_job_with_a_corrupt_status_row_does_not_block_grants(
    memory_world: World,
) -> None:
    """The grant itself hits the damaged row: its request is quarantined, the next one is
    granted, and every later operation on the queue works."""
    world = memory_world
    one = ConcurrencyLimit("q", 1)
    async with world.open() as shard:
        await shard.enqueue(limited_job("holder", one, priority=1))
        holder = await lease_one(shard)
        await shard.enqueue(limited_job("victim", one, priority=2))
        await shard.enqueue(limited_job("bystander", one, priority=3))
    await _overwrite(world, keys.key(Prefix.STATUS, T, "victim"), POISON)
    async with world.open() as shard:
        await shard.report_outcome(report(holder, Success(b"ok")))
        task = await lease_one(shard)
        assert task.job_id == "bystander"
        assert shard.statistics().poison_items == 1
        await shard.report_outcome(report(task, Success(b"ok")))
        await shard.enqueue(limited_job("after", one, priority=0))
        assert (await lease_one(shard)).job_id == "after"


async def test_an_expiry_entry_without_its_lease_is_dropped_by_the_reaper(
    memory_world: World,
) -> None:
    """(Before, the reaper met the stray entry on every round and never slept again.)"""
    world = memory_world
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
    async with world.raw_store() as kv:
        batch = WriteBatch()
        batch.delete(keys.key(Prefix.LEASE, task.task_id))
        await kv.write(batch)
    async with world.open() as shard:
        world.advance(LEASE_MS + 1)
        await _settle()
        assert shard.statistics().poison_items == 1
        await _runs_to_success(shard, "after")
    expiries = [k for k, _ in await world.raw_items() if k[0] == Prefix.LEASE_EXPIRY]
    assert expiries == []
