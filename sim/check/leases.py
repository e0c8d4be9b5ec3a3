"""Leases: single lease (1), reaping and cancels (8), priority (9), not before due (13), and fencing
of heartbeats and reports."""

from __future__ import annotations

from typing import Any

from silo.model import MAX_UNDELIVERED, READY, TIMER
from silo.pb.silo import v1 as pb
from sim import events
from sim.check.base import CheckerBase
from sim.check.model import (
    EARLY_REAP_SLACK_S,
    REAP_SLACK_S,
    JobModel,
    LeaseModel,
    LeaseOwner,
    Queued,
    _host_name,
)
from sim.invariants import Invariant


class LeaseChecks(CheckerBase):
    """Leases: single lease (1), reaping and cancels (8), priority (9), not before due (13), and
    fencing of heartbeats and reports."""

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
                           self._now() + (f.expiry_ms - f.at_ms) / 1000,
                           gen=getattr(host, "generation", 0),
                           steps=self.clock_steps.get(_host_name(host), 0))
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
        decided_before_rebase = (mono is not None and task.rebased_mono_ms is not None
                                 and mono < task.rebased_mono_ms)
        if (task.exact_due and task.due_mono_ms is not None and mono is not None and same_offset
                and not decided_before_rebase):
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
            # A timer on the node's disk only is due by the wall clock of the lease.
            mono = None if self.timer_on_disk_only(other) else f.mono_ms
            if other.task.leasable(at, mono) and other.priority < j.priority:
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
        if lease.gen is not None:
            lease.gen = getattr(host, "generation", 0)
            lease.steps = self.clock_steps.get(_host_name(host), 0)

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
        if f.outcome in ("reaped", "undelivered"):
            self._check_not_reaped_early(j, host, f)
            if self.failed is not None:
                return
        if f.outcome == "reaped":
            self.reaped += 1
            self._check_crash_was_started(j, f)
            if self.failed is not None:
                return
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
        if f.outcome == "released":
            # Handed back unstarted by its worker: not an attempt, and not one of the job's
            # MAX_UNDELIVERED expiries either (DESIGN §4 "Delivery").
            self.released += 1
            if j.attempts[a] != "UNDELIVERED":
                self.fail(Invariant.ATTEMPTS, f"released attempt {a} of job {j.key} recorded as "
                             f"{j.attempts[a]}", j.describe(), ev)
                return
            if tid in self.started_handlers:
                self.fail(Invariant.ATTEMPTS, f"attempt {a} of job {j.key} was handed back as "
                             f"unstarted, but its handler had started", j.describe(), ev)
                return
            j.run_attempts -= 1
        j.lease = None

    def _check_crash_was_started(self, j: JobModel, f: events.LeaseEnded) -> None:
        """Invariant 14 (DESIGN §4 "Delivery"): a lease counts as delivered only once its
        handler starts, so an expiry that ends the attempt ``WORKER_CRASHED`` (charged to the
        retry budget) needs a started handler; a task a worker held unstarted (prefetched) and
        lost in a crash is undelivered. Exempt: the expiry after ``MAX_UNDELIVERED``
        undelivered ones, a cancelled job's (not charged), and leases of raw actors, which
        report no handler starts."""
        owner = self.task_owner.get(f.task_id)
        if (f.state != "FAILED" or f.task_id in self.started_handlers
                or j.undelivered >= MAX_UNDELIVERED
                or owner is None or owner.worker_id not in self.sdk_workers):
            return
        self.fail(Invariant.RETRY_BUDGET,
                  f"attempt {f.attempt} of job {j.key} expired WORKER_CRASHED, charged to the "
                  f"retry budget, but worker {owner.worker_id} never started its handler (a "
                  f"task held unstarted is not delivered)", j.describe(), *j.history[-6:],
                  f"event: lease_ended {f}")

    def _check_not_reaped_early(self, j: JobModel, host: Any, f: events.LeaseEnded) -> None:
        """Invariant 8: a lease is reaped only once it expired on the node's monotonic clock
        (a wall-clock step moves no deadline of a running node, DESIGN §4 "Deadlines").
        Checked across wall-clock steps, which is where the two clocks part."""
        lease = j.lease
        if lease is not None and lease.steps == self.clock_steps.get(_host_name(host), 0):
            return
        if lease is None or lease.gen is None or lease.gen != getattr(host, "generation", 0):
            return  # re-synced after a crash, not yet re-based by its shard's open: not exact
        early_s = lease.deadline_s - self._now()
        if early_s > EARLY_REAP_SLACK_S:
            self.fail(Invariant.REAP_AND_CANCEL,
                      f"lease {f.task_id} of job {j.key} was reaped ({f.outcome}) {early_s:.3f}s "
                      f"before it expired on the node's monotonic clock (at "
                      f"{lease.deadline_s:.3f}s; stored wall expiry {lease.expiry_ms})",
                      j.describe(), *j.history[-6:], f"event: lease_ended {f}")

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

    def tick(self, now_s: float) -> None:
        """Invariant 8: a lease past its expiry on a serving node must be reaped soon."""
        if self.failed is not None:
            return
        for tid, key in self.live_leases.items():
            j = self.jobs[key]
            lease = j.lease
            assert lease is not None
            host = lease.host
            serves = getattr(host, "serves", None)  # a cluster's shared root: per shard
            if not (serves(j.shard) if serves is not None else getattr(host, "serving", True)):
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
