"""Bounded inputs and state on one shard (issue 8, defect 8): ids checked before use, error
messages that quote input cut short, attempts per job bounded across restarts and paged in
GetJob, counters that reach zero deleted."""

from __future__ import annotations

from dataclasses import replace

import pytest

from silo.errors import FailedPrecondition, InvalidArgument
from silo.keys import Prefix
from silo.model import DEFAULT_TENANT as T
from silo.model import Failure, OutcomeReport, Success
from silo.shard import ShardConfig
from silo.shard.validation import ShardLimits
from tests.shard.support import (
    LEASE_MS,
    WORKER,
    World,
    check_counters,
    lease_one,
    new_job,
    report,
    store_items,
)

BIG = "x" * (64 * 1024)
SHORT_MESSAGE = 400


def config(**limits: int) -> ShardConfig:
    return ShardConfig(limits=ShardLimits(**limits), lease_ms=LEASE_MS)


async def test_task_ids_are_bounded_before_use(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        with pytest.raises(InvalidArgument, match="task_id_max_chars") as info:
            await shard.heartbeat(WORKER, BIG)
        assert len(info.value.message) < SHORT_MESSAGE
        errors = await shard.report_outcomes([OutcomeReport(WORKER, BIG, Success(b"\xc0"))])
        assert isinstance(errors[0], InvalidArgument)
        assert "task_id_max_chars" in errors[0].message
        assert len(errors[0].message) < SHORT_MESSAGE
        with pytest.raises(InvalidArgument, match="task_id_max_chars"):
            await shard.report_refresh(WORKER, BIG, 3)
        # The real task is untouched.
        await shard.report_outcome(report(task, Success(b"\xc0")))


async def test_queue_keys_are_bounded_and_messages_quote_short(world: World) -> None:
    async with world.open() as shard:
        with pytest.raises(InvalidArgument, match="limit_key_max_chars") as info:
            shard.queue_info(T, BIG)
        assert len(info.value.message) < SHORT_MESSAGE
        long_id = "y" * 128  # the longest id allowed: the NOT_FOUND message quotes it cut
        with pytest.raises(Exception) as nf:
            await shard.get_job(T, long_id)
        assert len(str(nf.value)) < 200


async def test_restart_refused_past_max_attempts_per_job(world: World) -> None:
    async with world.open(config(max_attempts_per_job=6)) as shard:
        await shard.enqueue(new_job("j", retry_count=1, initial_ms=0))
        runs = 0
        while True:
            for _ in range(2):
                task = await lease_one(shard)
                await shard.report_outcome(report(task, Failure("E", b"\xc0")))
            runs += 1
            try:
                await shard.restart(T, "j")
            except FailedPrecondition as exc:
                assert "max_attempts_per_job" in exc.message
                break
            assert runs < 10, "restart never refused"
        view = await shard.get_job(T, "j", include_attempts=True)
        assert view.attempts_total <= 6
        assert view.attempts is not None and len(view.attempts) == view.attempts_total
        await check_counters(shard)


async def test_retry_count_capped_by_max_attempts_per_job(world: World) -> None:
    async with world.open(config(max_attempts_per_job=10)) as shard:
        with pytest.raises(InvalidArgument, match="max_attempts_per_job"):
            await shard.enqueue(new_job("j", retry_count=20))
        assert await store_items(shard) == [] or all(
            k[0] == Prefix.META for k, _ in await store_items(shard)
        )


async def test_get_job_pages_attempts_newest_first(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=9, initial_ms=0))
        for _ in range(10):
            task = await lease_one(shard)
            await shard.report_outcome(report(task, Failure("E", b"\xc0")))
        view = await shard.get_job(T, "j", include_attempts=True, max_attempts=4)
        assert view.attempts_total == 10
        assert [a.attempt for a in view.attempts or ()] == [10, 9, 8, 7]
        page = await shard.get_job(T, "j", include_attempts=True, max_attempts=4,
                                   attempts_before=7)
        assert [a.attempt for a in page.attempts or ()] == [6, 5, 4, 3]
        last = await shard.get_job(T, "j", include_attempts=True, max_attempts=4,
                                   attempts_before=3)
        assert [a.attempt for a in last.attempts or ()] == [2, 1]
        default = await shard.get_job(T, "j", include_attempts=True)
        assert len(default.attempts or ()) == 10
        no_attempts = await shard.get_job(T, "j")
        assert no_attempts.attempts is None and no_attempts.attempts_total == 10
        with pytest.raises(InvalidArgument, match="get_job_attempts_max"):
            await shard.get_job(T, "j", include_attempts=True, max_attempts=1001)


async def test_get_job_default_page_is_capped(world: World) -> None:
    limits = config(get_job_attempts_default=3, get_job_attempts_max=5)
    async with world.open(limits) as shard:
        await shard.enqueue(new_job("j", retry_count=6, initial_ms=0))
        for _ in range(7):
            task = await lease_one(shard)
            await shard.report_outcome(report(task, Failure("E", b"\xc0")))
        view = await shard.get_job(T, "j", include_attempts=True)
        assert [a.attempt for a in view.attempts or ()] == [7, 6, 5]
        assert view.attempts_total == 7


async def test_counters_that_reach_zero_are_deleted(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        await shard.report_outcome(report(task, Success(b"\xc0")))
        await shard.delete(T, "j")
        await check_counters(shard)
        stored = [(k, v) for k, v in await store_items(shard) if k[0] == Prefix.META]
        assert stored == [], f"zero counters left stored: {stored}"
        assert shard.counters() == {}
        assert await shard.recount() == {}


async def test_fingerprint_survives_reopen(world: World) -> None:
    """Reopen: the stored fingerprint still recognises the identical job."""
    job = new_job("j", payload=b"\x01")
    async with world.open() as shard:
        await shard.enqueue(job)
    async with world.open() as shard:
        [res] = await shard.enqueue_each([job])
        assert res.error is None and res.existed
        [other] = await shard.enqueue_each([replace(job, payload=b"\x02")])
        assert other.error is not None and other.error.code.name == "ALREADY_EXISTS"
