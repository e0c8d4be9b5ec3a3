"""The invariants every simulator run checks (DESIGN §7), by number, plus the fencing check.

Every ``Checker.fail`` call, every audit problem and every test assertion names one of these
members instead of a bare number; :data:`DESCRIPTIONS` is what a violation's title prints.
"""

from __future__ import annotations

from enum import IntEnum


class Invariant(IntEnum):
    SINGLE_LEASE = 1
    SLOT_LIMIT = 2
    TRANSITIONS = 3
    ATTEMPTS = 4
    TERMINAL_CLEAN = 5
    NO_LOST_ENQUEUE = 6
    LIVENESS = 7
    REAP_AND_CANCEL = 8
    PRIORITY = 9
    SINGLE_OWNER = 10
    SPLITS = 11
    COUNTERS = 12
    NOT_BEFORE_DUE = 13
    RETRY_BUDGET = 14
    RESULTS_RECORDED = 15
    NO_WAIT_CYCLE = 16
    NO_NODE_DEATH = 17
    FENCING = 100
    """Not numbered in DESIGN §7: a heartbeat or report from a worker that does not own the
    lease never changes state."""
    DELIVERABLE = 101
    """Not numbered in DESIGN §7 (§4 "Delivery"): a LeaseTasks reply fits the transport's
    ``max_message_bytes``, so no committed lease is lost to its own reply."""
    BAD_INPUT = 102
    """Not numbered in DESIGN §7: a request with a value past its limit is refused
    INVALID_ARGUMENT naming the limit, and changes nothing."""
    IDLE_POLLS = 103
    """Not numbered in DESIGN §7: an idle worker does not ask for work in a busy loop
    (:mod:`sim.polls`)."""

    @property
    def label(self) -> str:
        """How a report names it: the DESIGN number, or its name when it has none."""
        return _LABELS.get(self, str(int(self)))


DESCRIPTIONS: dict[Invariant, str] = {
    Invariant.SINGLE_LEASE: "no task leased twice at once; a job never has two live leases",
    Invariant.SLOT_LIMIT: "a concurrency queue never holds more slots than its max; a slot is "
                          "granted once",
    Invariant.TRANSITIONS: "only legal status transitions; RUNNING iff exactly one running "
                           "attempt",
    Invariant.ATTEMPTS: "attempts never leave a terminal state; attempt numbers strictly "
                        "increase",
    Invariant.TERMINAL_CLEAN: "terminal jobs hold no lease and no queued task",
    Invariant.NO_LOST_ENQUEUE: "no acknowledged enqueue is ever lost, nor created twice by one "
                               "call",
    Invariant.LIVENESS: "every job reaches a terminal state once faults stop (liveness)",
    Invariant.REAP_AND_CANCEL: "an expired lease is reaped and retried; a cancel is seen by the "
                               "worker",
    Invariant.PRIORITY: "a lease never skips a due, higher-priority task of its task group",
    Invariant.SINGLE_OWNER: "at most one node serves a shard at any instant, only while it holds "
                            "the ownership key; a shard is closed before its key is released",
    Invariant.SPLITS: "splits lose no job; ranges never overlap and always cover; cleanup "
                      "never deletes an in-range key",
    Invariant.COUNTERS: "counters equal a recount of the data",
    Invariant.NOT_BEFORE_DUE: "no task is leased before it is due (start time, retry backoff, "
                              "rate-limit token); no rate window grants more than its limit",
    Invariant.RETRY_BUDGET: "a job's retry budget is charged only for attempts a worker "
                            "acknowledged",
    Invariant.RESULTS_RECORDED: "every result the worker SDK computed is durably recorded, or "
                                "logged as dropped with a reason",
    Invariant.NO_WAIT_CYCLE: "no wait-for cycle among parked requests; holders are a subset of "
                             "live tasks",
    Invariant.NO_NODE_DEATH: "no node dies from a request or a stored record",
    Invariant.FENCING: "a heartbeat or report from a worker that does not own the lease never "
                       "changes state",
    Invariant.DELIVERABLE: "a LeaseTasks reply fits the transport's max message size (no "
                           "committed lease is lost to an oversized reply)",
    Invariant.BAD_INPUT: "a request with a value past its limit is refused INVALID_ARGUMENT "
                         "naming the limit, and changes nothing",
    Invariant.IDLE_POLLS: "an idle worker does not ask for work in a busy loop",
}
_LABELS: dict[Invariant, str] = {
    Invariant.FENCING: "fencing", Invariant.DELIVERABLE: "deliverable",
    Invariant.BAD_INPUT: "bad-input", Invariant.IDLE_POLLS: "idle-polls",
}

__all__ = ["DESCRIPTIONS", "Invariant"]
