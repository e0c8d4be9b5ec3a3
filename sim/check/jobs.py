"""Job lifecycles: legal transitions (3), attempts (4), clean terminal jobs (5) and the retry budget
(14)."""

from __future__ import annotations

from typing import Any

from silo.model import READY
from sim import events
from sim.check.base import CheckerBase
from sim.check.model import (
    LEGAL,
    TERMINAL,
    JobModel,
    Queued,
    _queued,
)
from sim.invariants import Invariant


class JobChecks(CheckerBase):
    """Job lifecycles: legal transitions (3), attempts (4), clean terminal jobs (5) and the retry
    budget (14)."""

    def _on_job_enqueued(self, host: Any, f: events.JobEnqueued) -> None:
        key = (f.tenant, f.job_id)
        old = self.jobs.get(key)
        if old is not None and not old.deleted:
            self.fail(Invariant.TRANSITIONS,
                      f"job {key} enqueued again while it exists", old.describe(),
                      f"event: job_enqueued {f}")
            return
        request_id = f.request_id or ""
        made = self.creators.setdefault(key, set())
        if request_id in made:
            # One enqueue call (one request id, sent on each of its tries) creates its job at
            # most once: a later try re-created a job deleted since an earlier try created it.
            assert old is not None
            self.fail(Invariant.NO_LOST_ENQUEUE,
                      f"job {key} created again after its delete by a later try of the "
                      f"enqueue call that created it (request id {request_id})",
                      old.describe(), f"event: job_enqueued {f}")
            return
        if request_id:
            made.add(request_id)
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
