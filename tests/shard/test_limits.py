"""Every input limit of ShardLimits (DESIGN §3): INVALID_ARGUMENT with a message naming the limit,
and nothing written (no keys, counters unchanged) by the rejected request."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from silo.errors import Code, InvalidArgument
from silo.model import DEFAULT_TENANT as T
from silo.model import (
    ConcurrencyLimit,
    Failure,
    FloatingConcurrencyLimit,
    NewJob,
    OutcomeReport,
    RateLimit,
    RetryPolicy,
    Success,
)
from silo.shard import JobShard, ShardLimits
from tests.shard.support import WORKER, World, lease_one, new_job, report, store_items

L = ShardLimits()

JOB_CASES = {
    "payload_max_bytes": new_job("x", payload=b"p" * (L.payload_max_bytes + 1)),
    "tenant_max_chars": new_job("x", tenant="t" * (L.tenant_max_chars + 1)),
    "task_group_max_chars": new_job("x", group="g" * (L.task_group_max_chars + 1)),
    "job_id_max_chars": new_job("j" * (L.job_id_max_chars + 1)),
    "metadata_max_entries": new_job(
        "x", metadata={f"k{i}": "v" for i in range(L.metadata_max_entries + 1)}
    ),
    "metadata_key_max_chars": new_job("x", metadata={"k" * (L.metadata_key_max_chars + 1): "v"}),
    "metadata_value_max_bytes": new_job(
        "x", metadata={"k": "v" * (L.metadata_value_max_bytes + 1)}
    ),
    # The value limit counts UTF-8 bytes, not characters.
    "metadata_value_max_bytes-utf8": new_job(
        "x", metadata={"k": "é" * (L.metadata_value_max_bytes // 2 + 1)}
    ),
    "priority_max-100": new_job("x", priority=100),
    "priority_min--1": new_job("x", priority=-1),
    "retry_count_max": new_job("x", retry_count=L.retry_count_max + 1),
    "retry_count_max-negative": new_job("x", retry_count=-1),
    "backoff_max_ms": new_job("x", initial_ms=L.backoff_max_ms + 1, max_ms=L.backoff_max_ms + 1),
    "backoff_max_ms-negative": NewJob("g", job_id="x", retry=RetryPolicy(1, -5, 10)),
    "backoff_factor_min": new_job("x", factor=0.5),
    "backoff_factor_max": new_job("x", factor=L.backoff_factor_max + 0.5),
    "backoff_factor_max-infinite": new_job("x", factor=float("inf")),
    "limits_per_job_max": replace(
        new_job("x"),
        limits=tuple(ConcurrencyLimit(f"q{i}", 1) for i in range(L.limits_per_job_max + 1)),
    ),
    "limit_key_max_chars": replace(
        new_job("x"), limits=(ConcurrencyLimit("k" * (L.limit_key_max_chars + 1), 1),)
    ),
    "limit_key_max_chars-rate": replace(
        new_job("x"), limits=(RateLimit("n" * (L.limit_key_max_chars + 1), "", 1, 1000),)
    ),
    "max_timeout_ms": replace(new_job("x"), timeout_ms=L.max_timeout_ms + 1),
    "max_concurrency_max": replace(
        new_job("x"), limits=(ConcurrencyLimit("q", L.max_concurrency_max + 1),)
    ),
    "max_concurrency_max-floating": replace(
        new_job("x"),
        limits=(FloatingConcurrencyLimit("q", L.max_concurrency_max + 1, 1000),),
    ),
    "rate_limit_max": replace(
        new_job("x"), limits=(RateLimit("api", "k", L.rate_limit_max + 1, 1000),)
    ),
    "rate_limit_max-zero": replace(new_job("x"), limits=(RateLimit("api", "k", 0, 1000),)),
    "rate_period_max_ms": replace(
        new_job("x"), limits=(RateLimit("api", "k", 1, L.rate_period_max_ms + 1),)
    ),
    "refresh_interval_max_ms": replace(
        new_job("x"),
        limits=(FloatingConcurrencyLimit("q", 1, 24 * 3600 * 1000 + 1),),
    ),
    "refresh_interval_min_ms": replace(
        new_job("x"),
        limits=(FloatingConcurrencyLimit("q", 1, L.refresh_interval_min_ms - 1),),
    ),
}
# Rejected without a named limit (there is no setting to change), but still before any write.
JOB_CASES_UNNAMED = {
    "task group": new_job("x", group=""),
    "tenant": new_job("x", tenant=""),
    "job id": new_job(""),
    "backoff_factor must be a number": new_job("x", factor=float("nan")),
    "start_at_ms": new_job("x", start_at_ms=-1),
    "metadata keys": new_job("x", metadata={"": "v"}),
    "priority must be an integer": new_job("x", priority=True),  # type: ignore[arg-type]
    "appears twice": replace(
        new_job("x"), limits=(ConcurrencyLimit("q", 1), ConcurrencyLimit("q", 2))
    ),
    # One reservation per rate key and attempt: the reservation index is keyed by it.
    "rate limit 'api' key 'k' appears twice": replace(
        new_job("x"), limits=(RateLimit("api", "k", 1, 1000), RateLimit("api", "k", 2, 1000))
    ),
}


def _limit_name(case: str) -> str:
    return case.split("-")[0]


async def _snapshot(shard: JobShard) -> tuple:
    return await store_items(shard), shard.counters(), shard.statistics().jobs_total


@pytest.mark.parametrize("case", list(JOB_CASES))
async def test_enqueue_limits_name_the_limit_and_write_nothing(world: World, case: str) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("baseline"))
        before = await _snapshot(shard)
        bad = JOB_CASES[case]
        with pytest.raises(InvalidArgument) as info:
            await shard.enqueue(bad)
        assert info.value.code == Code.INVALID_ARGUMENT
        assert _limit_name(case) in info.value.message
        # In a batch with valid jobs, the whole batch is refused.
        with pytest.raises(InvalidArgument, match=_limit_name(case)):
            await shard.enqueue_batch([new_job("ok-1"), bad, new_job("ok-2")])
        assert await _snapshot(shard) == before


@pytest.mark.parametrize("case", list(JOB_CASES_UNNAMED))
async def test_other_invalid_jobs_write_nothing(memory_world: World, case: str) -> None:
    async with memory_world.open() as shard:
        await shard.enqueue(new_job("baseline"))
        before = await _snapshot(shard)
        with pytest.raises(InvalidArgument, match=case):
            await shard.enqueue_batch([new_job("ok-1"), JOB_CASES_UNNAMED[case]])
        assert await _snapshot(shard) == before


async def test_values_at_the_limits_are_accepted(world: World) -> None:
    async with world.open() as shard:
        ok = [
            new_job("j" * L.job_id_max_chars, payload=b"p" * L.payload_max_bytes,
                    tenant="t" * L.tenant_max_chars, group="g" * L.task_group_max_chars,
                    priority=99, retry_count=L.retry_count_max,
                    metadata={f"{i:0{L.metadata_key_max_chars}d}": "v" * L.metadata_value_max_bytes
                              for i in range(L.metadata_max_entries)}),
            new_job("p0", priority=0),
        ]
        await shard.enqueue_batch(ok)
        view = await shard.get_job("t" * L.tenant_max_chars, "j" * L.job_id_max_chars)
        assert len(view.info.payload) == L.payload_max_bytes
        assert len(view.info.metadata) == L.metadata_max_entries


async def test_max_jobs_per_batch(world: World) -> None:
    async with world.open() as shard:
        before = await _snapshot(shard)
        with pytest.raises(InvalidArgument, match="max_jobs_per_batch"):
            await shard.enqueue_batch([new_job() for _ in range(L.max_jobs_per_batch + 1)])
        assert await _snapshot(shard) == before
        assert await shard.enqueue_batch([]) == []


@pytest.mark.parametrize("max_tasks", [0, -1, L.max_tasks_per_lease + 1])
async def test_max_tasks_per_lease(world: World, max_tasks: int) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        before = await _snapshot(shard)
        with pytest.raises(InvalidArgument, match="max_tasks_per_lease"):
            await shard.lease_tasks(WORKER, "g", max_tasks)
        assert await _snapshot(shard) == before
        assert len(await shard.lease_tasks(WORKER, "g", L.max_tasks_per_lease)) == 1


@pytest.mark.parametrize(
    "worker, group, limit",
    [("w" * (L.worker_id_max_chars + 1), "g", "worker_id_max_chars"),
     ("", "g", "worker id"),
     (WORKER, "g" * (L.task_group_max_chars + 1), "task_group_max_chars"),
     (WORKER, "", "task group")],
)
async def test_lease_argument_limits(world: World, worker: str, group: str, limit: str) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        before = await _snapshot(shard)
        with pytest.raises(InvalidArgument, match=limit):
            await shard.lease_tasks(worker, group, 1)
        assert await _snapshot(shard) == before


REPORT_CASES = {
    "result_max_bytes": Success(b"r" * (L.result_max_bytes + 1)),
    "error_data_max_bytes": Failure("E", b"d" * (L.error_data_max_bytes + 1)),
    "error_code_max_chars": Failure("E" * (L.error_code_max_chars + 1)),
}


@pytest.mark.parametrize("case", list(REPORT_CASES))
async def test_report_limits_leave_the_attempt_running(world: World, case: str) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=1))
        task = await lease_one(shard)
        before = await _snapshot(shard)
        view = await shard.get_job(T, "j", include_attempts=True)
        with pytest.raises(InvalidArgument, match=case):
            await shard.report_outcome(report(task, REPORT_CASES[case]))
        assert await _snapshot(shard) == before
        assert await shard.get_job(T, "j", include_attempts=True) == view
        # At the limit it is accepted.
        at_limit = {
            "result_max_bytes": Success(b"r" * L.result_max_bytes),
            "error_data_max_bytes": Failure("E", b"d" * L.error_data_max_bytes),
            "error_code_max_chars": Failure("E" * L.error_code_max_chars),
        }[case]
        await shard.report_outcome(report(task, at_limit))


async def test_too_many_reports_in_one_call(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        before = await _snapshot(shard)
        reports = [report(task, Success())] * (L.max_tasks_per_lease + 1)
        with pytest.raises(InvalidArgument, match="max_tasks_per_lease"):
            await shard.report_outcomes(reports)
        assert await _snapshot(shard) == before


async def test_heartbeat_worker_id_limit(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        with pytest.raises(InvalidArgument, match="worker_id_max_chars"):
            await shard.heartbeat("w" * (L.worker_id_max_chars + 1), task.task_id)
        bad = OutcomeReport("w" * (L.worker_id_max_chars + 1), task.task_id, Success())
        with pytest.raises(InvalidArgument, match="worker_id_max_chars"):
            await shard.report_outcome(bad)


@pytest.mark.parametrize("op", ["get_job", "cancel", "restart", "expedite", "delete"])
async def test_job_reference_limits(memory_world: World, op: str) -> None:
    async with memory_world.open() as shard:
        fn = getattr(shard, op)
        with pytest.raises(InvalidArgument, match="tenant_max_chars"):
            await fn("t" * (L.tenant_max_chars + 1), "j")
        with pytest.raises(InvalidArgument, match="job_id_max_chars"):
            await fn(T, "j" * (L.job_id_max_chars + 1))


async def test_limits_are_configurable(memory_world: World) -> None:
    from silo.shard import ShardConfig

    small = ShardConfig(limits=ShardLimits(payload_max_bytes=4, priority_max=9,
                                           max_tasks_per_lease=2, metadata_max_entries=1))
    async with memory_world.open(small) as shard:
        await shard.enqueue(new_job("ok", payload=b"1234", priority=9))
        with pytest.raises(InvalidArgument, match="payload_max_bytes is 4"):
            await shard.enqueue(new_job("big", payload=b"12345"))
        with pytest.raises(InvalidArgument, match="priority_max"):
            await shard.enqueue(new_job("p", payload=b"", priority=10))
        with pytest.raises(InvalidArgument, match="metadata_max_entries"):
            await shard.enqueue(
                new_job("m", payload=b"", priority=1, metadata={"a": "1", "b": "2"})
            )
        with pytest.raises(InvalidArgument, match="max_tasks_per_lease"):
            await shard.lease_tasks(WORKER, "g", 3)


def test_every_limit_is_covered() -> None:
    """A new field in ShardLimits must get a test here."""
    covered = {_limit_name(c) for c in JOB_CASES} | set(REPORT_CASES) | {
        "max_jobs_per_batch", "max_tasks_per_lease", "worker_id_max_chars",
        # tests/shard/test_bounds.py:
        "task_id_max_chars", "max_attempts_per_job", "get_job_attempts_default",
        "get_job_attempts_max",
        # tests/shard/test_enqueue_retry_after_delete.py:
        "request_id_max_chars",
    }
    assert {f.name for f in fields(ShardLimits)} <= covered
