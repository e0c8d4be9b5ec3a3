"""HeldLease: what the worker knows about one lease it holds."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from silo.client.handlers import TaskContext
from silo.wire import pb


@dataclass(eq=False)
class HeldLease:
    """One leased task, from the LeaseTasks reply that brought it until its report is
    acknowledged (or dropped), or until the worker gives it up.

    It is heartbeated for all that time, so the lease cannot lapse while it waits for a slot, nor
    while its report waits in the queue or is retried. It is acknowledged only once its handler
    starts: until then its heartbeats are marked ``waiting``. ``deadline`` is the trio time at
    which the server would reap it if no heartbeat got through from now on: from the arrival of
    the LeaseTasks reply at first (the server's lease starts at its grant, somewhere in a long
    poll, so the reply is the first moment the worker knows of it; the server's expiry can be
    earlier by the reply's transit), then from when each successful heartbeat was sent.
    """

    task: pb.Task
    address: str
    """Where to send its heartbeats and report (re-routed on "shard not found")."""
    deadline: float
    next_heartbeat_at: float
    received_at: float = 0.0
    """Trio time at which the LeaseTasks reply carrying it arrived."""
    ctx: TaskContext | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    """Wraps the handler; cancelled when the lease is lost or the worker gives the task up."""
    handler_running: bool = False
    abandoned: bool = False
    """The handler's outcome will not be reported (lease lost, or worker stopped)."""
    lost: bool = False
    """The server said the lease is gone (reaped, or owned by another worker)."""
    heartbeats_in_flight: int = 0
    """Its heartbeats sent and not answered yet (at most ``heartbeats.IN_FLIGHT_MAX``)."""
    heartbeat_failures: int = 0
    waiting: bool = True
    """Its handler has not started (prefetched, or just received): its heartbeats extend the
    lease without acknowledging its delivery (DESIGN §4 "Delivery")."""
    acked: bool = False
    """The server took its delivery ack (on a LeaseTasks call or a heartbeat of the started
    task), as far as the worker knows."""

    @property
    def task_id(self) -> str:
        return self.task.task_id

    @property
    def shard(self) -> int:
        return self.task.shard
