"""The job state machine in silo/shard/transitions.py: one table, pure next-state functions,
an illegal (status, event) pair raises IllegalTransition."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from silo.model import READY, JobState, JobStatus
from silo.shard import transitions as tr
from silo.shard.transitions import (
    LEGAL_TRANSITIONS,
    TRANSITIONS,
    Event,
    IllegalTransition,
    next_status,
)

S = JobStatus
STATUSES: list[JobStatus | None] = [None, *JobStatus]


def _state(status: JobStatus) -> JobState:
    return JobState(
        status, 100, next_attempt_at_ms=150, attempt=3, run_attempts=2,
        task=(3, 150, READY, "t1"), lease_task_id="t0", held=1,
    )


@given(st.sampled_from(STATUSES), st.sampled_from(list(Event)))
def test_every_pair_is_legal_with_a_legal_next_status_or_raises(
    status: JobStatus | None, event: Event
) -> None:
    if (status, event) in TRANSITIONS:
        new = next_status(status, event)
        assert new in JobStatus
        assert new == status or (status, new) in LEGAL_TRANSITIONS
    else:
        with pytest.raises(IllegalTransition):
            next_status(status, event)


@given(st.sampled_from(list(JobStatus)), st.sampled_from(list(Event)))
def test_next_state_functions_follow_the_table(status: JobStatus, event: Event) -> None:
    state = _state(status)
    before = state.copy()
    apply = {
        Event.LEASE: lambda: tr.leased(state, 200, "t1"),
        Event.SUCCEED: lambda: tr.attempt_ended(state, 200, Event.SUCCEED),
        Event.FAIL: lambda: tr.attempt_ended(state, 200, Event.FAIL),
        Event.RETRY: lambda: tr.attempt_ended(state, 200, Event.RETRY),
        Event.RESTART: lambda: tr.restarted(state, 200),
        Event.EXPEDITE: lambda: tr.expedited(state),
        Event.POISON: lambda: tr.poisoned(state, 200),
        Event.UNDELIVERED: lambda: tr.undelivered(state, 200),
        Event.UNSENDABLE: lambda: tr.unsendable(state, 200),
    }
    if event is Event.CANCEL:
        # A running job's cancel ends with its attempt; the operator cancel applies to SCHEDULED.
        fns = [lambda: tr.attempt_ended(state, 200, Event.CANCEL)] if status == S.RUNNING else [
            lambda: tr.cancelled(state, 200)
        ]
    elif event is Event.ENQUEUE:
        with pytest.raises(IllegalTransition):
            next_status(status, event)
        return
    else:
        fns = [apply[event]]
    for fn in fns:
        if (status, event) in TRANSITIONS:
            assert fn().status == TRANSITIONS[(status, event)]
        else:
            with pytest.raises(IllegalTransition):
                fn()
    assert state == before  # pure: the argument is left as it is


def test_illegal_transition_is_an_assertion_error_naming_event_and_status() -> None:
    with pytest.raises(AssertionError, match="illegal transition: lease on SUCCEEDED"):
        tr.leased(_state(S.SUCCEEDED), 1, "t")
    with pytest.raises(IllegalTransition, match="cancel on RUNNING"):
        tr.cancelled(_state(S.RUNNING), 1)
    with pytest.raises(IllegalTransition):
        tr.attempt_ended(_state(S.RUNNING), 1, Event.LEASE)


def test_leased_starts_a_running_attempt() -> None:
    new = tr.leased(_state(S.SCHEDULED), 200, "t1")
    assert (new.status, new.changed_at_ms, new.task, new.next_attempt_at_ms) == (
        S.RUNNING, 200, None, None,
    )
    assert (new.run_attempts, new.lease_task_id, new.attempt, new.held) == (3, "t1", 3, 1)


def test_attempt_ended_drops_the_lease_and_slots() -> None:
    new = tr.attempt_ended(_state(S.RUNNING), 300, Event.RETRY)
    assert (new.status, new.changed_at_ms, new.lease_task_id, new.held) == (
        S.SCHEDULED, 300, None, 0,
    )
    assert new.run_attempts == 2


def test_restart_resets_the_run() -> None:
    new = tr.restarted(_state(S.FAILED), 400)
    assert (new.status, new.changed_at_ms, new.run_attempts, new.held, new.attempt) == (
        S.SCHEDULED, 400, 0, 0, 3,
    )


def test_enqueued_is_scheduled_at_now() -> None:
    new = tr.enqueued(500)
    assert (new.status, new.changed_at_ms, new.attempt) == (S.SCHEDULED, 500, 0)


def test_legal_transitions_are_the_status_changes_of_the_table() -> None:
    assert LEGAL_TRANSITIONS == {
        (None, S.SCHEDULED), (S.SCHEDULED, S.RUNNING), (S.SCHEDULED, S.CANCELLED),
        (S.SCHEDULED, S.FAILED),  # a poison queued task
        (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.FAILED), (S.RUNNING, S.CANCELLED),
        (S.RUNNING, S.SCHEDULED), (S.FAILED, S.SCHEDULED), (S.CANCELLED, S.SCHEDULED),
        (S.SCHEDULED, S.FAILED),  # a task too large for any reply
    }


def test_undelivered_refunds_the_retry_budget_and_counts() -> None:
    new = tr.undelivered(_state(S.RUNNING), 300)
    assert (new.status, new.lease_task_id, new.held) == (S.SCHEDULED, None, 0)
    assert (new.run_attempts, new.undelivered) == (1, 1)
    assert tr.restarted(replace(tr.unsendable(_state(S.SCHEDULED), 1), undelivered=2),
                        2).undelivered == 0
