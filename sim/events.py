"""The shard's durable events, typed: one dataclass per kind (DESIGN §7).

The shard emits ``(kind, fields)`` through the runtime's event sink once a batch is durable
(``txn.emit``, plus ``shard_opened`` / ``shard_closed`` from the shard's lifecycle);
:func:`parse` turns that into one of the classes below, refusing an unknown kind or field, so a
field renamed in ``silo/`` fails the run instead of silently blinding a checker. Fields a
synthetic test may leave out default to None (or 0); the checkers treat None as "not known".

:data:`IGNORED` lists the kinds no checker handles, on purpose; ``tests/sim/test_events.py``
fails if a kind emitted anywhere in ``silo/`` is neither handled (``Checker._on_<kind>``) nor
listed there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


class UnknownEvent(ValueError):
    """An event kind, or a field of it, that this module does not describe."""


@dataclass(frozen=True, slots=True)
class Event:
    shard: int = 0


@dataclass(frozen=True, slots=True)
class JobEvent(Event):
    tenant: str = ""
    job_id: str = ""


@dataclass(frozen=True, slots=True)
class JobEnqueued(JobEvent):
    task_group: str = ""
    priority: int = 0
    due_ms: int = 0
    retry_count: int | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class StatusChanged(JobEvent):
    old: str | None = None
    new: str = ""
    attempt: int = 0
    at_ms: int = 0
    task_group: str = ""
    priority: int = 0
    due_ms: int | None = None
    where: int | None = None
    limits_left: int | None = None
    mono_ms: int | None = None
    run_attempts: int | None = None


@dataclass(frozen=True, slots=True)
class TaskMoved(JobEvent):
    attempt: int = 0
    due_ms: int = 0
    where: int | None = None
    limits_left: int | None = None
    at_ms: int = 0
    mono_ms: int | None = None
    cause: str | None = None


@dataclass(frozen=True, slots=True)
class TaskLeased(JobEvent):
    task_id: str = ""
    attempt: int = 0
    worker_id: str = ""
    task_group: str = ""
    priority: int = 0
    due_ms: int = 0
    expiry_ms: int = 0
    at_ms: int = 0
    mono_ms: int | None = None


@dataclass(frozen=True, slots=True)
class LeaseExtended(JobEvent):
    task_id: str = ""
    attempt: int = 0
    expiry_ms: int = 0
    at_ms: int = 0
    by_worker_id: str | None = None


@dataclass(frozen=True, slots=True)
class LeaseEnded(JobEvent):
    task_id: str = ""
    attempt: int = 0
    outcome: str = ""
    at_ms: int = 0
    state: str | None = None
    by_worker_id: str | None = None


@dataclass(frozen=True, slots=True)
class LeaseAcked(JobEvent):
    task_id: str = ""
    attempt: int = 0
    at_ms: int = 0


@dataclass(frozen=True, slots=True)
class TaskTooLarge(JobEvent):
    attempt: int = 0
    task_id: str = ""
    size_bytes: int = 0
    max_bytes: int = 0
    at_ms: int = 0


@dataclass(frozen=True, slots=True)
class CancelRequested(JobEvent):
    status: str | None = None
    at_ms: int = 0


@dataclass(frozen=True, slots=True)
class TaskExpedited(JobEvent):
    attempt: int = 0
    old_due_ms: int | None = None
    due_ms: int = 0
    at_ms: int = 0
    mono_ms: int | None = None


@dataclass(frozen=True, slots=True)
class JobDeleted(JobEvent):
    status: str | None = None


@dataclass(frozen=True, slots=True)
class SlotGranted(JobEvent):
    queue: str = ""
    task_id: str = ""
    attempt: int = 0
    holders: int = 0
    max: int = 0
    at_ms: int = 0


@dataclass(frozen=True, slots=True)
class SlotReleased(JobEvent):
    queue: str = ""
    task_id: str = ""
    at_ms: int = 0


@dataclass(frozen=True, slots=True)
class TokenTaken(JobEvent):
    name: str = ""
    key: str = ""
    limit: int = 0
    per_ms: int = 0
    slot_ms: int = 0
    attempt: int = 0
    at_ms: int = 0


@dataclass(frozen=True, slots=True)
class TokenReturned(JobEvent):
    name: str = ""
    key: str = ""
    slot_ms: int = 0
    moved_job_id: str | None = None
    moved_from_ms: int | None = None
    at_ms: int = 0


@dataclass(frozen=True, slots=True)
class RefreshLeased(Event):
    tenant: str = ""
    task_id: str = ""
    queue: str = ""
    worker_id: str = ""
    expiry_ms: int = 0
    at_ms: int = 0


@dataclass(frozen=True, slots=True)
class RefreshEnded(Event):
    tenant: str = ""
    queue: str = ""
    task_id: str = ""
    new_max: int | None = None
    reaped: bool = False
    at_ms: int = 0


@dataclass(frozen=True, slots=True)
class PoisonItem(Event):
    what: str = ""
    error: str = ""
    at_ms: int = 0


@dataclass(frozen=True, slots=True)
class ShardOpened(Event):
    node: str = ""
    at_ms: int | None = None
    mono_ms: int | None = None
    """The node's wall and monotonic readings its stored deadlines were re-based on."""
    timers_to: str | None = None
    """The node's timer frontier (hex key): only timer rows up to it are in its memory (None:
    all of them)."""


@dataclass(frozen=True, slots=True)
class TimersPaged(Event):
    """The node's timer frontier moved from ``before`` to ``after`` (hex keys, None: past the
    last row): rows paged in were re-based on ``(at_ms, mono_ms)``; rows paged out (``after``
    below ``before``) are on disk only again."""

    node: str = ""
    before: str | None = None
    after: str | None = None
    at_ms: int = 0
    mono_ms: int = 0


@dataclass(frozen=True, slots=True)
class ShardClosed(Event):
    node: str = ""


@dataclass(frozen=True, slots=True)
class SplitPhaseRecorded(Event):
    """A node recorded a phase of the split of shard ``parent`` (``shard`` is unused)."""

    parent: int = 0
    phase: str = ""
    left: int = 0
    right: int = 0
    split_hash: int = 0
    start: int = 0
    end: int = 0
    map_version: int = 0
    ranges: list[list[int]] | None = None
    """With ``committed``: the whole committed shard map, ``[id, start, end]`` per shard."""


@dataclass(frozen=True, slots=True)
class SplitCleanup(Event):
    """A split child deleted ``keys`` rows of ``tenants`` (in one durable batch)."""

    parent: int = 0
    start: int = 0
    end: int = 0
    stage: str = ""
    tenants: list[str] | None = None
    keys: int = 0


@dataclass(frozen=True, slots=True)
class SplitCleanupDone(Event):
    parent: int = 0
    deleted: int = 0


KINDS: dict[str, type[Event]] = {
    "job_enqueued": JobEnqueued,
    "status_changed": StatusChanged,
    "task_moved": TaskMoved,
    "task_leased": TaskLeased,
    "lease_extended": LeaseExtended,
    "lease_ended": LeaseEnded,
    "lease_acked": LeaseAcked,
    "task_too_large": TaskTooLarge,
    "cancel_requested": CancelRequested,
    "task_expedited": TaskExpedited,
    "job_deleted": JobDeleted,
    "slot_granted": SlotGranted,
    "slot_released": SlotReleased,
    "token_taken": TokenTaken,
    "token_returned": TokenReturned,
    "refresh_leased": RefreshLeased,
    "refresh_ended": RefreshEnded,
    "poison_item": PoisonItem,
    "shard_opened": ShardOpened,
    "timers_paged": TimersPaged,
    "shard_closed": ShardClosed,
    "split_phase": SplitPhaseRecorded,
    "split_cleanup": SplitCleanup,
    "split_cleanup_done": SplitCleanupDone,
}

IGNORED: dict[str, str] = {
    "lease_acked": "delivery is checked through its effect: an acknowledged lease that expires "
                   "is WORKER_CRASHED, not UNDELIVERED (invariants 4, 8, 14)",
    "refresh_leased": "refresh tasks belong to no job; their end is refresh_ended",
    "token_returned": "the rate-window check counts tokens taken at their reserved times; a "
                      "returned token re-places a job, which task_moved reports",
    "shard_closed": "ownership (invariant 10) is checked on the stores' opens and closes "
                    "(sim.cluster_nodes), not on the shard's events",
    "split_cleanup_done": "the counters it recounted are checked by invariant 12 at the end",
}
"""Kinds no checker handles, each with the reason."""

_FIELDS: dict[type[Event], frozenset[str]] = {
    cls: frozenset(f.name for f in dataclasses.fields(cls)) for cls in KINDS.values()
}


def parse(kind: str, fields: dict[str, Any]) -> Event:
    """The typed event for ``(kind, fields)``; raises :class:`UnknownEvent` for a kind or a
    field this module does not describe."""
    cls = KINDS.get(kind)
    if cls is None:
        raise UnknownEvent(f"unknown event kind {kind!r} (fields {sorted(fields)})")
    unknown = sorted(set(fields) - _FIELDS[cls])
    if unknown:
        raise UnknownEvent(f"event {kind!r} has fields {unknown} that {cls.__name__} lacks")
    return cls(**fields)


__all__ = ["IGNORED", "KINDS", "Event", "JobEvent", "UnknownEvent", "parse"]
