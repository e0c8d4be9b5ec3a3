"""Pure rules of the job lifecycle (DESIGN §3): which operation is allowed in which state,
which status changes are legal, and when a failed attempt is retried.

Nothing here performs I/O; the shard and the simulator's checkers share these rules.
"""

from __future__ import annotations

import math
from enum import Enum

from silo.errors import FailedPrecondition
from silo.model import MAX_UNDELIVERED, JobState, JobStatus, RetryPolicy

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

class Event(Enum):
    """Something that happens to a job and may change its status."""

    ENQUEUE = "enqueue"
    LEASE = "lease"
    SUCCEED = "succeed"
    """The running attempt succeeded."""
    FAIL = "fail"
    """The running attempt failed and the retry budget is spent."""
    RETRY = "retry"
    """The running attempt failed and another attempt is queued."""
    CANCEL = "cancel"
    """A scheduled job is cancelled, or a running attempt ends cancelled."""
    RESTART = "restart"
    EXPEDITE = "expedite"
    """A scheduled job's queued task is made due now (the status stays SCHEDULED)."""
    POISON = "poison"
    """The shard could not process the job's queued task (DESIGN §4 "No poison"): the job
    ends FAILED ``INTERNAL_ERROR`` without running. (A running attempt that cannot be processed
    ends with ``FAIL``.)"""
    UNDELIVERED = "undelivered"
    """The running attempt's lease expired before the worker acknowledged it: the job is
    re-queued without charging its retry budget (DESIGN §4 "Delivery")."""
    UNSENDABLE = "unsendable"
    """The queued task can never fit in a LeaseTasks reply: the job fails unrun."""


TRANSITIONS: dict[tuple[JobStatus | None, Event], JobStatus] = {
    (None, Event.ENQUEUE): S.SCHEDULED,
    (S.SCHEDULED, Event.LEASE): S.RUNNING,
    (S.SCHEDULED, Event.CANCEL): S.CANCELLED,  # cancel before it ran
    (S.SCHEDULED, Event.EXPEDITE): S.SCHEDULED,
    (S.SCHEDULED, Event.POISON): S.FAILED,
    (S.RUNNING, Event.SUCCEED): S.SUCCEEDED,
    (S.RUNNING, Event.FAIL): S.FAILED,
    (S.RUNNING, Event.CANCEL): S.CANCELLED,
    (S.RUNNING, Event.RETRY): S.SCHEDULED,
    (S.RUNNING, Event.UNDELIVERED): S.SCHEDULED,
    (S.SCHEDULED, Event.UNSENDABLE): S.FAILED,
    (S.FAILED, Event.RESTART): S.SCHEDULED,
    (S.CANCELLED, Event.RESTART): S.SCHEDULED,
}
"""The one table of legal (status, event) pairs and the status each leads to. A cancel of a
running job only flags it: its status changes when the attempt ends (``RUNNING, CANCEL``)."""

LEGAL_TRANSITIONS: frozenset[tuple[JobStatus | None, JobStatus]] = frozenset(
    (old, new) for (old, _), new in TRANSITIONS.items() if old != new
)
"""Every status change a ``status_changed`` event may report (the simulator checks them)."""


class IllegalTransition(AssertionError):
    """An event applied to a job in a status the transition table does not allow: a bug."""

    def __init__(self, status: JobStatus | None, event: Event) -> None:
        name = "no job" if status is None else status.name
        super().__init__(f"illegal transition: {event.value} on {name}")
        self.status = status
        self.event = event


def next_status(status: JobStatus | None, event: Event) -> JobStatus:
    """The status ``event`` leads to from ``status``; raises :class:`IllegalTransition`."""
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise IllegalTransition(status, event) from None


# -- next-state functions (pure: each returns a new JobState, the argument is left as it is) --


def enqueued(now_ms: int) -> JobState:
    """A new job's state, before its first task is queued."""
    return JobState(next_status(None, Event.ENQUEUE), now_ms)


def leased(state: JobState, now_ms: int, task_id: str) -> JobState:
    """The job's queued task ``task_id`` is handed to a worker: a new running attempt."""
    new = state.copy()
    new.status = next_status(state.status, Event.LEASE)
    new.changed_at_ms = now_ms
    new.task = None
    new.next_attempt_at_ms = None
    new.run_attempts = state.run_attempts + 1
    new.attempt_rows = state.attempt_rows + 1
    new.lease_task_id = task_id
    return new


def attempt_ended(state: JobState, now_ms: int, event: Event) -> JobState:
    """The running attempt ended (``SUCCEED``, ``FAIL``, ``RETRY`` or ``CANCEL``); its lease and
    slots are gone. After ``RETRY`` the caller queues the next attempt's task."""
    if event not in (Event.SUCCEED, Event.FAIL, Event.RETRY, Event.CANCEL):
        raise IllegalTransition(state.status, event)
    new = state.copy()
    new.status = next_status(state.status, event)
    new.changed_at_ms = now_ms
    new.lease_task_id = None
    new.held = 0
    return new


def undelivered(state: JobState, now_ms: int) -> JobState:
    """The running attempt's lease expired unacknowledged: the lease and slots are gone, the
    attempt does not count against the retry budget (``run_attempts`` was charged at lease)
    and ``undelivered`` counts it. The caller queues the next attempt's task, due now."""
    new = state.copy()
    new.status = next_status(state.status, Event.UNDELIVERED)
    new.changed_at_ms = now_ms
    new.lease_task_id = None
    new.held = 0
    new.run_attempts = max(0, state.run_attempts - 1)
    new.undelivered = state.undelivered + 1
    return new


def released(state: JobState, now_ms: int) -> JobState:
    """The worker handed the running attempt's lease back unstarted: like :func:`undelivered`
    the lease and slots are gone and the retry budget is refunded, but ``undelivered`` is not
    counted (the worker said so; no expiry was needed to find out). The caller queues the next
    attempt's task, due now."""
    new = state.copy()
    new.status = next_status(state.status, Event.UNDELIVERED)
    new.changed_at_ms = now_ms
    new.lease_task_id = None
    new.held = 0
    new.run_attempts = max(0, state.run_attempts - 1)
    return new


def unsendable(state: JobState, now_ms: int) -> JobState:
    """A scheduled job whose task is too large for any LeaseTasks reply ends FAILED (the
    caller removes its queued task and records the attempt)."""
    new = state.copy()
    new.status = next_status(state.status, Event.UNSENDABLE)
    new.changed_at_ms = now_ms
    return new


def cancelled(state: JobState, now_ms: int) -> JobState:
    """A scheduled job is cancelled (the caller removes its queued task)."""
    if state.status != S.SCHEDULED:
        raise IllegalTransition(state.status, Event.CANCEL)
    new = state.copy()
    new.status = next_status(state.status, Event.CANCEL)
    new.changed_at_ms = now_ms
    return new


def restarted(state: JobState, now_ms: int) -> JobState:
    """A FAILED or CANCELLED job gets a new run with a fresh retry budget (the caller queues
    its task)."""
    new = state.copy()
    new.status = next_status(state.status, Event.RESTART)
    new.changed_at_ms = now_ms
    new.run_attempts = 0
    new.undelivered = 0
    new.held = 0
    return new


def poisoned(state: JobState, now_ms: int) -> JobState:
    """A scheduled job whose queued task could not be processed ends FAILED (the caller
    removes the task and records its attempt as failed)."""
    new = state.copy()
    new.status = next_status(state.status, Event.POISON)
    new.changed_at_ms = now_ms
    return new


def expedited(state: JobState) -> JobState:
    """A scheduled job whose queued task the caller makes due now."""
    next_status(state.status, Event.EXPEDITE)
    return state.copy()


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


def run_attempts_max(retry: RetryPolicy) -> int:
    """The most attempts one run of a job can make: ``retry_count + 1`` counted attempts plus
    up to ``MAX_UNDELIVERED`` undelivered ones."""
    return retry.retry_count + 1 + MAX_UNDELIVERED


def restart_attempts_left(state: JobState, retry: RetryPolicy, max_attempts: int) -> None:
    """Raise FAILED_PRECONDITION when a new run of the job (see :func:`run_attempts_max`)
    could take its stored attempts past ``max_attempts`` (``max_attempts_per_job``)."""
    run_max = run_attempts_max(retry)
    if state.attempt_rows + run_max > max_attempts:
        raise FailedPrecondition(
            f"cannot restart: the job has {state.attempt_rows} attempts and a new run may make "
            f"{run_max} more; max_attempts_per_job is {max_attempts}"
        )


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
