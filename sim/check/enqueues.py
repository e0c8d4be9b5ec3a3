"""Enqueues: no acknowledged enqueue lost, none created twice by one call (6)."""

from __future__ import annotations

from typing import Any

from silo.errors import Code
from silo.model import DEFAULT_TENANT
from silo.pb.silo import v1 as pb
from sim.audit import JobKey
from sim.check.base import CheckerBase
from sim.invariants import Invariant


class EnqueueChecks(CheckerBase):
    """Enqueues: no acknowledged enqueue lost, none created twice by one call (6)."""

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
        """An enqueue request reached a server; returns the job ids it names and its request
        id."""
        req: pb.EnqueueRequest | pb.EnqueueBatchRequest
        if method == "Enqueue":
            req = pb.EnqueueRequest.parse(request)
            specs = [req.job]
        else:
            req = pb.EnqueueBatchRequest.parse(request)
            specs = list(req.jobs)
        keys = [((s.tenant or DEFAULT_TENANT), s.id) for s in specs if s is not None and s.id]
        return keys, req.request_id

    def on_enqueue_end(
        self, method: str, call: Any, error: Any, response: bytes | None = None
    ) -> None:
        """The server answered an enqueue: OK means every job of it is durable (for an
        EnqueueBatch, every job whose result is OK); ALREADY_EXISTS means a job is durable under
        that id (a different one: the client raises it, but it must not be a write that a crash
        can still undo). An OK ``existed`` ``deleted`` answer (a later try of the call that
        created the job, deleted since) is accepted like any OK: the job was durable, and the
        model keeps deleted jobs, so it is found in ``self.jobs``; nothing is written for it.
        But it must be given only to the call (request id) that did create the job: to any
        other call it says "enqueued" of a job that call never created."""
        keys, request_id = call
        if self.failed is not None or not keys or not self.strict_acks:
            return
        if error is None:
            ok = keys
            if method == "EnqueueBatch" and response is not None:
                results = pb.EnqueueBatchResponse.parse(response).results
                if len(results) == len(keys):  # the client names every job, so keys align
                    ok = [k for k, r in zip(keys, results, strict=True) if r.code == Code.OK]
                    self.resent_deleted += sum(1 for r in results if r.deleted)
                    claimed = [k for k, r in zip(keys, results, strict=True)
                               if r.deleted and (not request_id
                                                 or request_id not in self.creators.get(k, ()))]
                    if claimed:
                        self.fail(Invariant.NO_LOST_ENQUEUE,
                                  f"{method} answered job(s) {claimed[:3]} existed and "
                                  f"deleted to a call (request id {request_id!r}) that never "
                                  f"created them: the jobs it asked for are never created")
                        return
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

    def final_acked(self) -> None:
        for key in sorted(self.acked):
            j = self.jobs.get(key)
            if j is None:
                self.fail(Invariant.NO_LOST_ENQUEUE, f"acknowledged enqueue of job {key} was lost")
                return
