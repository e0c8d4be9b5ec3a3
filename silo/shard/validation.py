"""Named input limits and the validation that enforces them.

Every check raises :class:`~silo.errors.InvalidArgument` with a message that names the limit
(e.g. ``payload_max_bytes``) so an operator can find the setting to change. Validation happens
before anything is written, so rejected input leaves nothing behind.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from silo.errors import InvalidArgument, quote
from silo.model import (
    ConcurrencyLimit,
    FloatingConcurrencyLimit,
    Limit,
    OutcomeReport,
    RateLimit,
    RetryPolicy,
)
from silo.shard import transitions

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class ShardLimits:
    """Input limits of DESIGN §3 (all configurable)."""

    payload_max_bytes: int = 1 * MIB
    result_max_bytes: int = 1 * MIB
    error_data_max_bytes: int = 64 * KIB
    error_code_max_chars: int = 128
    tenant_max_chars: int = 64
    task_group_max_chars: int = 64
    job_id_max_chars: int = 128
    worker_id_max_chars: int = 128
    task_id_max_chars: int = 64
    """Task ids are made by the shard (25 characters); a longer one cannot be ours."""
    request_id_max_chars: int = 64
    """The request id an enqueue call carries (the client sends 32 hex characters)."""
    metadata_max_entries: int = 16
    metadata_key_max_chars: int = 64
    metadata_value_max_bytes: int = 1 * KIB
    priority_min: int = 0
    priority_max: int = 99
    max_tasks_per_lease: int = 1000
    max_jobs_per_batch: int = 1000
    retry_count_max: int = 1000
    backoff_max_ms: int = 7 * 24 * 3600 * 1000
    """Bounds ``initial_backoff_ms`` and ``max_backoff_ms`` of a retry policy."""
    backoff_factor_min: float = 1.0
    backoff_factor_max: float = 100.0
    limits_per_job_max: int = 8
    limit_key_max_chars: int = 64
    max_concurrency_max: int = 1_000_000
    rate_limit_max: int = 1_000_000
    rate_period_max_ms: int = 7 * 24 * 3600 * 1000
    refresh_interval_min_ms: int = 100
    refresh_interval_max_ms: int = 24 * 3600 * 1000
    max_attempts_per_job: int = 10_000
    """Attempts one job may ever make, over all its runs (restarts included). A restart that
    could take a job past it is refused, and ``retry_count`` is capped so one run cannot."""
    get_job_attempts_default: int = 100
    """Attempts GetJob returns when the request does not say (``max_attempts = 0``)."""
    get_job_attempts_max: int = 1000
    """The most attempts one GetJob returns (``max_attempts`` above it is refused)."""
    max_timeout_ms: int = 24 * 3600 * 1000
    """The longest per-job attempt timeout (``timeout_ms``) a job may ask for."""


def _check_name(value: str, what: str, limit_name: str, limit: int, *, empty_ok: bool) -> None:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string")
    if not value and not empty_ok:
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > limit:
        raise InvalidArgument(f"{what} is {len(value)} characters; {limit_name} is {limit}")


def check_tenant(limits: ShardLimits, tenant: str) -> None:
    _check_name(tenant, "tenant", "tenant_max_chars", limits.tenant_max_chars, empty_ok=False)


def check_task_group(limits: ShardLimits, task_group: str) -> None:
    _check_name(
        task_group, "task group", "task_group_max_chars", limits.task_group_max_chars,
        empty_ok=False,
    )


def check_job_id(limits: ShardLimits, job_id: str) -> None:
    _check_name(job_id, "job id", "job_id_max_chars", limits.job_id_max_chars, empty_ok=False)


def check_request_id(limits: ShardLimits, request_id: str) -> None:
    """An enqueue call's request id: empty (no id) or at most ``request_id_max_chars``."""
    _check_name(
        request_id, "request id", "request_id_max_chars", limits.request_id_max_chars,
        empty_ok=True,
    )


def check_worker_id(limits: ShardLimits, worker_id: str) -> None:
    _check_name(
        worker_id, "worker id", "worker_id_max_chars", limits.worker_id_max_chars, empty_ok=False
    )


def check_task_id(limits: ShardLimits, task_id: str) -> None:
    _check_name(task_id, "task id", "task_id_max_chars", limits.task_id_max_chars, empty_ok=False)


def check_queue_key(limits: ShardLimits, queue: str) -> None:
    _check_name(queue, "queue key", "limit_key_max_chars", limits.limit_key_max_chars,
                empty_ok=False)


def check_attempts_page(limits: ShardLimits, max_attempts: int, attempts_before: int) -> int:
    """The number of attempts a GetJob returns for ``max_attempts`` (0: the default)."""
    if max_attempts == 0:
        max_attempts = limits.get_job_attempts_default
    if not 1 <= max_attempts <= limits.get_job_attempts_max:
        raise InvalidArgument(
            f"max_attempts {max_attempts} is outside 0..get_job_attempts_max "
            f"({limits.get_job_attempts_max})"
        )
    if attempts_before < 0:
        raise InvalidArgument("attempts_before must not be negative")
    return max_attempts


def check_report_ids(limits: ShardLimits, report: OutcomeReport) -> None:
    """Every id an outcome report carries, before any of them is looked up or quoted."""
    check_worker_id(limits, report.worker_id)
    check_task_id(limits, report.task_id)
    if report.tenant is not None:
        check_tenant(limits, report.tenant)
    if report.job_id is not None:
        check_job_id(limits, report.job_id)


def check_bytes(value: bytes, what: str, limit_name: str, limit: int) -> None:
    if not isinstance(value, bytes | bytearray):
        raise InvalidArgument(f"{what} must be bytes")
    if len(value) > limit:
        raise InvalidArgument(f"{what} is {len(value)} bytes; {limit_name} is {limit}")


def check_priority(limits: ShardLimits, priority: int) -> None:
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise InvalidArgument("priority must be an integer")
    if not limits.priority_min <= priority <= limits.priority_max:
        raise InvalidArgument(
            f"priority {priority} is outside priority_min..priority_max "
            f"({limits.priority_min}..{limits.priority_max})"
        )


def check_metadata(limits: ShardLimits, metadata: Mapping[str, str]) -> None:
    if len(metadata) > limits.metadata_max_entries:
        raise InvalidArgument(
            f"metadata has {len(metadata)} entries; metadata_max_entries is "
            f"{limits.metadata_max_entries}"
        )
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidArgument("metadata keys and values must be strings")
        if not k:
            raise InvalidArgument("metadata keys must not be empty")
        if len(k) > limits.metadata_key_max_chars:
            raise InvalidArgument(
                f"metadata key {quote(k, 20)} is {len(k)} characters; metadata_key_max_chars is "
                f"{limits.metadata_key_max_chars}"
            )
        size = len(v.encode("utf-8"))
        if size > limits.metadata_value_max_bytes:
            raise InvalidArgument(
                f"metadata value of {quote(k)} is {size} bytes; metadata_value_max_bytes is "
                f"{limits.metadata_value_max_bytes}"
            )


def check_timeout(limits: ShardLimits, timeout_ms: int) -> None:
    """A job's attempt timeout: 0 (the worker's default) or 1..max_timeout_ms."""
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int):
        raise InvalidArgument("timeout_ms must be an integer")
    if not 0 <= timeout_ms <= limits.max_timeout_ms:
        raise InvalidArgument(
            f"timeout_ms {timeout_ms} is outside 0..max_timeout_ms ({limits.max_timeout_ms})"
        )


def check_retry(limits: ShardLimits, retry: RetryPolicy) -> None:
    """Every field of a retry policy within its named limit, and the worst case it can reach
    (the delay of its last retry, with the largest jitter) computable and within bounds."""
    L = limits
    for name, value in (
        ("retry_count", retry.retry_count),
        ("initial_backoff_ms", retry.initial_backoff_ms),
        ("max_backoff_ms", retry.max_backoff_ms),
    ):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgument(f"{name} must be an integer")
    if not 0 <= retry.retry_count <= L.retry_count_max:
        raise InvalidArgument(
            f"retry_count {retry.retry_count} is outside 0..retry_count_max "
            f"({L.retry_count_max})"
        )
    run_max = transitions.run_attempts_max(retry)
    if run_max > L.max_attempts_per_job:
        raise InvalidArgument(
            f"retry_count {retry.retry_count} allows {run_max} attempts (undelivered ones "
            f"included); max_attempts_per_job is {L.max_attempts_per_job}"
        )
    for name, value in (
        ("initial_backoff_ms", retry.initial_backoff_ms),
        ("max_backoff_ms", retry.max_backoff_ms),
    ):
        if not 0 <= value <= L.backoff_max_ms:
            raise InvalidArgument(
                f"{name} {value} is outside 0..backoff_max_ms ({L.backoff_max_ms})"
            )
    factor = retry.backoff_factor
    if not isinstance(factor, int | float) or isinstance(factor, bool) or math.isnan(factor):
        raise InvalidArgument("backoff_factor must be a number")
    if factor < L.backoff_factor_min:
        raise InvalidArgument(
            f"backoff_factor {factor} is below backoff_factor_min ({L.backoff_factor_min})"
        )
    if not factor <= L.backoff_factor_max:  # infinity included
        raise InvalidArgument(
            f"backoff_factor {factor} is above backoff_factor_max ({L.backoff_factor_max})"
        )
    try:
        worst = transitions.backoff_ms(retry, max(1, retry.retry_count), 2.0)
    except (ArithmeticError, ValueError) as exc:  # pragma: no cover - backoff_ms is total
        raise InvalidArgument(f"retry policy backoff cannot be computed: {exc}") from exc
    if not 0 <= worst <= 2 * L.backoff_max_ms:  # pragma: no cover - guaranteed by the above
        raise InvalidArgument(f"retry policy backoff {worst} ms exceeds 2 x backoff_max_ms")


def check_max_tasks(limits: ShardLimits, max_tasks: int) -> None:
    if not 1 <= max_tasks <= limits.max_tasks_per_lease:
        raise InvalidArgument(
            f"max_tasks {max_tasks} is outside 1..max_tasks_per_lease "
            f"({limits.max_tasks_per_lease})"
        )


def check_error_code(limits: ShardLimits, code: str) -> None:
    _check_name(
        code, "error code", "error_code_max_chars", limits.error_code_max_chars, empty_ok=False
    )


def check_job_limits(limits: ShardLimits, job_limits: tuple[Limit, ...]) -> None:
    """Every limit of a job: well-formed, within bounds, no queue named twice."""
    if len(job_limits) > limits.limits_per_job_max:
        raise InvalidArgument(
            f"job has {len(job_limits)} limits; limits_per_job_max is {limits.limits_per_job_max}"
        )
    queues: list[str] = []
    buckets: list[tuple[str, str]] = []
    for limit in job_limits:
        if isinstance(limit, ConcurrencyLimit | FloatingConcurrencyLimit):
            _check_name(limit.key, "concurrency limit key", "limit_key_max_chars",
                        limits.limit_key_max_chars, empty_ok=False)
            if limit.key in queues:
                raise InvalidArgument(f"concurrency limit key {quote(limit.key)} appears twice")
            queues.append(limit.key)
            top = (
                limit.max_concurrency
                if isinstance(limit, ConcurrencyLimit)
                else limit.default_max_concurrency
            )
            if not 0 <= top <= limits.max_concurrency_max:
                raise InvalidArgument(
                    f"max concurrency {top} of {quote(limit.key)} is outside "
                    f"0..max_concurrency_max ({limits.max_concurrency_max})"
                )
            if isinstance(limit, FloatingConcurrencyLimit):
                if limit.refresh_interval_ms < limits.refresh_interval_min_ms:
                    raise InvalidArgument(
                        f"refresh_interval_ms {limit.refresh_interval_ms} of {quote(limit.key)} is "
                        f"below refresh_interval_min_ms ({limits.refresh_interval_min_ms})"
                    )
                if limit.refresh_interval_ms > limits.refresh_interval_max_ms:
                    raise InvalidArgument(
                        f"refresh_interval_ms {limit.refresh_interval_ms} of {quote(limit.key)} is "
                        f"above refresh_interval_max_ms ({limits.refresh_interval_max_ms})"
                    )
                check_metadata(limits, limit.metadata)
        elif isinstance(limit, RateLimit):
            _check_name(limit.name, "rate limit name", "limit_key_max_chars",
                        limits.limit_key_max_chars, empty_ok=False)
            _check_name(limit.key, "rate limit key", "limit_key_max_chars",
                        limits.limit_key_max_chars, empty_ok=True)
            # One reservation row per (bucket, job, attempt) and slot: a bucket named twice
            # could reserve two tokens at one time under one key.
            if (limit.name, limit.key) in buckets:
                raise InvalidArgument(
                    f"rate limit {limit.name!r} key {limit.key!r} appears twice"
                )
            buckets.append((limit.name, limit.key))
            if not 1 <= limit.limit <= limits.rate_limit_max:
                raise InvalidArgument(
                    f"rate limit {limit.limit} of {quote(limit.name)} is outside "
                    f"1..rate_limit_max ({limits.rate_limit_max})"
                )
            if not 1 <= limit.per_ms <= limits.rate_period_max_ms:
                raise InvalidArgument(
                    f"rate period {limit.per_ms} ms of {quote(limit.name)} is outside "
                    f"1..rate_period_max_ms ({limits.rate_period_max_ms})"
                )
        else:
            raise InvalidArgument("a limit must be a concurrency, floating or rate limit")


def without_name_bounds(limits: ShardLimits) -> ShardLimits:
    """``limits`` with no length limit on ids, names and keys: the unchecked inputs of old,
    planted only by the simulator's ``unchecked-name-lengths`` mutation."""
    unbounded = 1 << 40
    return replace(
        limits, tenant_max_chars=unbounded, task_group_max_chars=unbounded,
        job_id_max_chars=unbounded, worker_id_max_chars=unbounded, task_id_max_chars=unbounded,
        request_id_max_chars=unbounded, metadata_key_max_chars=unbounded,
        limit_key_max_chars=unbounded,
    )
