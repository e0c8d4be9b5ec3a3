"""The checker's state, reporting and event dispatch; the queue model shared by invariants 9
and 13."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from silo.model import TIMER, Task
from silo.shard.tables import ready_key, timer_key
from sim import events
from sim.audit import JobKey
from sim.check.model import (
    STEP_SETTLE_S,
    JobModel,
    LeaseOwner,
    Probe,
    Queued,
    Violation,
    _host_name,
)
from sim.invariants import Invariant


class CheckerBase:
    """The checker's state, reporting and event dispatch; the queue model shared by invariants 9 and
    13."""

    def __init__(
        self,
        report: Callable[[Violation], None],
        *,
        probe: Probe | None = None,
        now: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._report = report
        self._probe = probe
        self._now = now
        self.jobs: dict[JobKey, JobModel] = {}
        self.live_leases: dict[str, JobKey] = {}
        self.acked: dict[JobKey, float] = {}
        self.creators: dict[JobKey, set[str]] = {}
        """The request ids of the enqueue calls that created each job id (``job_enqueued``
        events; a call without a request id is not recorded)."""
        self.resent_deleted = 0
        """Later tries answered OK existed-deleted (the job is not created twice)."""
        self.queues: dict[tuple[str, int, str], dict[JobKey, JobModel]] = {}
        self.failed: Violation | None = None
        self.strict_acks = True
        """Flag an acknowledgement that arrives before the enqueue's durable event (off: only
        losses across crashes and at the end are caught)."""
        self.events = 0
        self.holders: dict[tuple[str, int, str, str], dict[str, str]] = {}
        """(node, shard, tenant, queue) -> the task ids holding a slot (-> job id)."""
        self.max_seen: dict[tuple[str, int, str, str], set[int]] = {}
        self.peak_holders: dict[tuple[str, int, str, str], int] = {}
        self.grants = 0
        self.grants_during_backoff = 0
        self.moves: dict[tuple[JobKey, int], int] = {}
        """How often each queued attempt moved (timer/parked/ready) without a status change."""
        self.refreshes = {"ok": 0, "failed": 0, "reaped": 0}
        """Grants while another job of the tenant waited out a retry backoff without a slot."""
        self.releases = 0
        self.cancels_seen_by_heartbeat = 0
        self.reaped = 0
        self.tokens: dict[tuple[int, str, str, str], list[int]] = {}
        """(shard, tenant, name, key) -> the times of the recent tokens taken, in order."""
        self.undelivered = 0
        self.released = 0
        """Leases handed back unstarted by their worker (a stopping worker's prefetched ones)."""
        self.started_handlers: set[str] = set()
        """Task ids whose handler a worker started (a released lease must not be one)."""
        self.sdk_workers: set[str] = set()
        """Ids of the SDK workers (their handler starts are reported; raw actors' are not)."""
        self.clock_steps: dict[str, int] = {}
        """Node name -> wall-clock steps so far."""
        self.last_step_s: dict[str, float] = {}
        self.leased_early_checked = 0
        """Leases of a queued task whose due time was checked exactly (invariant 13)."""
        self.computed: dict[str, tuple[str, str]] = {}
        """Task id -> (worker id, attempt state) of each outcome a worker's handler produced
        while its lease was live (invariant 15)."""
        self.dropped: dict[str, str] = {}
        """Task id -> the reason the worker SDK gave for dropping its report."""
        self.lost_with_worker = 0
        """Computed outcomes whose worker process crashed before it settled their report."""
        self.task_owner: dict[str, LeaseOwner] = {}
        """Every task id ever leased -> who owns it (a task id is leased once, to one worker)."""
        self.fenced = 0
        """Heartbeats and reports from a worker that does not own the lease, refused."""
        self.timer_frontier: dict[tuple[str, int], bytes | None] = {}
        """(node, shard) -> the node's timer frontier (``shard_opened``, ``timers_paged``):
        its timer rows beyond it are on disk only (absent: all in memory)."""
        self.timer_pages = 0
        """Page-ins and page-outs of timer rows seen."""

    def fail(self, invariant: Invariant, message: str, *evidence: str) -> None:
        if self.failed is not None:
            return
        self.failed = Violation(invariant, message, [e for e in evidence if e], self._now())
        self._report(self.failed)

    def _job(self, fields: events.JobEvent, kind: str) -> JobModel | None:
        j = self.jobs.get((fields.tenant, fields.job_id))
        if j is None or j.deleted:
            self.fail(Invariant.TRANSITIONS,
                      f"{kind} for unknown job {(fields.tenant, fields.job_id)}",
                      f"event: {kind} {fields}")
            return None
        return j

    def on_clock_step(self, host: Any) -> None:
        """The wall clock of ``host`` stepped: due times of its queued tasks, and of tasks
        queued by batches in flight, are no longer exact on its monotonic clock."""
        name = _host_name(host)
        self.clock_steps[name] = self.clock_steps.get(name, 0) + 1
        self.last_step_s[name] = self._now()

    def _on_shard_opened(self, host: Any, f: events.ShardOpened) -> None:
        """A shard opened (its node started, or took it over): the node indexed every stored
        timer and lease expiry on its monotonic clock from the wall clock read at the end of
        its load (DESIGN §4 "Deadlines": re-based when a shard opens; the event carries those
        readings). Re-base the model's deadlines of that shard the same way: a wall step taken
        before the open does move them, unlike one taken while the shard is open.

        Only timers are re-based: a ready or parked task has no deadline on the node (its
        :attr:`Queued.steps_at` and :attr:`Queued.gen_at` stay, so invariant 13 leaves it
        alone after a step)."""
        wall, mono = f.at_ms, f.mono_ms
        if wall is None or mono is None:
            return
        name = _host_name(host)
        steps = self.clock_steps.get(name, 0)
        gen = getattr(host, "generation", 0)
        frontier = None if f.timers_to is None else bytes.fromhex(f.timers_to)
        self.timer_frontier[(name, f.shard)] = frontier
        for _, j in sorted(self.jobs.items()):
            if j.host is not host or j.shard != f.shard or j.deleted:
                continue
            task = j.task
            if task is not None and task.where == TIMER:
                k = self._timer_key(j, task)
                if frontier is None or k <= frontier:
                    self._rebase_timer(j, task, wall, mono, paged_in=False)
            lease = j.lease
            if lease is not None:
                lease.deadline_s = self._now() + (lease.expiry_ms - wall) / 1000
                lease.overdue_since = None
                lease.gen, lease.steps = gen, steps

    def _on_timers_paged(self, host: Any, f: events.TimersPaged) -> None:
        """The node paged timers in or out (see :class:`silo.shard.mirror.ShardMirror`, "Timer
        pages"). Rows paged in were re-based on the event's readings, as at an open (a row
        still being written keeps its own, which its event, not yet seen, brings)."""
        self.timer_pages += 1
        name = _host_name(host)
        before = None if f.before is None else bytes.fromhex(f.before)
        after = None if f.after is None else bytes.fromhex(f.after)
        self.timer_frontier[(name, f.shard)] = after
        if before is None or (after is not None and after <= before):
            return  # paged out: those rows are judged on the wall clock again
        for _, j in sorted(self.jobs.items()):
            if j.host is not host or j.shard != f.shard or j.deleted:
                continue
            task = j.task
            if task is not None and task.where == TIMER:
                k = self._timer_key(j, task)
                if before < k and (after is None or k <= after):
                    self._rebase_timer(j, task, f.at_ms, f.mono_ms, paged_in=True)

    def _rebase_timer(self, j: JobModel, task: Queued, wall: int, mono: int, *,
                      paged_in: bool) -> None:
        """The node indexed the stored due time of ``task`` on readings ``(wall, mono)``: at a
        page-in (a lease decided just before it, whose event comes later, saw the prior
        deadline) or at an open (nothing of this process was decided before it: the prior
        deadline belonged to the last one)."""
        if paged_in:
            task.prior_due_mono_ms, task.rebased_mono_ms = task.due_mono_ms, mono
        else:
            task.prior_due_mono_ms = task.rebased_mono_ms = None
        task.due_mono_ms = task.due_ms - (wall - mono)
        task.exact_due = True  # the stored due time, re-based exactly as the node did
        task.steps_at = self.clock_steps.get(_host_name(j.host), 0)
        task.gen_at = getattr(j.host, "generation", 0)

    @staticmethod
    def _timer_key(j: JobModel, task: Queued) -> bytes:
        return timer_key(Task("", j.tenant, j.job_id, task.attempt, j.task_group, j.priority,
                              task.due_ms))

    def timer_on_disk_only(self, j: JobModel) -> bool:
        """Whether the timer of ``j`` is beyond its node's timer frontier: not in the node's
        memory, so not indexed on its monotonic clock. It is judged on the wall clock of
        the moment (it will be re-based on it when paged in), and the node must have paged it
        in before that makes it due."""
        task = j.task
        if task is None or task.where != TIMER:
            return False
        frontier = self.timer_frontier.get((_host_name(j.host), j.shard))
        return frontier is not None and self._timer_key(j, task) > frontier

    def _set_task(self, j: JobModel, task: Queued | None) -> None:
        name = _host_name(j.host)
        q = self.queues.setdefault((name, j.shard, j.task_group), {})
        old = j.task
        if (task is not None and task.steps_at == -1 and old is not None
                and old.attempt == task.attempt and old.due_ms == task.due_ms):
            # Moved with its due time unchanged (timer -> ready, parked -> ready): the node
            # keeps the deadline it indexed, whatever the wall clock did since.
            task.due_mono_ms, task.exact_due = old.due_mono_ms, old.exact_due
            task.steps_at, task.gen_at = old.steps_at, old.gen_at
        elif task is not None and task.steps_at == -1:
            task.steps_at = self.clock_steps.get(name, 0)
            task.gen_at = getattr(j.host, "generation", 0)
            last = self.last_step_s.get(name)
            if last is not None and self._now() - last < STEP_SETTLE_S:
                task.exact_due = False
        j.task = task
        if task is None:
            q.pop(j.key, None)
        else:
            q[j.key] = j

    def _queued_key_present(self, j: JobModel, attempt: int, due_ms: int) -> str | None:
        if self._probe is None:
            return None
        t = Task("", j.tenant, j.job_id, attempt, j.task_group, j.priority, due_ms)
        for kind, k in (("ready", ready_key(t)), ("timer", timer_key(t))):
            if self._probe(j.host, j.shard, k) is not None:
                return kind
        return None

    def _lease_key_present(self, j: JobModel, task_id: str) -> bool:
        if self._probe is None:
            return False
        from silo.keys import Prefix, key

        return self._probe(j.host, j.shard, key(Prefix.LEASE, task_id)) is not None

    def on_event(self, host: Any, kind: str, fields: dict[str, Any] | events.Event) -> None:
        """One durable event: typed here (see :mod:`sim.events`) unless the sink already did,
        then handed to ``_on_<kind>`` (kinds in :data:`sim.events.IGNORED` have none)."""
        if self.failed is not None:
            return
        self.events += 1
        ev = fields if isinstance(fields, events.Event) else events.parse(kind, fields)
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(host, ev)
