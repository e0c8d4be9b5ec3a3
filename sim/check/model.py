"""The checker's model of the durable state: jobs, queued tasks, leases, owners, and the
helpers the invariant families share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from silo.model import READY, TIMER
from silo.shard.transitions import LEGAL_TRANSITIONS
from sim import events
from sim.audit import JobKey
from sim.invariants import DESCRIPTIONS, Invariant

INVARIANTS: dict[Invariant, str] = DESCRIPTIONS


TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


LEGAL: frozenset[tuple[str | None, str]] = frozenset(
    (None if a is None else a.name, b.name) for a, b in LEGAL_TRANSITIONS
)


STEP_SETTLE_S = 2.0


"""After a wall-clock step, tasks queued within this many simulated seconds (by batches that
may have read the clock before the step) have no exact monotonic due time."""


REAP_SLACK_S = 5.0


"""How long (simulated seconds) a lease may stay past its monotonic expiry, on a serving node,
unreaped."""


def _host_name(host: Any) -> str:
    return str(getattr(host, "name", host))


def reachable(src: str | None, dst: str) -> bool:
    """True when ``dst`` can follow ``src`` through one or more legal transitions."""
    frontier = [src]
    seen: list[str | None] = []
    while frontier:
        cur = frontier.pop()
        for a, b in sorted(LEGAL, key=str):
            if a == cur and b not in seen:
                if b == dst:
                    return True
                seen.append(b)
                frontier.append(b)
    return False


@dataclass
class Violation:
    invariant: Invariant
    message: str
    evidence: list[str] = field(default_factory=list)
    at: float = 0.0

    @property
    def title(self) -> str:
        return f"invariant {self.invariant.label} ({INVARIANTS.get(self.invariant, '?')})"


@dataclass
class Queued:
    attempt: int
    due_ms: int
    where: int
    """TIMER, READY or PARKED (silo.model)."""
    limits_left: int = 0
    """Limits the task must still acquire before it is ready."""
    due_mono_ms: int | None = None
    """When it is due on the node's monotonic clock (DESIGN §4 "Deadlines"): the stored due
    time relative to the wall time of the operation that queued it, from that operation's
    monotonic reading (``mono_ms`` of the event). None: only wall times are known."""
    exact_due: bool = True
    """Whether :attr:`due_mono_ms` is exactly the node's own deadline (invariant 13 is checked
    only then): False after a crash re-sync, or when the node's wall clock stepped since the
    task was queued (a node re-bases timers on the wall clock when a shard reopens); a timer is
    exact again once its shard opened (``shard_opened``: re-based as the node does)."""
    steps_at: int = -1
    """How many wall-clock steps its node had taken when the task was queued (-1: unset)."""
    gen_at: int = -1
    """The node's generation (process incarnation) when the task was queued: a new process
    re-bases stored due times on its wall clock, so a wall step in between moves them."""
    rebased_mono_ms: int | None = None
    """The node's monotonic reading when it last paged this timer in (re-basing it), and
    :attr:`prior_due_mono_ms` its deadline before that: a lease decided before the page-in (its
    event can arrive later, once its write is durable) saw the prior deadline. Cleared by an
    open, before which this process decided nothing."""
    prior_due_mono_ms: int | None = None

    def due_mono_seen_at(self, mono_ms: int | None) -> int | None:
        """The monotonic deadline the node had indexed at its reading ``mono_ms``: the prior
        one for a decision taken before the last page-in. (A decision in the same millisecond
        is taken to follow it: a shard pages timers in as it opens, then leases.)"""
        if (mono_ms is not None and self.rebased_mono_ms is not None
                and mono_ms < self.rebased_mono_ms):
            return self.prior_due_mono_ms
        return self.due_mono_ms

    def leasable(self, at_ms: int, mono_ms: int | None = None) -> bool:
        """Could a lease at ``at_ms`` (monotonic ``mono_ms``) hand this task out? Ready tasks
        can; a due timer can only when it has no limit left to acquire (the lease promotes due
        timers first); a parked request, or a timer that must still acquire a limit, cannot.
        Timers fall due by the monotonic clock when both readings are known."""
        if self.where == READY:
            return True
        if self.where != TIMER or self.limits_left != 0:
            return False
        due_mono = self.due_mono_seen_at(mono_ms)
        if mono_ms is not None and due_mono is not None:
            return due_mono <= mono_ms
        return self.due_ms <= at_ms


def _queued(f: events.StatusChanged | events.TaskMoved, attempt: int) -> Queued:
    where = f.where
    if where is None:  # an event from before ``where`` existed
        where = READY if f.due_ms <= f.at_ms else TIMER
    return Queued(attempt, f.due_ms, where, f.limits_left or 0, _due_mono(f))


def _due_mono(f: events.StatusChanged | events.TaskMoved | events.TaskLeased) -> int | None:
    """The monotonic due time of the task an event queued (see :attr:`Queued.due_mono_ms`)."""
    if f.mono_ms is None or f.due_ms is None:
        return None
    return f.mono_ms + f.due_ms - f.at_ms


@dataclass
class LeaseModel:
    task_id: str
    attempt: int
    worker_id: str
    expiry_ms: int
    host: Any
    deadline_s: float
    """When the lease expires on the node's monotonic clock (simulated seconds, DESIGN §4
    "Deadlines"): the stored wall expiry taken relative to the wall time it was written at (or,
    after a restart, the node's wall time when it re-based its leases)."""
    overdue_since: float | None = None
    gen: int | None = None
    """The node's generation when :attr:`deadline_s` was last set from an event or re-based on
    its shard's open (None: re-synced after a crash and not re-based yet, so the deadline is
    only approximate)."""
    steps: int = 0
    """Wall-clock steps of its node when :attr:`deadline_s` was last set."""


EARLY_REAP_SLACK_S = 0.5
"""How much earlier than the model's monotonic deadline a lease may be reaped: the model reads
the time when the event arrives, after the commit's write latency."""


@dataclass
class JobModel:
    tenant: str
    job_id: str
    host: Any
    shard: int
    task_group: str
    priority: int
    status: str | None = None
    attempt: int = 0
    max_leased: int = 0
    task: Queued | None = None
    lease: LeaseModel | None = None
    attempts: dict[int, str] = field(default_factory=dict)
    cancel_flag: bool = False
    deleted: bool = False
    last_task_id: str | None = None
    retry_count: int | None = None
    run_attempts: int = 0
    undelivered: int = 0
    """Undelivered attempts since the last (re)start (they do not count in run_attempts)."""
    ended: str | None = None  # state of the attempt that just ended, until the status follows
    history: list[str] = field(default_factory=list)
    enqueued_at: float = 0.0  # simulated seconds
    terminal_at: float | None = None

    @property
    def key(self) -> JobKey:
        return (self.tenant, self.job_id)

    def note(self, text: str) -> None:
        if len(self.history) < 40:
            self.history.append(text)

    def describe(self) -> str:
        return (f"job {self.key} status={self.status} attempt={self.attempt} task={self.task} "
                f"lease={None if self.lease is None else self.lease.task_id} "
                f"attempts={self.attempts} cancel_flag={self.cancel_flag}")


@dataclass(frozen=True)
class LeaseOwner:
    """Who a task id was leased to, and the job attempt it runs (for fencing checks and for
    actors that replay other workers' task ids)."""

    worker_id: str
    shard: int
    tenant: str
    job_id: str
    attempt: int


Probe = Callable[[Any, int, bytes], bytes | None]


"""``probe(host, shard, key)``: the durable value of ``key`` on that shard (None: absent)."""
