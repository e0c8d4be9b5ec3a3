"""Pure rules of the job lifecycle (DESIGN §3): which operation is allowed in which state,
which status changes are legal, and when a failed attempt is retried.

Nothing here performs I/O; the shard and the simulator's checkers share these rules.
"""

from __future__ import annotations

from enum import Enum

from silo.errors import FailedPrecondition
from silo.model import JobStatus, RetryPolicy

S = JobStatus


class Operation(Enum):
    CANCEL = "cancel"
    RESTART = "restart"
    EXPEDITE = "expedite"
    DELETE = "delete"
    RESULT = "result"


ALLOWED: dict[Operation, frozenset[JobStatus]] = {
    Operation.CANCEL: frozenset({S.SCHEDULED, S.RUNNING}),
    Operation.RESTART: frozenset({S.FAILED, S.CANCELLED}),
    Operation.EXPEDITE: frozenset({S.SCHEDULED}),
    Operation.DELETE: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    Operation.RESULT: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED}),
}

LEGAL_TRANSITIONS: frozenset[tuple[JobStatus | None, JobStatus]] = frozenset(
    {
        (None, S.SCHEDULED),  # enqueue
        (S.SCHEDULED, S.RUNNING),  # lease
        (S.SCHEDULED, S.CANCELLED),  # cancel before it ran
        (S.RUNNING, S.SUCCEEDED),
        (S.RUNNING, S.FAILED),
        (S.RUNNING, S.CANCELLED),
        (S.RUNNING, S.SCHEDULED),  # retry
        (S.FAILED, S.SCHEDULED),  # restart
        (S.CANCELLED, S.SCHEDULED),  # restart
    }
)


def require(op: Operation, status: JobStatus) -> None:
    """Raise FAILED_PRECONDITION unless ``op`` is allowed on a job in ``status``."""
    if status not in ALLOWED[op]:
        raise FailedPrecondition(f"cannot {op.value} a job that is {status.name}")


def retry_delay_ms(retry: RetryPolicy, run_attempts: int, jitter: float = 1.0) -> int | None:
    """Delay before the next attempt after attempt ``run_attempts`` of this run failed.

    ``None`` when the retry budget is spent: a job with ``retry_count = n`` gets at most n+1
    attempts per (re)start. ``jitter`` is in [1, 2) when the policy randomizes, else 1.
    """
    retries_done = run_attempts - 1
    if retries_done >= retry.retry_count:
        return None
    return retry.backoff_ms(retries_done + 1, jitter if retry.randomize else 1.0)
