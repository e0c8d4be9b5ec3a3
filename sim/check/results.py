"""Worker results recorded or dropped with a reason (15); no poison item (17)."""

from __future__ import annotations

from typing import Any

from sim import events
from sim.check.base import CheckerBase
from sim.check.model import (
    _host_name,
)
from sim.invariants import Invariant


class ResultChecks(CheckerBase):
    """Worker results recorded or dropped with a reason (15); no poison item (17)."""

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

    def on_worker_created(self, worker_id: str) -> None:
        """An SDK worker (which reports its handler starts) came up under ``worker_id``."""
        self.sdk_workers.add(worker_id)

    def on_handler_started(self, worker_id: str, task_id: str) -> None:
        """A worker started the handler of ``task_id``."""
        self.started_handlers.add(task_id)

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
