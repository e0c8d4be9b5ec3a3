"""Invariant checkers, fed by the durable event stream while the run goes on.

The model here is built only from what the shard reports as durable (events), from what clients
were actually told (acknowledgements), from what the server answered on heartbeats, and, after a
crash, from the disk's durable image (a write in flight at the crash may survive without its
events ever being emitted). Numbers are DESIGN §7's invariants:

1. no task is leased twice at once; a job never has two live leases (a leased task must not stay
   in the queue);
2. a concurrency queue never has more holders than its max at the time of a grant; a slot is
   granted to a task at most once until released, and only a granted slot is released (fed by
   ``slot_granted`` / ``slot_released``, re-synced from the holder rows after a crash); the
   audit finds no holder row of a job that is terminal or of another attempt;
3. only legal status transitions; RUNNING iff exactly one running attempt;
4. attempts never leave a terminal state; attempt numbers strictly increase per job; an
   undelivered attempt (a lease that expired unacknowledged) re-queues the job without charging
   its retry budget, at most ``MAX_UNDELIVERED`` times per run;
5. terminal jobs hold no lease and no queued task;
6. no acknowledged enqueue is ever lost (and none is acknowledged before it is durable); no
   enqueue call creates its job twice (a retry arriving after the job its first try created was
   deleted must not re-create it);
7. liveness: checked by the simulator (every job terminal within the bound after healing);
8. an expired lease is reaped (within a slack); a heartbeat of a job flagged cancelled answers
   ``cancelled=True``;
9. a lease never hands out a task while a due task of the same shard and task group with a
   higher priority (lower number) waits (a task parked on a concurrency queue, or in the timer
   index with limits left to acquire, e.g. waiting for a reserved rate token, is not due);
12. counters equal a recount (final audit and after every crash);
13. only a ready task is leased, and never before its due time on the node's monotonic clock
    (start time, retry backoff, rate-token wait; checked on ``task_leased`` when the model knows
    the node's deadline exactly: see :attr:`Queued.exact_due`); no rate bucket grants more than
    ``limit`` tokens in any window of ``per_ms`` (fed by ``token_taken``, at each token's
    reserved time; the audit checks the reservation rows against the jobs waiting for tokens);
14. the retry budget is charged only for delivered attempts: ``status_changed`` carries the
    shard's ``run_attempts``, which must equal leases minus undelivered ones this run, and a
    job never ends FAILED while its budget lasts;
15. every outcome a worker's handler computed while its lease was live is, after the workers'
    clean stop, the recorded state of its attempt, or the SDK dropped its report with a reason
    (fed by :class:`sim.observed_worker.ObservedWorker`; a crashed worker's outcomes die with
    it);
16. no wait-for cycle among parked requests (the durable images, see
    :func:`sim.audit.wait_for_cycle`); holder rows of ended tasks are invariant 2's audit;
17. no poison item (``poison_item`` event, or the shard's poison counter): the simulator
    injects no corrupt records; the run fails with exit 3;
fencing. a heartbeat or report from a worker that does not own the lease is refused and
    causes no lease event (``by_worker_id`` on ``lease_extended`` / ``lease_ended``, and the
    answers the server gave, against the owner named by ``task_leased``).

Checkers never raise into the code under test: they hand a :class:`Violation` to ``report``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from silo.errors import Code
from silo.model import DEFAULT_TENANT, MAX_UNDELIVERED, READY, TIMER, Task
from silo.pb.silo import v1 as pb
from silo.shard.tables import ready_key, timer_key
from silo.shard.transitions import LEGAL_TRANSITIONS
from sim import events
from sim.audit import JobKey, ShardImage, audit_image
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
    task was queued (a node re-bases timers on the wall clock when a shard reopens)."""
    steps_at: int = -1
    """How many wall-clock steps its node had taken when the task was queued (-1: unset)."""
    gen_at: int = -1
    """The node's generation (process incarnation) when the task was queued: a new process
    re-bases stored due times on its wall clock, so a wall step in between moves them."""

    def leasable(self, at_ms: int, mono_ms: int | None = None) -> bool:
        """Could a lease at ``at_ms`` (monotonic ``mono_ms``) hand this task out? Ready tasks
        can; a due timer can only when it has no limit left to acquire (the lease promotes due
        timers first); a parked request, or a timer that must still acquire a limit, cannot.
        Timers fall due by the monotonic clock when both readings are known."""
        if self.where == READY:
            return True
        if self.where != TIMER or self.limits_left != 0:
            return False
        if mono_ms is not None and self.due_mono_ms is not None:
            return self.due_mono_ms <= mono_ms
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


class Checker:
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
        self.first_tries: dict[JobKey, int] = {}
        """How many enqueue requests not marked ``retry`` (first tries) named each job id."""
        self.creations: dict[JobKey, int] = {}
        """How many times each job id was created (``job_enqueued`` events)."""
        self.resent_deleted = 0
        """Retried enqueues answered OK existed-deleted (the job is not created twice)."""
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

    # -- reporting --------------------------------------------------------------------------

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

    # -- the queue model (invariant 9) ------------------------------------------------------

    def on_clock_step(self, host: Any) -> None:
        """The wall clock of ``host`` stepped: due times of its queued tasks, and of tasks
        queued by batches in flight, are no longer exact on its monotonic clock."""
        name = _host_name(host)
        self.clock_steps[name] = self.clock_steps.get(name, 0) + 1
        self.last_step_s[name] = self._now()

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

    # -- events -----------------------------------------------------------------------------

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

    def _on_job_enqueued(self, host: Any, f: events.JobEnqueued) -> None:
        key = (f.tenant, f.job_id)
        old = self.jobs.get(key)
        if old is not None and not old.deleted:
            self.fail(Invariant.TRANSITIONS,
                      f"job {key} enqueued again while it exists", old.describe(),
                      f"event: job_enqueued {f}")
            return
        self.creations[key] = self.creations.get(key, 0) + 1
        if old is not None and self.creations[key] > self.first_tries.get(key, 0):
            # Each enqueue call sends one first try; every later try is marked retry. More
            # creations than calls: a retry re-created a job deleted since its first try landed.
            self.fail(Invariant.NO_LOST_ENQUEUE,
                      f"job {key} created again after its delete by a retried enqueue "
                      f"({self.creations[key]} creations, {self.first_tries.get(key, 0)} "
                      f"enqueue calls)", old.describe(), f"event: job_enqueued {f}")
            return
        j = JobModel(f.tenant, f.job_id, host, f.shard, f.task_group, f.priority)
        if old is not None:
            j.attempt = old.attempt  # attempt numbers keep increasing across id reuse
        j.retry_count = f.retry_count
        j.enqueued_at = self._now()
        j.note(f"enqueued due={f.due_ms}")
        self.jobs[key] = j

    def _on_status_changed(self, host: Any, f: events.StatusChanged) -> None:
        j = self._job(f, "status_changed")
        if j is None:
            return
        old, new, attempt = f.old, f.new, f.attempt
        j.note(f"{old}->{new} attempt={attempt} at={f.at_ms}")
        ev = f"event: status_changed {f}"
        if j.status != old:
            self.fail(Invariant.TRANSITIONS,
                      f"job {j.key} changed {old}->{new} but was {j.status}", j.describe(), ev)
            return
        if (old, new) not in LEGAL:
            self.fail(Invariant.TRANSITIONS,
                      f"illegal transition {old}->{new} of job {j.key}", j.describe(), ev)
            return
        running = sorted(a for a, s in j.attempts.items() if s == "RUNNING")
        if new == "RUNNING":
            if len(running) != 1 or j.lease is None:
                self.fail(Invariant.TRANSITIONS,
                          f"job {j.key} RUNNING with running attempts {running}",
                          j.describe(), ev)
                return
            if attempt != j.lease.attempt:
                self.fail(Invariant.ATTEMPTS,
                          f"job {j.key} RUNNING attempt {attempt} but leased attempt "
                             f"{j.lease.attempt}", j.describe(), ev)
                return
        else:
            if running:
                inv = Invariant.TERMINAL_CLEAN if new in TERMINAL else Invariant.TRANSITIONS
                self.fail(inv, f"job {j.key} became {new} with attempt(s) {running} still "
                               f"RUNNING", j.describe(), ev)
                return
            if j.lease is not None:
                inv = Invariant.TERMINAL_CLEAN if new in TERMINAL else Invariant.TRANSITIONS
                self.fail(inv, f"job {j.key} became {new} while holding live lease "
                               f"{j.lease.task_id}", j.describe(), ev)
                return
        if old == "RUNNING" and not self._check_outcome(j, new, ev):
            return
        j.ended = None
        if new == "SCHEDULED":
            if attempt <= j.attempt:
                self.fail(Invariant.ATTEMPTS,
                          f"job {j.key} queued attempt {attempt}, not above {j.attempt}",
                          j.describe(), ev)
                return
            if old in TERMINAL:
                j.cancel_flag = False  # restart clears the flag
                j.run_attempts = 0  # and gives a fresh retry budget
                j.undelivered = 0
            self._set_task(j, _queued(f, attempt))
        elif new in TERMINAL:
            if j.task is not None:
                where = self._queued_key_present(j, j.task.attempt, j.task.due_ms)
                if where is not None:
                    self.fail(Invariant.TERMINAL_CLEAN,
                              f"job {j.key} became {new} but its task (attempt "
                                 f"{j.task.attempt}) is still in the {where} queue on disk",
                              j.describe(), ev)
                    return
                self._set_task(j, None)
            if j.last_task_id is not None and self._lease_key_present(j, j.last_task_id):
                self.fail(Invariant.TERMINAL_CLEAN,
                          f"job {j.key} became {new} but lease {j.last_task_id} is still "
                             f"on disk", j.describe(), ev)
                return
            if new == "CANCELLED":
                j.cancel_flag = True
        j.status = new
        j.terminal_at = self._now() if new in TERMINAL else None
        j.attempt = max(j.attempt, attempt)
        charged = f.run_attempts
        if new not in TERMINAL and charged is not None and charged != j.run_attempts:
            self.fail(Invariant.RETRY_BUDGET,
                      f"job {j.key} ({old}->{new}) has {charged} attempt(s) charged to its retry "
                      f"budget, but {j.run_attempts} of this run's attempts were leased and not "
                      f"undelivered", j.describe(), *j.history[-6:], ev)

    def _check_outcome(self, j: JobModel, new: str, ev: str) -> bool:
        """How a running job ends must follow from how its attempt ended (DESIGN §3): success
        ends it SUCCEEDED; a cancel (or any failure of a job flagged cancelled) CANCELLED; a
        failure is retried while the budget lasts (retry_count + 1 attempts per run)."""
        ended = j.ended
        if ended is None:
            self.fail(Invariant.TRANSITIONS,
                      f"job {j.key} left RUNNING ({new}) without its attempt ending",
                      j.describe(), ev)
            return False
        if ended == "SUCCEEDED":
            want = {"SUCCEEDED"}
        elif ended == "CANCELLED" or j.cancel_flag:
            want = {"CANCELLED"}
        elif ended == "UNDELIVERED":
            want = {"SCHEDULED"}  # re-queued at once, the retry budget untouched
        elif j.retry_count is None:
            want = {"SCHEDULED", "FAILED"}
        elif j.run_attempts <= j.retry_count:
            want = {"SCHEDULED"}
        else:
            want = {"FAILED"}
        if new not in want:
            inv = Invariant.REAP_AND_CANCEL if want == {"SCHEDULED"} else Invariant.TRANSITIONS
            if new == "FAILED" and want == {"SCHEDULED"} and j.undelivered:
                # The budget ran out early in a run with undelivered attempts: charged for them.
                inv = Invariant.RETRY_BUDGET
            self.fail(inv, f"job {j.key}: attempt ended {ended} (run attempt {j.run_attempts} of "
                           f"{None if j.retry_count is None else j.retry_count + 1} allowed, "
                           f"cancel flag {j.cancel_flag}) but the job became {new}, not "
                           f"{' or '.join(sorted(want))}", j.describe(), ev)
            return False
        return True

    def _on_task_leased(self, host: Any, f: events.TaskLeased) -> None:
        j = self._job(f, "task_leased")
        if j is None:
            return
        tid, attempt = f.task_id, f.attempt
        ev = f"event: task_leased {f}"
        j.note(f"leased {tid} attempt={attempt} by {f.worker_id} at={f.at_ms}")
        if tid in self.live_leases:
            other = self.jobs[self.live_leases[tid]]
            self.fail(Invariant.SINGLE_LEASE,
                      f"task {tid} leased while already leased", other.describe(), ev)
            return
        if j.lease is not None:
            self.fail(Invariant.SINGLE_LEASE,
                      f"job {j.key} leased again while lease {j.lease.task_id} is live",
                      j.describe(), ev)
            return
        if j.status != "SCHEDULED":
            self.fail(Invariant.TRANSITIONS,
                      f"job {j.key} leased while {j.status}", j.describe(), ev)
            return
        if j.task is None or j.task.attempt != attempt:
            self.fail(Invariant.ATTEMPTS,
                      f"job {j.key} leased attempt {attempt} but its queued task is "
                         f"{j.task}", j.describe(), ev)
            return
        if attempt <= j.max_leased or attempt in j.attempts:
            self.fail(Invariant.ATTEMPTS, f"job {j.key} handed out attempt {attempt} after attempt "
                         f"{j.max_leased}", j.describe(), ev)
            return
        self._check_due(j, j.task, f)
        self._check_priority(j, f)
        if self.failed is not None:
            return
        where = self._queued_key_present(j, attempt, f.due_ms)
        if where is not None:
            self.fail(Invariant.SINGLE_LEASE,
                      f"task {tid} of job {j.key} was leased but is still in the {where} "
                         f"queue on disk: it can be handed out again", j.describe(), ev)
            return
        lease = LeaseModel(tid, attempt, f.worker_id, f.expiry_ms, host,
                           self._now() + (f.expiry_ms - f.at_ms) / 1000)
        j.lease = lease
        j.last_task_id = tid
        self.task_owner[tid] = LeaseOwner(f.worker_id, j.shard, j.tenant, j.job_id, attempt)
        j.attempts[attempt] = "RUNNING"
        j.max_leased = attempt
        j.run_attempts += 1
        self.live_leases[tid] = j.key
        self._set_task(j, None)

    def _check_due(self, j: JobModel, task: Queued, f: events.TaskLeased) -> None:
        """Invariant 13: only a ready task is leased (a timer waits for its start time or
        retry backoff, a task with limits left waits for its slot or rate token), and never
        before its due time on the node's monotonic clock."""
        ev = f"event: task_leased {f}"
        if task.where != READY and (task.where != TIMER or task.limits_left):
            # (A due timer with no limit left is promoted by the lease call itself.)
            what = ("waiting for a concurrency slot" if task.where != TIMER
                    else f"waiting in the timer index with {task.limits_left} limit(s) left")
            self.fail(Invariant.NOT_BEFORE_DUE,
                      f"job {j.key} attempt {task.attempt} was leased while {what} (due "
                      f"{task.due_ms}, leased at {f.at_ms})", j.describe(), ev)
            return
        mono = f.mono_ms
        same_offset = (task.steps_at == self.clock_steps.get(_host_name(j.host), 0)
                       or task.gen_at == getattr(j.host, "generation", 0))
        if task.exact_due and task.due_mono_ms is not None and mono is not None and same_offset:
            self.leased_early_checked += 1
            if mono < task.due_mono_ms:
                self.fail(Invariant.NOT_BEFORE_DUE,
                          f"job {j.key} attempt {task.attempt} was leased "
                          f"{task.due_mono_ms - mono} ms before it was due (due at "
                          f"{task.due_mono_ms} ms on the node's monotonic clock, leased at "
                          f"{mono} ms)", j.describe(), *j.history[-4:], ev)

    def _check_priority(self, j: JobModel, f: events.TaskLeased) -> None:
        at = f.at_ms
        q = self.queues.get((_host_name(j.host), j.shard, j.task_group), {})
        for other in q.values():
            if other is j or other.task is None:
                continue
            if other.task.leasable(at, f.mono_ms) and other.priority < j.priority:
                self.fail(
                    Invariant.PRIORITY,
                    f"shard {j.shard} task group {j.task_group!r}: leased job {j.key} "
                    f"(priority {j.priority}) while job {other.key} (priority "
                    f"{other.priority}, due {other.task.due_ms} <= {at}) waited",
                    j.describe(), other.describe(), f"event: task_leased {f}",
                )
                return

    def _fenced(self, f: events.LeaseExtended | events.LeaseEnded, what: str) -> bool:
        """Fencing: an event caused by a heartbeat or report names the worker that sent it
        (``by_worker_id``); it must be the lease's owner. False after reporting a violation."""
        by = f.by_worker_id
        owner = self.task_owner.get(f.task_id)
        if by and owner is not None and by != owner.worker_id:
            self.fail(Invariant.FENCING,
                      f"{what} of task {f.task_id} (leased to {owner.worker_id}) was caused "
                      f"by worker {by}, which does not own the lease",
                      f"event: {what} {f}")
            return False
        return True

    def _on_lease_extended(self, host: Any, f: events.LeaseExtended) -> None:
        if not self._fenced(f, "lease_extended"):
            return
        key = self.live_leases.get(f.task_id)
        if key is None:
            self.fail(Invariant.ATTEMPTS, f"lease {f.task_id} extended after it ended",
                      f"event: lease_extended {f}")
            return
        lease = self.jobs[key].lease
        assert lease is not None
        lease.expiry_ms = f.expiry_ms
        lease.deadline_s = self._now() + (f.expiry_ms - f.at_ms) / 1000
        lease.overdue_since = None

    def _on_lease_ended(self, host: Any, f: events.LeaseEnded) -> None:
        if not self._fenced(f, "lease_ended"):
            return
        tid = f.task_id
        key = self.live_leases.pop(tid, None)
        ev = f"event: lease_ended {f}"
        if key is None:
            j = self.jobs.get((f.tenant, f.job_id))
            self.fail(Invariant.ATTEMPTS,
                      f"lease {tid} (attempt {f.attempt}) ended but was not live",
                      j.describe() if j else "", ev)
            return
        j = self.jobs[key]
        j.note(f"lease {tid} ended {f.outcome} state={f.state} at={f.at_ms}")
        a = f.attempt
        if j.attempts.get(a) != "RUNNING" or j.lease is None or j.lease.task_id != tid:
            self.fail(Invariant.ATTEMPTS,
                      f"attempt {a} of job {j.key} ended but was {j.attempts.get(a)}",
                      j.describe(), ev)
            return
        j.attempts[a] = f.state or f.outcome.upper()
        j.ended = j.attempts[a]
        if f.outcome == "reaped":
            self.reaped += 1
        if f.outcome == "undelivered":
            self.undelivered += 1
            if j.attempts[a] not in ("UNDELIVERED", "CANCELLED"):
                self.fail(Invariant.ATTEMPTS, f"undelivered attempt {a} of job {j.key} recorded as "
                             f"{j.attempts[a]}", j.describe(), ev)
                return
            if j.undelivered >= MAX_UNDELIVERED:
                self.fail(Invariant.REAP_AND_CANCEL,
                          f"job {j.key}: attempt {a} counted undelivered after "
                             f"{j.undelivered} undelivered attempts (at most {MAX_UNDELIVERED}; "
                             f"then the expiry is a WORKER_CRASHED failure)", j.describe(), ev)
                return
            if j.attempts[a] == "UNDELIVERED":
                j.undelivered += 1
                j.run_attempts -= 1  # the retry budget is charged only for delivered leases
        j.lease = None

    def _on_poison_item(self, host: Any, f: events.PoisonItem) -> None:
        """Invariant 17: the simulator injects no corrupt records, so no request or stored row
        may be one the shard cannot process."""
        self.fail(Invariant.NO_NODE_DEATH,
                  f"{_host_name(host)} shard {f.shard}: {f.what} could not be processed "
                  f"and was handled as a poison item ({f.error})", f"event: poison_item {f}")

    def on_poison_count(self, host: Any, shard: int, n: int) -> None:
        """The shard's poison counter (``statistics().poison_items``), read periodically: it
        also counts background-loop rounds that raised, which emit no event."""
        if n > 0:
            self.fail(Invariant.NO_NODE_DEATH,
                      f"{_host_name(host)} shard {shard} counted {n} poison item(s) (an item or "
                      f"a background-loop round raised) in a run without corrupt records")

    def _on_task_too_large(self, host: Any, f: events.TaskTooLarge) -> None:
        """A queued task that can never fit in a LeaseTasks reply: its attempt is recorded
        FAILED without a lease (the status change to FAILED follows)."""
        j = self._job(f, "task_too_large")
        if j is None:
            return
        a = f.attempt
        j.note(f"task of attempt {a} too large ({f.size_bytes} > {f.max_bytes} bytes)")
        if j.status != "SCHEDULED" or j.task is None or j.task.attempt != a or a in j.attempts:
            self.fail(Invariant.ATTEMPTS,
                      f"attempt {a} of job {j.key} failed as too large but was not its "
                         f"queued task", j.describe(), f"event: task_too_large {f}")
            return
        j.attempts[a] = "FAILED"
        j.max_leased = max(j.max_leased, a)

    def _on_cancel_requested(self, host: Any, f: events.CancelRequested) -> None:
        j = self._job(f, "cancel_requested")
        if j is None:
            return
        j.note(f"cancel requested at={f.at_ms}")
        if j.status in TERMINAL:
            self.fail(Invariant.TRANSITIONS,
                      f"cancel flag set on {j.status} job {j.key}", j.describe(),
                      f"event: cancel_requested {f}")
            return
        j.cancel_flag = True

    def _on_task_expedited(self, host: Any, f: events.TaskExpedited) -> None:
        j = self._job(f, "task_expedited")
        if j is None:
            return
        j.note(f"expedited attempt={f.attempt} due={f.due_ms}")
        if j.status != "SCHEDULED" or j.task is None or j.task.attempt != f.attempt:
            self.fail(Invariant.ATTEMPTS,
                      f"expedited attempt {f.attempt} of job {j.key} which is not queued",
                      j.describe(), f"event: task_expedited {f}")
            return
        if j.task.where == READY or j.task.limits_left == 0:
            # Due now; a task that must still acquire limits is placed, and the task_moved
            # that follows says where it went.
            self._set_task(j, Queued(f.attempt, f.due_ms, j.task.where, j.task.limits_left,
                                     f.mono_ms))

    def _on_task_moved(self, host: Any, f: events.TaskMoved) -> None:
        j = self._job(f, "task_moved")
        if j is None:
            return
        j.note(f"task attempt={f.attempt} moved where={f.where} due={f.due_ms} "
               f"limits_left={f.limits_left}")
        if j.status != "SCHEDULED" or j.task is None or j.task.attempt != f.attempt:
            self.fail(Invariant.ATTEMPTS,
                      f"queued task of attempt {f.attempt} of job {j.key} moved, but the "
                         f"job is not queued with that attempt", j.describe(),
                      f"event: task_moved {f}")
            return
        self._set_task(j, _queued(f, f.attempt))
        if f.cause == "rate_token_given_back":
            return  # moved earlier by a cancel of another job: not the task re-placing itself
        mk = (j.key, f.attempt)
        self.moves[mk] = self.moves.get(mk, 0) + 1

    # -- rate tokens (invariant 13) ---------------------------------------------------------

    def _on_token_taken(self, host: Any, f: events.TokenTaken) -> None:
        ev = f"event: token_taken {f}"
        slot, limit, per_ms = f.slot_ms, f.limit, f.per_ms
        b = (f.shard, f.tenant, f.name, f.key)
        slots = self.tokens.setdefault(b, [])
        i = bisect.bisect_right(slots, slot)
        slots.insert(i, slot)
        for j in range(max(0, i - limit), i + 1):
            if j + limit < len(slots) and slots[j + limit] - slots[j] < per_ms:
                self.fail(Invariant.NOT_BEFORE_DUE,
                          f"rate bucket {b[2]}/{b[3]} (tenant {b[1]!r}, shard {b[0]}) took "
                          f"{limit + 1} tokens within {per_ms} ms (limit {limit}): "
                          f"{slots[j:j + limit + 1]}", ev)
                return
        if len(slots) > 4 * limit + 64:
            del slots[: len(slots) - 2 * limit - 32]  # keeps every window a new slot can join

    # -- concurrency slots (invariant 2) ----------------------------------------------------

    def _on_slot_granted(self, host: Any, f: events.SlotGranted) -> None:
        q = (_host_name(host), f.shard, f.tenant, f.queue)
        held = self.holders.setdefault(q, {})
        ev = f"event: slot_granted {f}"
        tid = f.task_id
        self.grants += 1
        self.max_seen.setdefault(q, set()).add(f.max)
        if tid in held:
            self.fail(Invariant.SLOT_LIMIT,
                      f"slot of queue {q[2:]} (shard {q[1]}) granted twice to task {tid} "
                         f"without a release in between", ev)
            return
        held[tid] = f.job_id
        if f.holders > f.max:
            self.fail(Invariant.SLOT_LIMIT,
                      f"queue {q[2:]} (shard {q[1]}) has {f.holders} holders after a grant "
                         f"but its max is {f.max}", f"holders: {sorted(held)}", ev)
            return
        if f.holders != len(held):
            self.fail(Invariant.SLOT_LIMIT,
                      f"queue {q[2:]} (shard {q[1]}) reports {f.holders} holders after a "
                         f"grant, but granted minus released slots are {len(held)}: a holder "
                         f"count drifted from the grants", f"holders: {sorted(held)}", ev)
            return
        self.peak_holders[q] = max(self.peak_holders.get(q, 0), len(held))
        for other in self.jobs.values():
            t = other.task
            if (other.tenant == q[2] and other.shard == q[1] and _host_name(other.host) == q[0]
                    and t is not None and t.where == TIMER and t.attempt > 1
                    and t.limits_left > 0 and t.due_ms > f.at_ms):
                self.grants_during_backoff += 1
                break

    def _on_slot_released(self, host: Any, f: events.SlotReleased) -> None:
        q = (_host_name(host), f.shard, f.tenant, f.queue)
        held = self.holders.setdefault(q, {})
        if held.pop(f.task_id, None) is None:
            self.fail(Invariant.SLOT_LIMIT,
                      f"slot of queue {q[2:]} (shard {q[1]}) released by task {f.task_id} "
                         f"that held none", f"holders: {sorted(held)}",
                      f"event: slot_released {f}")
            return
        self.releases += 1
        if self._probe is not None:
            from silo.shard.tables import holder_key

            if self._probe(host, f.shard, holder_key(f.tenant, f.queue,
                                                        f.task_id)) is not None:
                self.fail(Invariant.SLOT_LIMIT,
                          f"slot of queue {q[2:]} (shard {q[1]}) released by task "
                             f"{f.task_id}, but its holder row is still on disk: the slot "
                             f"is held forever", f"event: slot_released {f}")

    def _on_refresh_ended(self, host: Any, f: events.RefreshEnded) -> None:
        self.refreshes[("reaped" if f.reaped else "failed" if f.new_max is None
                        else "ok")] += 1
        if f.new_max is not None:
            q = (_host_name(host), f.shard, f.tenant, f.queue)
            self.max_seen.setdefault(q, set()).add(f.new_max)

    def _on_job_deleted(self, host: Any, f: events.JobDeleted) -> None:
        j = self._job(f, "job_deleted")
        if j is None:
            return
        if j.status not in TERMINAL or j.lease is not None:
            self.fail(Invariant.TERMINAL_CLEAN,
                      f"deleted job {j.key} that was {j.status}", j.describe(),
                      f"event: job_deleted {f}")
            return
        j.deleted = True
        self._set_task(j, None)

    # -- what clients were told -------------------------------------------------------------

    def on_ack_enqueue(self, tenant: str, job_id: str) -> None:
        """A client received OK for the enqueue of ``(tenant, job_id)``."""
        if self.failed is not None:
            return
        key = (tenant, job_id)
        self.acked[key] = self._now()
        if self.strict_acks and key not in self.jobs:
            self.fail(Invariant.NO_LOST_ENQUEUE,
                      f"enqueue of job {key} acknowledged before it was durable (no durable "
                         f"job_enqueued event yet)")

    def on_enqueue_start(self, method: str, request: bytes) -> Any:
        """An enqueue request reached a server; returns the job ids it names."""
        req: pb.EnqueueRequest | pb.EnqueueBatchRequest
        if method == "Enqueue":
            req = pb.EnqueueRequest.parse(request)
            specs = [req.job]
        else:
            req = pb.EnqueueBatchRequest.parse(request)
            specs = list(req.jobs)
        keys = [((s.tenant or DEFAULT_TENANT), s.id) for s in specs if s is not None and s.id]
        if not req.retry:
            for k in keys:
                self.first_tries[k] = self.first_tries.get(k, 0) + 1
        return keys

    def on_enqueue_end(
        self, method: str, keys: Any, error: Any, response: bytes | None = None
    ) -> None:
        """The server answered an enqueue: OK means every job of it is durable (for an
        EnqueueBatch, every job whose result is OK); ALREADY_EXISTS means a job is durable under
        that id (a different one: the client raises it, but it must not be a write that a crash
        can still undo). An OK ``existed`` ``deleted`` answer (a retry whose first try created
        the job, deleted since) is accepted like any OK: the job was durable, and the model
        keeps deleted jobs, so it is found in ``self.jobs``; nothing is written for it."""
        if self.failed is not None or not keys or not self.strict_acks:
            return
        if error is None:
            ok = keys
            if method == "EnqueueBatch" and response is not None:
                results = pb.EnqueueBatchResponse.parse(response).results
                if len(results) == len(keys):  # the client names every job, so keys align
                    ok = [k for k, r in zip(keys, results, strict=True) if r.code == Code.OK]
                    self.resent_deleted += sum(1 for r in results if r.deleted)
                    taken = [k for k, r in zip(keys, results, strict=True)
                             if r.code == Code.ALREADY_EXISTS]
                    self._check_exists(method, taken, error)
            missing = [k for k in ok if k not in self.jobs]
            if missing:
                self.fail(Invariant.NO_LOST_ENQUEUE,
                          f"{method} answered OK before job(s) {missing[:3]} were durable "
                             f"(no durable job_enqueued event yet)")
        elif error.code == Code.ALREADY_EXISTS:
            self._check_exists(method, keys, error)

    def _check_exists(self, method: str, keys: list[Any], error: Any) -> None:
        if keys and not any(k in self.jobs for k in keys):
            self.fail(Invariant.NO_LOST_ENQUEUE,
                      f"{method} answered ALREADY_EXISTS for job(s) {keys[:3]} that are not "
                         f"durable: a crash now can undo the job the answer is about",
                      f"error: {error}")

    def on_heartbeat_start(self, request: bytes) -> Any:
        req = pb.HeartbeatRequest.parse(request)
        key = self.live_leases.get(req.task_id)
        flagged = key is not None and self.jobs[key].cancel_flag
        return (req.task_id, key, flagged, req.worker_id)

    def on_heartbeat_end(self, token: Any, response: bytes | None) -> None:
        if token is None or response is None or self.failed is not None:
            return
        task_id, key, flagged, worker_id = token
        if not self._owner_answered("Heartbeat", task_id, worker_id):
            return
        if key is None:
            return
        resp = pb.HeartbeatResponse.parse(response)
        if resp.cancelled:
            self.cancels_seen_by_heartbeat += 1
        if flagged and not resp.cancelled:
            j = self.jobs[key]
            self.fail(Invariant.REAP_AND_CANCEL,
                      f"heartbeat for task {task_id} of job {key}, flagged cancelled before "
                         f"the heartbeat began, answered cancelled=False: the worker never "
                         f"learns of the cancel", j.describe(), *j.history[-6:])

    def _owner_answered(self, method: str, task_id: str, worker_id: str) -> bool:
        """Fencing, from the answers: a call about a task id leased to another worker must be
        refused. False after reporting a violation."""
        owner = self.task_owner.get(task_id)
        if owner is None or owner.worker_id == worker_id:
            return True
        self.fail(Invariant.FENCING,
                  f"{method} from worker {worker_id} for task {task_id}, leased to "
                  f"{owner.worker_id}, was answered OK: a worker that does not own a lease "
                  f"changed it", f"job {(owner.tenant, owner.job_id)} attempt {owner.attempt}")
        return False

    def on_report_start(self, method: str, request: bytes) -> Any:
        """A ReportOutcome(s) call arrived: its (task id, worker id) per outcome."""
        if method == "ReportOutcome":
            outcomes = [pb.ReportOutcomeRequest.parse(request).outcome]
        else:
            outcomes = list(pb.ReportOutcomesRequest.parse(request).outcomes)
        return [(o.task_id, o.worker_id) if o is not None else ("", "") for o in outcomes]

    def on_report_end(self, method: str, token: Any, response: bytes | None,
                      error: Any) -> None:
        if self.failed is not None or error is not None or response is None:
            return
        if method == "ReportOutcome":
            codes = [0] * len(token)
        else:
            statuses = pb.ReportOutcomesResponse.parse(response).statuses
            if len(statuses) != len(token):
                return
            codes = [st.code for st in statuses]
        for (task_id, worker_id), code in zip(token, codes, strict=True):
            if code == 0:
                if not self._owner_answered(method, task_id, worker_id):
                    return
            elif task_id in self.task_owner and self.task_owner[task_id].worker_id != worker_id:
                self.fenced += 1

    # -- what workers computed (invariant 15) ----------------------------------------------

    def on_outcome_computed(self, worker_id: str, task_id: str, state: str) -> None:
        """A worker's handler for ``task_id`` produced an outcome that leaves ``state``."""
        key = self.live_leases.get(task_id)
        owner = self.task_owner.get(task_id)
        if key is None or owner is None or owner.worker_id != worker_id:
            return  # the lease had already ended: the report may rightly be refused
        self.computed[task_id] = (worker_id, state)

    def on_report_dropped(self, worker_id: str, task_id: str, reason: str) -> None:
        self.dropped[task_id] = reason

    def on_worker_crash(self, worker_id: str) -> None:
        """The worker process died: outcomes it had not settled die with it."""
        for tid, (wid, _) in sorted(self.computed.items()):
            if wid == worker_id and tid not in self.dropped:
                self.lost_with_worker += 1
                del self.computed[tid]

    def final_results(self) -> None:
        """After healing and the workers' clean stop: every computed outcome is the recorded
        state of its attempt, or its report was dropped with a reason."""
        if self.failed is not None:
            return
        for tid, (wid, state) in sorted(self.computed.items()):
            reason = self.dropped.get(tid)
            if reason is not None:
                if not reason.strip():
                    self.fail(Invariant.RESULTS_RECORDED,
                              f"the report of task {tid} ({state}, worker {wid}) was dropped "
                              f"without a reason")
                    return
                continue
            owner = self.task_owner[tid]
            j = self.jobs.get((owner.tenant, owner.job_id))
            if j is None or j.deleted:
                continue
            recorded = j.attempts.get(owner.attempt)
            if recorded != state:
                self.fail(Invariant.RESULTS_RECORDED,
                          f"worker {wid} computed {state} for task {tid} (job {j.key} attempt "
                          f"{owner.attempt}) while its lease was live, but the attempt is "
                          f"recorded {recorded} and the SDK never reported the result dropped",
                          j.describe(), *j.history[-6:])
                return

    # -- periodic checks --------------------------------------------------------------------

    def tick(self, now_s: float) -> None:
        """Invariant 8: a lease past its expiry on a serving node must be reaped soon."""
        if self.failed is not None:
            return
        for tid, key in self.live_leases.items():
            j = self.jobs[key]
            lease = j.lease
            assert lease is not None
            host = lease.host
            if not getattr(host, "serving", True):
                lease.overdue_since = None
                continue
            if now_s <= lease.deadline_s:
                lease.overdue_since = None
                continue
            if lease.overdue_since is None:
                lease.overdue_since = now_s
            elif now_s - lease.overdue_since > REAP_SLACK_S:
                self.fail(Invariant.REAP_AND_CANCEL,
                          f"lease {tid} of job {key} expired at {lease.deadline_s:.3f}s on the "
                             f"monotonic clock (stored wall expiry {lease.expiry_ms}; now "
                             f"{now_s:.3f}s) and was not reaped within {REAP_SLACK_S}s",
                          j.describe(), *j.history[-6:])
                return

    # -- liveness helpers -------------------------------------------------------------------

    def open_jobs(self) -> list[JobModel]:
        return [j for j in self.jobs.values() if not j.deleted and j.status not in TERMINAL]

    def missing_acked(self) -> list[JobKey]:
        return [k for k in self.acked if k not in self.jobs]

    def settled(self) -> bool:
        return not self.open_jobs() and not self.missing_acked() and not self.live_leases

    def _max_changed(self, host: Any, shard: int) -> frozenset[tuple[str, str]]:
        """Queues of this shard whose max took more than one value in this run."""
        name = _host_name(host)
        return frozenset((q[2], q[3]) for q, seen in self.max_seen.items()
                         if q[0] == name and q[1] == shard and len(seen) > 1)

    # -- crash: resynchronise with the durable image ---------------------------------------

    def resync_shard(self, host: Any, shard: int, img: ShardImage, where: str) -> None:
        """After a crash: check the durable image against the model, then adopt it."""
        if self.failed is not None:
            return
        problems = audit_image(img, where, self._max_changed(host, shard))
        if problems:
            inv, msg = problems[0]
            self.fail(inv, msg, *[m for _, m in problems[1:4]])
            return
        mine = {k: j for k, j in self.jobs.items() if j.host is host and j.shard == shard}
        for key, j in sorted(mine.items()):
            st = img.states.get(key)
            if st is None:
                if not j.deleted:
                    self.fail(Invariant.NO_LOST_ENQUEUE,
                              f"job {key}, durable before the crash of {where}, is gone after "
                                 f"it", j.describe(), *j.history[-6:])
                    return
                continue
            if j.deleted:
                self.fail(Invariant.TRANSITIONS,
                          f"deleted job {key} is back after the crash of {where}",
                          j.describe())
                return
            disk_status = st.status.name
            if disk_status != j.status and not reachable(j.status, disk_status):
                self.fail(Invariant.TRANSITIONS,
                          f"job {key} was {j.status} before the crash of {where}, "
                             f"{disk_status} after", j.describe())
                return
            atts = img.attempts.get(key, {})
            for a, s in sorted(j.attempts.items()):
                if s == "RUNNING":
                    continue
                disk = atts.get(a)
                if disk is None or disk.state.name != s:
                    self.fail(Invariant.ATTEMPTS,
                              f"attempt {a} of job {key} ended {s} before the crash of "
                                 f"{where}, is {None if disk is None else disk.state.name} "
                                 f"after", j.describe())
                    return
        for key in sorted(img.states):
            if key not in mine:
                info = img.infos[key]
                self.jobs[key] = JobModel(info.tenant, info.job_id, host, shard,
                                          info.task_group, info.priority)
        for tid, key in list(self.live_leases.items()):
            if key in img.states or key in mine:
                del self.live_leases[tid]
        name = _host_name(host)
        for q in [q for q in self.holders if q[0] == name and q[1] == shard]:
            del self.holders[q]
        for (tenant, queue), rows in sorted(img.holders.items()):
            self.holders[(name, shard, tenant, queue)] = {tid: job for tid, (job, _) in
                                                          sorted(rows.items())}
        for key, st in sorted(img.states.items()):
            j = self.jobs[key]
            j.note(f"resync after crash: {st.status.name}")
            j.retry_count = img.infos[key].retry.retry_count
            j.run_attempts = st.run_attempts
            j.undelivered = st.undelivered
            j.ended = None
            j.status = st.status.name
            j.attempt = st.attempt
            atts = img.attempts.get(key, {})
            j.attempts = {a: x.state.name for a, x in sorted(atts.items())}
            j.max_leased = max([j.max_leased, *atts])
            j.cancel_flag = key in img.cancels
            left = len(img.infos[key].limits) - st.held
            # Re-based as the node re-bases its timers when the shard opens.
            self._set_task(
                j, None if st.task is None else Queued(
                    st.task[0], st.task[1], st.task[2], left,
                    st.task[1] - host.clock.now_ms() + host.clock.monotonic_ms(),
                    exact_due=False,
                )
            )
            j.lease = None
            if st.lease_task_id is not None:
                lease = img.leases[st.lease_task_id]
                j.lease = LeaseModel(lease.task_id, lease.attempt, lease.worker_id,
                                     lease.expiry_ms, host,
                                     self._now() + (lease.expiry_ms - host.clock.now_ms()) / 1000)
                j.last_task_id = lease.task_id
                self.live_leases[lease.task_id] = key
                self.task_owner[lease.task_id] = LeaseOwner(
                    lease.worker_id, shard, j.tenant, j.job_id, lease.attempt)

    def check_acked_present(self, host: Any, present: set[JobKey], where: str) -> None:
        """After a crash of the only node: every enqueue acknowledged so far must be on disk."""
        if self.failed is not None:
            return
        for key, at in sorted(self.acked.items()):
            j = self.jobs.get(key)
            if key not in present and not (j is not None and j.deleted):
                self.fail(Invariant.NO_LOST_ENQUEUE,
                          f"enqueue of job {key}, acknowledged at t={at:.3f}s, was lost in "
                             f"the crash of {where}", j.describe() if j else "never seen durable")
                return

    # -- final audit ------------------------------------------------------------------------

    def final_shard(self, host: Any, shard: int, img: ShardImage, where: str) -> None:
        """After a clean stop: the durable image must pass the audit and equal the model."""
        if self.failed is not None:
            return
        problems = audit_image(img, where, self._max_changed(host, shard))
        if problems:
            inv, msg = problems[0]
            self.fail(inv, msg, *[m for _, m in problems[1:4]])
            return
        for key, j in sorted(self.jobs.items()):
            if j.host is not host or j.shard != shard:
                continue
            st = img.states.get(key)
            if j.deleted:
                if st is not None:
                    self.fail(Invariant.TRANSITIONS,
                              f"deleted job {key} is still on disk ({where})", j.describe())
                    return
                continue
            if st is None:
                inv = Invariant.NO_LOST_ENQUEUE if key in self.acked else Invariant.TRANSITIONS
                self.fail(inv, f"job {key} is missing on disk ({where})", j.describe())
                return
            if st.status.name != j.status:
                self.fail(Invariant.TRANSITIONS,
                          f"job {key} is {st.status.name} on disk but {j.status} by the "
                             f"events ({where})", j.describe())
                return
            atts = {a: x.state.name for a, x in img.attempts.get(key, {}).items()}
            if atts != j.attempts:
                self.fail(Invariant.ATTEMPTS,
                          f"attempts of job {key} on disk {atts} differ from the events "
                             f"{j.attempts} ({where})", j.describe())
                return
        for key in sorted(img.states):
            j = self.jobs.get(key)
            if j is None or j.host is not host or j.shard != shard:
                self.fail(Invariant.TRANSITIONS,
                          f"job {key} is on disk ({where}) but no durable event announced it")
                return

    def final_acked(self) -> None:
        for key in sorted(self.acked):
            j = self.jobs.get(key)
            if j is None:
                self.fail(Invariant.NO_LOST_ENQUEUE, f"acknowledged enqueue of job {key} was lost")
                return

    def status_of(self, key: JobKey) -> str | None:
        j = self.jobs.get(key)
        return None if j is None else j.status


__all__ = [
    "INVARIANTS",
    "Invariant",
    "Checker",
    "JobModel",
    "Violation",
    "reachable",
]
