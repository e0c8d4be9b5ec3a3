"""Pure rules of the job lifecycle (DESIGN §3): which operation is allowed in which state,
which status changes are legal, and when a failed attempt is retried.

Nothing here performs I/O; the shard and the simulator's checkers share these rules.
"""

from __future__ import annotations

import math
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


def backoff_ms(retry: RetryPolicy, retry_number: int, jitter: float = 1.0) -> int:
    """Delay before retry ``retry_number`` (1 for the first retry):
    ``min(initial_backoff_ms * backoff_factor**(retry_number - 1), max_backoff_ms) * jitter``.

    Never overflows, whatever the policy: the power is computed only while it stays below
    ``max_backoff_ms`` (decided on logarithms); past that point the delay is the maximum.
    """
    initial, ceiling = retry.initial_backoff_ms, retry.max_backoff_ms
    exponent = max(0, retry_number - 1)
    if initial <= 0 or ceiling <= 0:
        base = 0
    elif initial >= ceiling:
        base = ceiling
    elif retry.backoff_factor <= 1.0 or exponent == 0:
        base = initial
    elif exponent * math.log(retry.backoff_factor) >= math.log(ceiling / initial):
        base = ceiling
    else:
        # Here initial * factor**exponent < ceiling (up to rounding): a small, finite float.
        base = min(ceiling, int(initial * retry.backoff_factor**exponent))
    return int(base * jitter)


def retry_delay_ms(retry: RetryPolicy, run_attempts: int, jitter: float = 1.0) -> int | None:
    """Delay before the next attempt after attempt ``run_attempts`` of this run failed.

    ``None`` when the retry budget is spent: a job with ``retry_count = n`` gets at most n+1
    attempts per (re)start. ``jitter`` is in [1, 2) when the policy randomizes, else 1. The
    delay is at most ``2 * max_backoff_ms`` and is computed without overflow (see
    :func:`backoff_ms`).
    """
    retries_done = run_attempts - 1
    if retries_done >= retry.retry_count:
        return None
    return backoff_ms(retry, retries_done + 1, jitter if retry.randomize else 1.0)
