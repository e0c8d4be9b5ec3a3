"""The records silo stores and hands out, and their msgpack encoding.

Every record encodes as a msgpack array whose first element is a format version, so a later
release can read what an earlier one wrote. A record that cannot be decoded raises
:class:`CorruptRecord` naming its key: nothing is ever silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack

DEFAULT_TENANT = "default"
DEFAULT_PRIORITY = 50


class CorruptRecord(Exception):
    """A stored record could not be decoded."""

    def __init__(self, key: bytes, reason: str) -> None:
        super().__init__(f"corrupt record at key {key.hex()}: {reason}")
        self.key = key


class JobStatus(IntEnum):
    """A job's lifecycle state (DESIGN §3)."""

    SCHEDULED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def terminal(self) -> bool:
        return self >= JobStatus.SUCCEEDED


TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class AttemptState(IntEnum):
    RUNNING = 1
    SUCCEEDED = 2
    FAILED = 3
    CANCELLED = 4
    UNDELIVERED = 5
    """The lease expired before the worker acknowledged it: the job was re-queued without
    charging its retry budget (DESIGN §4 "Delivery")."""


TIMER = 0
READY = 1
PARKED = 2
"""Where a queued task sits (``JobState.task[2]``)."""

WORKER_CRASHED = "WORKER_CRASHED"
"""The failure code recorded when a lease expires without a report."""
INTERNAL_ERROR = "INTERNAL_ERROR"
"""The failure code of an attempt (or job) ended because the shard hit an unexpected error on
it (a poison item: DESIGN §4 "No poison")."""
"""The failure code recorded when an acknowledged lease expires without a report."""

RELEASED = "RELEASED"
"""The error code on the UNDELIVERED attempt row of a lease its worker handed back unstarted
(and on the FAILED row when the job could make no further attempt)."""

TASK_TOO_LARGE = "TASK_TOO_LARGE"
"""The failure code of a job whose task alone does not fit in a LeaseTasks reply."""

MAX_UNDELIVERED = 3
"""Unacknowledged lease expiries a job may have per (re)start before the next one counts as a
``WORKER_CRASHED`` failure (DESIGN §4 "Delivery")."""


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _decode_list(key: bytes, data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:
        raise CorruptRecord(key, f"not msgpack ({exc})") from exc


def _unpack(key: bytes, data: bytes, version: int, arity: int, optional: int = 0) -> list[Any]:
    """The fields of a record; the last ``optional`` of its ``arity`` fields may be missing
    (records written before those fields existed), and come back as ``None``."""
    obj = _decode_list(key, data)
    if (not isinstance(obj, list) or not arity - optional + 1 <= len(obj) <= arity + 1
            or type(obj[0]) is not int or obj[0] != version):
        raise CorruptRecord(key, f"expected a version-{version} record of {arity} fields")
    return obj[1:] + [None] * (arity + 1 - len(obj))


def _unpack_versioned(
    key: bytes, data: bytes, arities: dict[int, int]
) -> tuple[int, list[Any]]:
    """Decode a record written in any of the format versions ``arities`` maps to their field
    counts; returns ``(version, fields)``."""
    obj = _decode_list(key, data)
    if (
        not isinstance(obj, list)
        or not obj
        or type(obj[0]) is not int
        or arities.get(obj[0]) != len(obj) - 1
    ):
        wanted = " or ".join(f"version-{v} record of {n} fields" for v, n in arities.items())
        raise CorruptRecord(key, f"expected a {wanted}")
    return obj[0], obj[1:]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most ``retry_count`` retries per (re)start; retry k waits
    ``min(initial_backoff_ms * backoff_factor**(k-1), max_backoff_ms)``, times a jitter in
    [1, 2) when ``randomize`` is set (computed by :func:`silo.shard.transitions.backoff_ms`)."""

    retry_count: int = 0
    initial_backoff_ms: int = 1000
    max_backoff_ms: int = 60_000
    backoff_factor: float = 2.0
    randomize: bool = False

    def to_list(self) -> list[Any]:
        return [
            self.retry_count,
            self.initial_backoff_ms,
            self.max_backoff_ms,
            self.backoff_factor,
            self.randomize,
        ]

    @classmethod
    def from_list(cls, data: list[Any]) -> RetryPolicy:
        return cls(int(data[0]), int(data[1]), int(data[2]), float(data[3]), bool(data[4]))


@dataclass(frozen=True, slots=True)
class ConcurrencyLimit:
    """At most ``max_concurrency`` tasks of the tenant's queue ``key`` hold a slot at once."""

    key: str
    max_concurrency: int


@dataclass(frozen=True, slots=True)
class FloatingConcurrencyLimit:
    """A concurrency limit whose max is refreshed by a worker every ``refresh_interval_ms``
    while the queue has work (starting from ``default_max_concurrency``)."""

    key: str
    default_max_concurrency: int
    refresh_interval_ms: int
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` tokens granted in any window of ``per_ms`` for the tenant's key (name,
    key): a sliding window (silo.shard.reservations)."""

    name: str
    key: str
    limit: int
    per_ms: int


Limit = ConcurrencyLimit | FloatingConcurrencyLimit | RateLimit


def limit_to_list(limit: Limit) -> list[Any]:
    if isinstance(limit, ConcurrencyLimit):
        return ["c", limit.key, limit.max_concurrency]
    if isinstance(limit, FloatingConcurrencyLimit):
        return [
            "f", limit.key, limit.default_max_concurrency, limit.refresh_interval_ms,
            sorted(limit.metadata.items()),
        ]
    return ["r", limit.name, limit.key, limit.limit, limit.per_ms]


def limit_from_list(data: list[Any]) -> Limit:
    kind = data[0]
    if kind == "c":
        return ConcurrencyLimit(str(data[1]), int(data[2]))
    if kind == "f":
        return FloatingConcurrencyLimit(
            str(data[1]), int(data[2]), int(data[3]), {str(k): str(v) for k, v in data[4]}
        )
    if kind == "r":
        return RateLimit(str(data[1]), str(data[2]), int(data[3]), int(data[4]))
    raise ValueError(f"unknown limit kind {kind!r}")


def concurrency_key(limit: Limit) -> str | None:
    """The queue a limit holds a slot in (None for a rate limit)."""
    if isinstance(limit, ConcurrencyLimit | FloatingConcurrencyLimit):
        return limit.key
    return None


@dataclass(frozen=True, slots=True)
class JobInfo:
    """The immutable part of a job, written once at enqueue."""

    tenant: str
    job_id: str
    task_group: str
    payload: bytes
    priority: int = DEFAULT_PRIORITY
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    metadata: dict[str, str] = field(default_factory=dict)
    enqueued_at_ms: int = 0
    start_at_ms: int = 0
    limits: tuple[Limit, ...] = ()
    timeout_ms: int = 0
    """How long one attempt may run (0: the worker's default)."""

    def encode(self) -> bytes:
        """Version 1; ``timeout_ms`` is appended only when set, so a job without one is stored
        as before that field existed (and older code can read it)."""
        fields = [
            1,
            self.tenant,
            self.job_id,
            self.task_group,
            self.payload,
            self.priority,
            self.retry.to_list(),
            sorted(self.metadata.items()),
            self.enqueued_at_ms,
            self.start_at_ms,
            [limit_to_list(limit) for limit in self.limits],
        ]
        if self.timeout_ms:
            fields.append(self.timeout_ms)
        return _pack(fields)

    @classmethod
    def decode(cls, key: bytes, data: bytes) -> JobInfo:
        f = _unpack(key, data, 1, 11, optional=1)
        try:
            return cls(
                f[0], f[1], f[2], f[3], f[4], RetryPolicy.from_list(f[5]),
                {k: v for k, v in f[6]}, f[7], f[8], tuple(limit_from_list(x) for x in f[9]),
                _positive_or_absent(f[10]),
            )
        except (TypeError, ValueError, IndexError, KeyError, AttributeError,
                OverflowError) as exc:
            raise CorruptRecord(key, f"bad job record ({exc})") from exc


def _positive_or_absent(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


@dataclass(slots=True)
class JobState:
    """The mutable part of a job.

    ``attempt`` is the highest attempt number ever allocated (0: none); ``run_attempts`` counts
    the attempts handed out since the last (re)start. ``task`` is the job's queued task, if any:
    ``(attempt, due_ms, where, task_id)`` where ``where`` is :data:`TIMER` (waiting for its
    time, or for a rate-limit token it has reserved), :data:`READY` (in the ready queue) or
    :data:`PARKED` (a request waiting for a concurrency slot). ``held`` counts the job's limits
    (a prefix of ``JobInfo.limits``) acquired by the queued or running attempt: a parked task
    waits on ``limits[held]``. ``lease_task_id`` is the task id of the running attempt.
    ``undelivered`` counts the leases of this run that expired unacknowledged (they do not
    count in ``run_attempts``); a restart resets it.
    ``attempt_rows`` counts the job's stored attempt rows (one per lease, over every run); it is
    bounded by ``max_attempts_per_job``.
    """

    status: JobStatus
    changed_at_ms: int
    next_attempt_at_ms: int | None = None
    attempt: int = 0
    run_attempts: int = 0
    task: tuple[int, int, int, str] | None = None
    lease_task_id: str | None = None
    held: int = 0
    undelivered: int = 0
    attempt_rows: int = 0

    def encode(self) -> bytes:
        return _pack(
            [
                3,
                int(self.status),
                self.changed_at_ms,
                self.next_attempt_at_ms,
                self.attempt,
                self.run_attempts,
                list(self.task) if self.task is not None else None,
                self.lease_task_id,
                self.held,
                self.undelivered,
                self.attempt_rows,
            ]
        )

    @classmethod
    def decode(cls, key: bytes, data: bytes) -> JobState:
        """Reads version 3, version 2 (written before ``attempt_rows`` existed) and version 1
        (before ``undelivered`` too: 0). A record without ``attempt_rows`` takes ``attempt``,
        an upper bound."""
        _, f = _unpack_versioned(key, data, {3: 10, 2: 9, 1: 8})
        try:
            t = f[5]
            task = (int(t[0]), int(t[1]), int(t[2]), str(t[3])) if t is not None else None
            undelivered = int(f[8]) if len(f) > 8 else 0
            rows = int(f[9]) if len(f) > 9 else int(f[3])
            return cls(JobStatus(f[0]), f[1], f[2], f[3], f[4], task, f[6], int(f[7]),
                       undelivered, rows)
        except (TypeError, ValueError, IndexError, KeyError, OverflowError) as exc:
            raise CorruptRecord(key, f"bad status record ({exc})") from exc

    def copy(self) -> JobState:
        return JobState(
            self.status,
            self.changed_at_ms,
            self.next_attempt_at_ms,
            self.attempt,
            self.run_attempts,
            self.task,
            self.lease_task_id,
            self.held,
            self.undelivered,
            self.attempt_rows,
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One hand-out of a job to a worker and how it ended."""

    attempt: int
    task_id: str
    state: AttemptState
    worker_id: str
    started_at_ms: int
    ended_at_ms: int | None = None
    result: bytes | None = None
    error_code: str | None = None
    error_data: bytes | None = None

    def encode(self) -> bytes:
        return _pack(
            [
                1,
                self.attempt,
                self.task_id,
                int(self.state),
                self.worker_id,
                self.started_at_ms,
                self.ended_at_ms,
                self.result,
                self.error_code,
                self.error_data,
            ]
        )

    @classmethod
    def decode(cls, key: bytes, data: bytes) -> Attempt:
        f = _unpack(key, data, 1, 9)
        try:
            return cls(f[0], f[1], AttemptState(f[2]), f[3], f[4], f[5], f[6], f[7], f[8])
        except (TypeError, ValueError) as exc:
            raise CorruptRecord(key, f"bad attempt record ({exc})") from exc


@dataclass(frozen=True, slots=True)
class Task:
    """A queued hand-out of a job: sits in the timer index until due, then in the ready queue
    (or parked on a concurrency queue).

    A task with ``attempt == 0`` is a floating-limit refresh task: ``job_id`` then names the
    concurrency queue whose max a worker is asked to refresh.
    """

    task_id: str
    tenant: str
    job_id: str
    attempt: int
    task_group: str
    priority: int
    due_ms: int

    def encode(self) -> bytes:
        return _pack(
            [
                1,
                self.task_id,
                self.tenant,
                self.job_id,
                self.attempt,
                self.task_group,
                self.priority,
                self.due_ms,
            ]
        )

    @classmethod
    def decode(cls, key: bytes, data: bytes) -> Task:
        f = _unpack(key, data, 1, 7)
        return cls(*f)

    @property
    def is_refresh(self) -> bool:
        return self.attempt == 0


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's claim on a task until ``expiry_ms`` (``attempt == 0``: a refresh task).

    ``acked`` is False from the commit of the lease until the worker acknowledges it (a
    TaskAck on a later LeaseTasks, a heartbeat or a report): an unacknowledged lease that
    expires was never delivered (DESIGN §4 "Delivery").
    """

    task_id: str
    tenant: str
    job_id: str
    attempt: int
    task_group: str
    worker_id: str
    leased_at_ms: int
    expiry_ms: int
    acked: bool = True

    def encode(self) -> bytes:
        return _pack(
            [
                2,
                self.task_id,
                self.tenant,
                self.job_id,
                self.attempt,
                self.task_group,
                self.worker_id,
                self.leased_at_ms,
                self.expiry_ms,
                self.acked,
            ]
        )

    @classmethod
    def decode(cls, key: bytes, data: bytes) -> Lease:
        """Reads version 2 and version 1 (written before acknowledgements: counts as acked)."""
        _, f = _unpack_versioned(key, data, {2: 9, 1: 8})
        try:
            acked = bool(f[8]) if len(f) > 8 else True
            return cls(str(f[0]), str(f[1]), str(f[2]), int(f[3]), str(f[4]), str(f[5]),
                       int(f[6]), int(f[7]), acked)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CorruptRecord(key, f"bad lease record ({exc})") from exc

    @property
    def is_refresh(self) -> bool:
        return self.attempt == 0


@dataclass(frozen=True, slots=True)
class LeasedTask:
    """What a worker receives for each task it leases."""

    task_id: str
    tenant: str
    job_id: str
    attempt: int
    task_group: str
    payload: bytes
    priority: int
    metadata: dict[str, str]
    lease_expiry_ms: int
    refresh: RefreshRequest | None = None
    timeout_ms: int = 0
    """The job's attempt timeout (0: the worker's default)."""


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """What a worker needs to compute a floating limit's new max."""

    queue: str
    current_max: int
    metadata: dict[str, str]


@dataclass(slots=True)
class QueueState:
    """A concurrency queue's current max and, for floating limits, its refresh schedule."""

    max_concurrency: int
    floating: bool = False
    default_max: int = 0
    refresh_interval_ms: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    task_group: str = ""
    next_refresh_ms: int = 0
    backoff_ms: int = 0
    refresh_task_id: str | None = None

    def encode(self) -> bytes:
        return _pack(
            [
                1, self.max_concurrency, self.floating, self.default_max,
                self.refresh_interval_ms, sorted(self.metadata.items()), self.task_group,
                self.next_refresh_ms, self.backoff_ms, self.refresh_task_id,
            ]
        )

    @classmethod
    def decode(cls, key: bytes, data: bytes) -> QueueState:
        f = _unpack(key, data, 1, 9)
        try:
            return cls(int(f[0]), bool(f[1]), int(f[2]), int(f[3]), {k: v for k, v in f[4]},
                       str(f[5]), int(f[6]), int(f[7]), f[8])
        except (TypeError, ValueError) as exc:
            raise CorruptRecord(key, f"bad queue record ({exc})") from exc

    def copy(self) -> QueueState:
        return QueueState(
            self.max_concurrency, self.floating, self.default_max, self.refresh_interval_ms,
            dict(self.metadata), self.task_group, self.next_refresh_ms, self.backoff_ms,
            self.refresh_task_id,
        )


@dataclass(frozen=True, slots=True)
class RateBucket:
    """A token bucket of earlier versions (no longer written; its row is deleted once refilled):
    ``tokens`` (may be negative: reserved ahead) as of ``updated_ms``.

    ``full_at_ms`` is when the bucket will have refilled to its limit (None in records written
    before it was kept): from then on it is indistinguishable from no bucket at all, and its row
    is deleted."""

    tokens: float
    updated_ms: int
    full_at_ms: int | None = None

    def encode(self) -> bytes:
        return _pack([2, self.tokens, self.updated_ms, self.full_at_ms])

    @classmethod
    def decode(cls, key: bytes, data: bytes) -> RateBucket:
        try:
            f = _unpack(key, data, 2, 3)
        except CorruptRecord:
            f = [*_unpack(key, data, 1, 2), None]
        try:
            return cls(float(f[0]), int(f[1]), None if f[2] is None else int(f[2]))
        except (TypeError, ValueError) as exc:
            raise CorruptRecord(key, f"bad rate bucket record ({exc})") from exc


@dataclass(frozen=True, slots=True)
class RateReservation:
    """The value of a rate reservation row: the limit of the job that reserved it (the row
    matters for ``per_ms`` after its slot)."""

    limit: int
    per_ms: int

    def encode(self) -> bytes:
        return _pack([1, self.limit, self.per_ms])

    @classmethod
    def decode(cls, key: bytes, data: bytes) -> RateReservation:
        f = _unpack(key, data, 1, 2)
        try:
            return cls(int(f[0]), int(f[1]))
        except (TypeError, ValueError) as exc:
            raise CorruptRecord(key, f"bad rate reservation record ({exc})") from exc


@dataclass(frozen=True, slots=True)
class Success:
    result: bytes = b""


@dataclass(frozen=True, slots=True)
class Failure:
    code: str
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Cancelled:
    pass


@dataclass(frozen=True, slots=True)
class Released:
    """The worker hands an unstarted lease back: not an attempt (DESIGN §4, delivery). The
    attempt row ends UNDELIVERED with error code :data:`RELEASED` and the job is re-queued at
    once with its retry budget intact (unless it was cancelled, or has made every attempt it
    may ever make)."""


Outcome = Success | Failure | Cancelled | Released


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as the API shows it: immutable info, current state and optionally its attempts."""

    info: JobInfo
    state: JobState
    cancelled_at_ms: int | None
    attempts: tuple[Attempt, ...] | None = None
    waiting_for: str = ""
    """What a scheduled job waits for (its start time, a concurrency slot, a rate token...)."""
    attempts_total: int = 0
    """How many attempt rows the job has (``attempts`` may hold only a page of them)."""


@dataclass(frozen=True, slots=True)
class JobResult:
    """The outcome of a terminal job."""

    status: JobStatus
    result: bytes | None = None
    error_code: str | None = None
    error_data: bytes | None = None
    cancelled_at_ms: int | None = None


def encode_int(value: int) -> bytes:
    return _pack(value)


def decode_int(key: bytes, data: bytes) -> int:
    try:
        value = msgpack.unpackb(data)
    except Exception as exc:
        raise CorruptRecord(key, f"not msgpack ({exc})") from exc
    if not isinstance(value, int):
        raise CorruptRecord(key, "expected an integer")
    return value


@dataclass(frozen=True, slots=True)
class NewJob:
    """A request to enqueue one job. ``job_id=None`` lets the shard choose one;
    ``start_at_ms=0`` means now."""

    task_group: str
    payload: bytes = b""
    tenant: str = DEFAULT_TENANT
    job_id: str | None = None
    priority: int = DEFAULT_PRIORITY
    start_at_ms: int = 0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    metadata: dict[str, str] = field(default_factory=dict)
    limits: tuple[Limit, ...] = ()
    timeout_ms: int = 0
    """How long one attempt may run (0: the worker's default)."""


ENQUEUE_HELD_BACK = "not written: another job in the batch was refused"
"""The message of an ABORTED :class:`EnqueueResult`: the job was fine, the batch was not."""

ENQUEUE_DELETED_SINCE = "not written again: created by an earlier try of this call, deleted since"
"""The message of an OK ``existed`` ``deleted`` :class:`EnqueueResult` on the wire."""


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """How one job of an enqueue fared: ``error`` None is OK (written now, or ``existed``: an
    identical job, same request fingerprint, was already stored under the id). The enqueue is
    atomic: when any job is refused none is written, and the jobs that were only held back
    carry an ABORTED error saying so."""

    job_id: str
    error: Exception | None = None
    """A :class:`silo.errors.SiloError` (typed loosely: the model does not import errors)."""
    existed: bool = False
    deleted: bool = False
    """With ``existed``: the identical job was stored by an earlier try of this call (same
    request id; its answer was lost) and has been deleted since; nothing is written again."""


FINGERPRINT_BYTES = 16
"""The length of a request fingerprint (xxh3-128; :mod:`silo.shard.fingerprint`)."""


def _check_fingerprint_fields(key: bytes, fingerprint: Any, request_id: Any) -> None:
    if not (fingerprint is None or isinstance(fingerprint, bytes)) or not isinstance(
        request_id, str
    ):
        raise CorruptRecord(key, "expected a fingerprint and a request id")


@dataclass(frozen=True, slots=True)
class JobFingerprint:
    """What the shard keeps beside each job (table ``0x10``): the request fingerprint it was
    enqueued with, so a re-sent identical job is told from a different one, and the request
    id of the enqueue call that created it ("" when that call carried none), which its delete
    carries into the :class:`AttemptHighWater` row.

    Version 2 is ``[2, fingerprint, request_id]``; version 1 (written before request ids) is
    the bare 16-byte fingerprint and decodes with ``request_id`` "" (a version-2 record is
    never 16 bytes long, so the two cannot be confused).
    """

    fingerprint: bytes
    request_id: str = ""

    def encode(self) -> bytes:
        return _pack([2, self.fingerprint, self.request_id])

    @classmethod
    def decode(cls, key: bytes, data: bytes) -> JobFingerprint:
        if len(data) == FINGERPRINT_BYTES:
            return cls(bytes(data))
        _, (fingerprint, request_id) = _unpack_versioned(key, data, {2: 2})
        if fingerprint is None:
            raise CorruptRecord(key, "expected a fingerprint")
        _check_fingerprint_fields(key, fingerprint, request_id)
        return cls(fingerprint, request_id)


@dataclass(frozen=True, slots=True)
class AttemptHighWater:
    """What a deleted job leaves under its id (table ``0x0F``): the highest attempt number it
    used, so a job that reuses the id numbers its attempts above it; and its request
    fingerprint and the request id of the call that created it, so a later try of *that* call
    (same request id, same fingerprint) is recognised after the delete and not created again.

    Version 3 is ``[3, attempt, fingerprint, request_id]``; version 2 ``[2, attempt,
    fingerprint]`` decodes with ``request_id`` ""; version 1 (written before fingerprints were
    kept) is a bare integer and decodes with ``fingerprint`` None and ``request_id`` "".
    """

    attempt: int
    fingerprint: bytes | None = None
    request_id: str = ""

    def encode(self) -> bytes:
        return _pack([3, self.attempt, self.fingerprint, self.request_id])

    @classmethod
    def decode(cls, key: bytes, data: bytes) -> AttemptHighWater:
        obj = _decode_list(key, data)
        if type(obj) is int:
            return cls(obj)
        version, fields = _unpack_versioned(key, data, {2: 2, 3: 3})
        attempt, fingerprint = fields[0], fields[1]
        request_id = fields[2] if version == 3 else ""
        if type(attempt) is not int:
            raise CorruptRecord(key, "expected an attempt number")
        _check_fingerprint_fields(key, fingerprint, request_id)
        return cls(attempt, fingerprint, request_id)


@dataclass(frozen=True, slots=True)
class OutcomeReport:
    """A worker's report of how the attempt behind ``task_id`` ended.

    ``tenant``, ``job_id`` and ``attempt`` identify the attempt once its lease is gone, so that
    a repeated report can be recognised and answered idempotently.
    """

    worker_id: str
    task_id: str
    outcome: Outcome
    tenant: str | None = None
    job_id: str | None = None
    attempt: int | None = None
