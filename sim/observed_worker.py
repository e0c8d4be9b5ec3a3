"""A real :class:`~silo.client.worker.Worker` that tells the checker what its SDK computed.

Invariant 15 (DESIGN §7): every outcome a handler produced while its lease was live must end up
durably recorded as that attempt's state, or be dropped by the SDK with a reason
(``on_report_dropped``). This subclass reports both through the worker's own hooks
(``_task_finished`` and ``on_report_dropped``); it changes nothing the worker does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from silo.client.worker import TaskContext, Worker
from silo.model import Cancelled, Failure, Outcome, Success
from silo.pb.silo import v1 as pb

if TYPE_CHECKING:
    from sim.checkers import Checker


def attempt_state(outcome: Outcome) -> str:
    """The attempt state a recorded ``outcome`` leaves (an AttemptState name)."""
    if isinstance(outcome, Success):
        return "SUCCEEDED"
    if isinstance(outcome, Failure):
        return "FAILED"
    assert isinstance(outcome, Cancelled)
    return "CANCELLED"


class ObservedWorker(Worker):
    def __init__(self, checker: Checker, *args: Any, **kwargs: Any) -> None:
        self._checker = checker
        super().__init__(*args, **kwargs, on_report_dropped=self._dropped)
        checker.on_worker_created(self.worker_id)
        self.killed = False
        """Set when the simulator kills this worker: the cancellation that models the kill
        unwinds its tasks, and a waiting task that a freed slot "starts" during that unwinding
        is not a start (a killed process runs nothing)."""

    def _task_started(self, task: pb.Task) -> None:
        if not self.killed:
            self._checker.on_handler_started(self.worker_id, task.task_id)

    def _task_finished(self, ctx: TaskContext, outcome: Outcome | None,
                       elapsed_s: float) -> None:
        if outcome is not None:
            self._checker.on_outcome_computed(self.worker_id, ctx.task_id, attempt_state(outcome))

    def _dropped(self, task: pb.Task, outcome: pb.Outcome, reason: str) -> None:
        self._checker.on_report_dropped(self.worker_id, task.task_id, reason)


__all__ = ["ObservedWorker", "attempt_state"]
