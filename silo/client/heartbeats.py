"""Heartbeater: keeps the worker's leases alive.

Contract:
- a lease whose handler has not started (``HeldLease.waiting``) is heartbeated with
  ``waiting`` set: the server extends it without acknowledging its delivery, so if the worker
  dies before starting it, its expiry is undelivered and charges no attempt (DESIGN §4);
- a lease is heartbeated first soon after its handler starts (``FIRST_HEARTBEAT_FRACTION`` of
  the lease; :meth:`Heartbeater.started`), which acknowledges its delivery when the worker does
  not lease again soon; once its ack rode on a successful LeaseTasks call
  (:meth:`Heartbeater.acknowledged`) that early heartbeat is skipped, so a busy worker sends no
  heartbeat for a task that ends quickly; otherwise every ``heartbeat_fraction`` of the lease
  (from its arrival), until it is removed;
- heartbeats are paced from when they were sent, not from when they were answered: while a
  heartbeat waits for its answer (the server answers once the extension is durable, so a slow
  write delays it), the next one still goes out on time, up to ``IN_FLIGHT_MAX`` per lease.
  The server extends the lease (in memory, for its reaper) when a heartbeat arrives, so slow
  answers do not widen the gap between two extensions; pacing from the answer made that gap
  the interval plus the round trip, and a write slower than the rest of the lease (a 400 ms
  stall under a 500 ms lease) expired a healthy worker's lease between two heartbeats;
- a failed heartbeat is retried sooner;
- "shard not found" is not a lost lease: the lease is re-routed (owner hint, else a fresh shard
  map) and heartbeated again at once;
- only NOT_FOUND "lease not found" and FAILED_PRECONDITION (owner mismatch) mean the lease is
  lost: ``on_lost(lease, error)`` is called and the lease is no longer heartbeated; any other
  error is retried at a shorter interval;
- a reply saying the job was cancelled calls ``on_cancel_requested(lease)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from silo.client.client import SiloClient
from silo.client.leases import HeldLease
from silo.errors import Code
from silo.node import SHARD_OWNER_METADATA
from silo.rpc import RpcError
from silo.runtime.faults import NO_FAULTS, Faults
from silo.wire import pb

log = logging.getLogger("silo.worker")

FIRST_HEARTBEAT_FRACTION = 0.05
RETRY_MIN_S = 0.05
REROUTES_MAX = 3
"""Immediate re-routes in a row before a lease's heartbeat waits for its next turn."""
IN_FLIGHT_MAX = 8
"""Most heartbeats of one lease waiting for their answers at once. Pacing from the send keeps
the rate at one per interval however slow the answers, so this only bounds the calls held
open: with the default interval (a third of the lease) the lease's extensions keep arriving
while answers are up to 8/3 of a lease late (each call times out after at most half the lease
or 1 s, whichever is longer, so short leases reach it first)."""


def is_shard_not_found(code: int, message: str) -> bool:
    return code == Code.NOT_FOUND and message.startswith("shard not found")


def is_lease_lost(code: int, message: str) -> bool:
    """NOT_FOUND "lease not found" (reaped) or FAILED_PRECONDITION (another worker's lease)."""
    return (code == Code.NOT_FOUND and message.startswith("lease not found")) or (
        code == Code.FAILED_PRECONDITION
    )


class Heartbeater:
    def __init__(
        self,
        client: SiloClient,
        worker_id: str,
        *,
        heartbeat_fraction: float,
        on_lost: Callable[[HeldLease, RpcError], None],
        on_cancel_requested: Callable[[HeldLease], None],
        faults: Faults = NO_FAULTS,
    ) -> None:
        self._faults = faults
        self._client = client
        self._worker_id = worker_id
        self._fraction = heartbeat_fraction
        self._on_lost = on_lost
        self._on_cancel_requested = on_cancel_requested
        self.lease_s = 30.0
        """The server's lease length (updated from each LeaseTasks reply)."""
        self._leases: dict[str, HeldLease] = {}
        self._wake = trio.Event()

    @property
    def interval_s(self) -> float:
        return max(0.01, self.lease_s * self._fraction)

    @property
    def first_s(self) -> float:
        """How soon a started, unacknowledged lease is heartbeated (to acknowledge it)."""
        return min(self.interval_s, self.lease_s * FIRST_HEARTBEAT_FRACTION)

    def add(self, lease: HeldLease) -> None:
        """Heartbeat ``lease`` from now on (soon, if its handler already started)."""
        due_s = self.interval_s if lease.waiting or lease.acked else self.first_s
        lease.next_heartbeat_at = trio.current_time() + due_s
        self._leases[lease.task_id] = lease
        self._wake.set()

    def started(self, lease: HeldLease) -> None:
        """``lease``'s handler is starting: from now on its heartbeats acknowledge it, the
        next one soon (unless a LeaseTasks call carries its ack first)."""
        lease.waiting = False
        if self._leases.get(lease.task_id) is not lease or lease.acked:
            return
        # Even while a (waiting) heartbeat is still unanswered: that one cannot acknowledge.
        lease.next_heartbeat_at = min(lease.next_heartbeat_at,
                                      trio.current_time() + self.first_s)
        self._wake.set()

    def acknowledged(self, task_ids: list[str]) -> None:
        """The server took these leases' acks on a LeaseTasks call: their early heartbeat is
        not needed for delivery, so they move back to the ordinary interval (from the last
        call that extended them)."""
        for task_id in task_ids:
            lease = self._leases.get(task_id)
            if lease is None:
                continue
            lease.acked = True
            lease.next_heartbeat_at = max(
                lease.next_heartbeat_at, lease.deadline - self.lease_s + self.interval_s
            )

    def remove(self, lease: HeldLease) -> None:
        if self._leases.get(lease.task_id) is lease:
            del self._leases[lease.task_id]

    def __len__(self) -> int:
        return len(self._leases)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                next_due = math.inf
                for lease in list(self._leases.values()):
                    if lease.heartbeats_in_flight >= IN_FLIGHT_MAX:
                        continue  # the next answer wakes this loop
                    if lease.next_heartbeat_at <= now:
                        lease.heartbeats_in_flight += 1
                        # Paced from now: the next one is due even if this one is slow.
                        lease.next_heartbeat_at = now + self.interval_s
                        nursery.start_soon(self._beat, lease)
                    next_due = min(next_due, lease.next_heartbeat_at)
                with trio.move_on_at(next_due):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _beat(self, lease: HeldLease) -> None:
        if self._faults.buggify("worker.heartbeat.delay"):
            await trio.sleep(self.lease_s / 2)
        sent_at = trio.current_time()
        address = lease.address
        waiting = lease.waiting
        try:
            resp = await self._client.call_address(
                address, "Heartbeat",
                pb.HeartbeatRequest(shard=lease.shard, worker_id=self._worker_id,
                                    task_id=lease.task_id, waiting=waiting),
                pb.HeartbeatResponse,
                timeout=min(self._client.retry.call_timeout_s, max(1.0, self.lease_s / 2)),
            )
        except RpcError as exc:
            lease.heartbeat_failures += 1
            if is_shard_not_found(exc.code, exc.message):
                lease.address = await self._client.owner_address(
                    lease.shard, stale=address, hint=exc.metadata.get(SHARD_OWNER_METADATA)
                )
                immediate = lease.heartbeat_failures <= REROUTES_MAX
                self._due_by(lease, trio.current_time() + (
                    0 if immediate else self._retry_delay_s(lease)
                ))
            elif is_lease_lost(exc.code, exc.message):
                if self._leases.get(lease.task_id) is lease:
                    self.remove(lease)
                    lease.lost = True
                    self._on_lost(lease, exc)
            else:
                log.info("heartbeat for task %s failed (%s); retrying", lease.task_id, exc)
                self._due_by(lease, trio.current_time() + self._retry_delay_s(lease))
            return
        finally:
            lease.heartbeats_in_flight -= 1
            self._wake.set()
        lease.heartbeat_failures = 0
        lease.deadline = max(lease.deadline, sent_at + self.lease_s)
        if not waiting:
            lease.acked = True
        # Started while this (waiting) heartbeat was in flight: acknowledge it soon.
        if not (lease.waiting or lease.acked):
            self._due_by(lease, trio.current_time() + self.first_s)
        if resp.cancelled:
            self._on_cancel_requested(lease)

    @staticmethod
    def _due_by(lease: HeldLease, at: float) -> None:
        """Heartbeat ``lease`` at ``at`` at the latest (never later than already due)."""
        lease.next_heartbeat_at = min(lease.next_heartbeat_at, at)

    def _retry_delay_s(self, lease: HeldLease) -> float:
        return min(self.interval_s, RETRY_MIN_S * 2 ** min(lease.heartbeat_failures, 8))

