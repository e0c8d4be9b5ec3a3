"""The durable images after a crash and at the end (3, 4, 6), and the liveness helpers (7)."""

from __future__ import annotations

from typing import Any

from sim.audit import JobKey, ShardImage, audit_image
from sim.check.base import CheckerBase
from sim.check.model import (
    TERMINAL,
    JobModel,
    LeaseModel,
    LeaseOwner,
    Queued,
    _host_name,
    reachable,
)
from sim.invariants import Invariant


class DurableChecks(CheckerBase):
    """The durable images after a crash and at the end (3, 4, 6), and the liveness helpers (7)."""

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

    def _audit_passes(self, host: Any, shard: int, img: ShardImage, where: str) -> bool:
        """Audit a durable image on its own; on problems, fail with the first (and up to three
        more as evidence). False when the run has failed, now or earlier."""
        if self.failed is not None:
            return False
        problems = audit_image(img, where, self._max_changed(host, shard))
        if problems:
            inv, msg = problems[0]
            self.fail(inv, msg, *[m for _, m in problems[1:4]])
            return False
        return True

    def resync_shard(self, host: Any, shard: int, img: ShardImage, where: str) -> None:
        """After a crash: check the durable image against the model, then adopt it."""
        if not self._audit_passes(host, shard, img, where):
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
                                     self._now() + (lease.expiry_ms - host.clock.now_ms()) / 1000,
                                     gen=None)
                j.last_task_id = lease.task_id
                self.live_leases[lease.task_id] = key
                self.task_owner[lease.task_id] = LeaseOwner(
                    lease.worker_id, shard, j.tenant, j.job_id, lease.attempt)

    def final_shard(self, host: Any, shard: int, img: ShardImage, where: str) -> None:
        """After a clean stop: the durable image must pass the audit and equal the model."""
        if not self._audit_passes(host, shard, img, where):
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

    def status_of(self, key: JobKey) -> str | None:
        j = self.jobs.get(key)
        return None if j is None else j.status
