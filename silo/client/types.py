"""What the Python client hands back to applications."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from silo.errors import SiloError
from silo.model import Attempt, JobStatus, Limit, RetryPolicy


def pack(value: Any) -> bytes:
    """Encode an application value as the msgpack bytes silo stores."""
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """Decode msgpack bytes from silo (empty bytes decode to ``None``)."""
    if not data:
        return None
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@dataclass(frozen=True)
class Job:
    """A job as the server last reported it."""

    id: str
    tenant: str
    task_group: str
    payload: Any
    priority: int
    retry: RetryPolicy
    metadata: dict[str, str]
    enqueued_at_ms: int
    start_at_ms: int
    status: JobStatus
    status_changed_at_ms: int
    next_attempt_at_ms: int | None
    attempt_count: int
    cancel_requested: bool
    cancelled_at_ms: int | None
    attempts: tuple[Attempt, ...] | None
    """With ``get(attempts=...)``: a page of the job's attempts, newest first."""
    limits: tuple[Limit, ...] = ()
    waiting_for: str = ""
    """For a scheduled job: what it waits for (start time, a concurrency slot, a rate token)."""
    attempts_total: int = 0
    """How many attempts the server stores for the job (``attempts`` may hold only a page)."""
    undelivered_count: int = 0
    """Leases of this run that expired before the worker acknowledged them (re-queued without
    charging the retry budget; their attempts show state UNDELIVERED)."""
    timeout_ms: int | None = None
    """How long one attempt may run (None: the worker's default)."""

    @property
    def terminal(self) -> bool:
        return self.status.terminal


class JobFailed(SiloError):
    """Raised by :meth:`JobHandle.result` when the job ended FAILED."""

    def __init__(self, job_id: str, error_code: str, error_data: Any) -> None:
        super().__init__(f"job {job_id} failed with {error_code}")
        self.job_id = job_id
        self.error_code = error_code
        self.error_data = error_data


class JobCancelled(SiloError):
    """Raised by :meth:`JobHandle.result` when the job ended CANCELLED."""

    def __init__(self, job_id: str, cancelled_at_ms: int) -> None:
        super().__init__(f"job {job_id} was cancelled")
        self.job_id = job_id
        self.cancelled_at_ms = cancelled_at_ms


class Fail(Exception):
    """Raise from a worker handler to fail the attempt with a chosen code and data."""

    def __init__(self, code: str, data: Any = None) -> None:
        super().__init__(code)
        self.code = code
        self.data = data


class Cancel(Exception):
    """Raise from a worker handler to end the attempt as CANCELLED (e.g. after
    ``ctx.cancelled`` fired)."""
