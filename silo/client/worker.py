"""Worker: leases tasks of one task group, runs a handler on each, heartbeats, reports.

Contract:
- at most ``max_concurrent_tasks`` handlers run at once, and at most ``prefetch`` more tasks are
  held leased but unstarted: leasing asks for the free slots plus the free prefetch room and
  long-polls, so an idle worker costs one RPC per poll window, not a busy loop, and a slot that
  frees starts the next prefetched task at once instead of waiting a round trip. Tasks start in
  the order they were leased (each reply is in priority order). A slot stays taken until its
  handler has really stopped (see :mod:`silo.client.slots`);
- a prefetched task counts as delivered only once its handler starts (DESIGN §4 "Delivery"):
  while it waits it is heartbeated with ``waiting`` set, which keeps its lease alive without
  acknowledging it, so a worker killed while holding prefetched tasks leaves them undelivered
  (re-queued without charging an attempt), never ``WORKER_CRASHED``. One whose job is
  cancelled while it waits, every one still waiting
  at :meth:`Worker.stop`, and all of them when every slot becomes stuck, are handed back
  (reported ``released``): the server re-queues them at once without charging an attempt
  (DESIGN §4 "Delivery"), or ends a cancelled job CANCELLED. A floating-limit refresh task
  cannot be handed back: one still waiting then is left to its lease expiry;
- delivery: every task whose handler starts is acknowledged (``TaskAck``) on the next LeaseTasks
  call to the node it came from, and heartbeated (acknowledging it) soon after it starts, so a
  busy worker that does not lease again still acknowledges it within a small fraction of the
  lease;
- every task is heartbeated (see :mod:`silo.client.heartbeats`) from its arrival until its
  report is acknowledged, so its lease cannot lapse while the report waits or is retried
  (floating-limit refresh tasks excepted: they are short and their report acknowledges them). A
  heartbeat that says the job was cancelled sets ``ctx.cancelled`` and gives the handler
  ``CANCEL_GRACE_S`` more; past that it is cancelled (trio) or abandoned (thread, asyncio) and
  the attempt is reported cancelled. A heartbeat that finds the lease gone (reaped, or owned by
  someone else) gives the task up: its handler is cancelled or abandoned, nothing is reported;
- timeouts: an attempt may run for the job's ``timeout_ms`` (or the worker's
  ``default_timeout_ms``); then its handler is cancelled (trio) or abandoned (thread, asyncio)
  and the attempt is reported failed with code ``TIMEOUT``;
- a handler's return value is the result; ``raise Fail(code, data)`` fails with that code; any
  other exception fails with ``HANDLER_ERROR``; ``raise Cancel()`` reports a cancellation;
- outcomes are reported by :mod:`silo.client.reporter` (batched by count and bytes with a
  ``report_linger_ms`` linger, retried, re-routed; a dropped report is logged at ERROR and
  counted in ``stats.reports_dropped``);
- ``stop(timeout)`` stops leasing at once: a LeaseTasks call in flight is cancelled, and the
  tasks it may have leased are neither run nor acknowledged (the server puts them back as
  undelivered, without charging their retry budget); no waiting task starts any more, and the
  waiting ones are handed back (above). Running handlers get ``timeout`` seconds to
  finish, then are abandoned (their leases expire and the jobs are retried elsewhere); pending
  reports are sent within the same ``timeout`` (at least ``REPORT_DRAIN_MIN_S``), and any still
  unacknowledged then are dropped (logged and counted).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from silo.client.client import SiloClient
from silo.client.handlers import (
    HandlerFn,
    RefreshContext,
    RefreshFn,
    TaskContext,
    asyncio_handler,
    call_handler,
    handler_kind,
)
from silo.client.heartbeats import Heartbeater, is_shard_not_found
from silo.client.leases import HeldLease
from silo.client.reporter import LINGER_MS, Reporter, ReporterStats
from silo.client.slots import Slot, SlotPool
from silo.client.tracebacks import portable_traceback
from silo.client.types import Cancel, Fail, pack, unpack
from silo.errors import Code, SiloError
from silo.model import Cancelled, Failure, Outcome, OutcomeReport, Released, Success
from silo.node import SHARD_OWNER_METADATA
from silo.rpc import RpcError
from silo.runtime.faults import NO_FAULTS, Faults
from silo.wire import outcome_to_pb, pb

__all__ = [
    "HandlerFn", "RefreshContext", "RefreshFn", "TaskContext", "Worker", "WorkerStats",
    "asyncio_handler", "call_handler", "handler_kind",
]

log = logging.getLogger("silo.worker")

HANDLER_ERROR = "HANDLER_ERROR"
TIMEOUT = "TIMEOUT"
DISCOVER_INTERVAL_S = 5.0
"""Default of :attr:`Worker.discover_interval_s`."""

LEASE_WAIT_MS = 5_000
EMPTY_POLL_WAIT_MS = 1_000
"""With ``lease_wait_ms`` below this, empty lease replies back off up to this long."""
EMPTY_BACKOFF_FIRST_S = 0.01
"""The backoff after the first empty lease reply; it doubles with each further one."""
SHARED_LEASE_WAIT_MS = 250
"""While the worker leases from several nodes, no LeaseTasks waits longer than this: the slots a
long poll holds cannot serve another node's work, so one idle node must not keep them for a
whole ``lease_wait_ms`` while another has tasks."""
LEASE_WAIT_MS_MAX = 30_000
"""The server's bound on LeaseTasks ``wait_ms``."""
MAX_CONCURRENT_TASKS_MAX = 1000
"""The server's default ``max_tasks_per_lease``: a worker asks for up to this many at once."""
PREFETCH_MAX = 1000
"""Bound on :attr:`Worker.prefetch` (one LeaseTasks call asks for at most
``MAX_CONCURRENT_TASKS_MAX`` tasks whatever the prefetch)."""
TIMEOUT_MS_MAX = 24 * 3600 * 1000
HEARTBEAT_FRACTION_MAX = 100.0
CANCEL_GRACE_S = 5.0
REPORT_DRAIN_MIN_S = 1.0
ACKS_MAX = 1000
"""Acknowledgements carried by one LeaseTasks request (older ones are left to heartbeats)."""
REFRESH_REPORT_TRIES = 10


def empty_reply_backoff_s(empty_replies: int) -> float:
    """How long the worker sleeps before its next LeaseTasks after ``empty_replies`` (>= 1)
    empty replies in a row, when ``lease_wait_ms`` is below :data:`EMPTY_POLL_WAIT_MS`:
    10 ms doubling to :data:`EMPTY_POLL_WAIT_MS`. Non-decreasing in ``empty_replies``; a reply
    with tasks starts the count again."""
    return min(EMPTY_BACKOFF_FIRST_S * 2 ** min(empty_replies - 1, 10),
               EMPTY_POLL_WAIT_MS / 1000)


@dataclass
class WorkerStats(ReporterStats):
    """Counters of one worker (read them any time)."""

    timeouts: int = 0
    """Attempts failed with ``TIMEOUT``."""
    leases_lost: int = 0
    """Tasks given up because a heartbeat found their lease gone."""
    stuck_handlers: int = 0
    """Abandoned handlers whose thread or asyncio task is still running (each holds a slot)."""
    all_slots_stuck: int = 0
    """How many times every slot became held by a stuck handler."""
    prefetched: int = 0
    """Tasks that arrived while no slot was free (or others waited) and waited for one."""
    handed_back: int = 0
    """Prefetched tasks handed back unstarted (reported ``released``)."""


class Worker:
    """Runs ``handler`` for the tasks of ``task_group``. ``await worker.run()`` until
    :meth:`stop`."""

    def __init__(
        self,
        client: SiloClient,
        task_group: str,
        handler: HandlerFn,
        *,
        max_concurrent_tasks: int = 10,
        prefetch: int | None = None,
        worker_id: str | None = None,
        heartbeat_fraction: float = 1 / 3,
        lease_wait_ms: int = LEASE_WAIT_MS,
        kind: str | None = None,
        observer: Callable[[str, int], None] | None = None,
        refresh_handler: RefreshFn | None = None,
        faults: Faults = NO_FAULTS,
        default_timeout_ms: int | None = None,
        on_report_dropped: Callable[[pb.Task, pb.Outcome, str], None] | None = None,
        discover_interval_s: float | None = DISCOVER_INTERVAL_S,
        report_linger_ms: float = LINGER_MS,
    ) -> None:
        _check_int("max_concurrent_tasks", max_concurrent_tasks, 1, MAX_CONCURRENT_TASKS_MAX)
        if prefetch is None:
            prefetch = default_prefetch(max_concurrent_tasks)
        _check_int("prefetch", prefetch, 0, PREFETCH_MAX)
        _check_int("lease_wait_ms", lease_wait_ms, 0, LEASE_WAIT_MS_MAX)
        if default_timeout_ms is not None:
            _check_int("default_timeout_ms", default_timeout_ms, 1, TIMEOUT_MS_MAX)
        if not 0 < heartbeat_fraction <= HEARTBEAT_FRACTION_MAX:
            # Above 1 only makes sense to test what a server does with a stale worker.
            raise ValueError(
                f"heartbeat_fraction {heartbeat_fraction} is outside (0, {HEARTBEAT_FRACTION_MAX}]"
            )
        if discover_interval_s is not None and not 0 < discover_interval_s <= 3600:
            raise ValueError(f"discover_interval_s {discover_interval_s} is outside (0, 3600]")
        self.discover_interval_s = discover_interval_s
        """How often the worker fetches the cluster info to lease from nodes that gained
        shards (and stop leasing from nodes that have none); None: only the nodes known at
        :meth:`run`'s start."""
        self._discover_now = trio.Event()
        self.client = client
        self.task_group = task_group
        self.handler = handler
        self.kind = kind or handler_kind(handler)
        if self.kind not in ("trio", "asyncio", "sync"):
            raise ValueError(f"unknown handler kind {self.kind!r}")
        self.max_concurrent_tasks = max_concurrent_tasks
        self.prefetch = prefetch
        """Tasks leased beyond the free slots, waiting unstarted for one (0: lease only for free
        slots; default :func:`default_prefetch`)."""
        self.faults = faults
        """Forced rare paths and probes (silo.runtime.points); the simulator's, or none."""
        self.default_timeout_ms = default_timeout_ms
        """The attempt timeout for jobs enqueued without ``timeout_ms`` (None: no timeout)."""
        self.refresh_handler = refresh_handler
        """Answers floating-limit refresh tasks with the queue's new max (an int)."""
        self.observer = observer
        """Called with ("leased", n) after each lease response, ("reported", n) after each
        acknowledged batch of reports, ("dropped", 1) for each dropped report, ("timeout", 1)
        for each timed-out attempt and ("stuck", n) when the number of stuck handlers changes
        (benchmarks and tests use it). ``on_report_dropped(task, outcome, reason)`` is called
        for each report given up (the simulator checks every computed result is recorded or
        dropped with a reason)."""
        self.worker_id = worker_id or f"worker-{client.new_id()[:12]}"
        self.heartbeat_fraction = heartbeat_fraction
        self.lease_wait_ms = lease_wait_ms
        self.stats = WorkerStats()
        self._slots = SlotPool(max_concurrent_tasks, on_stuck=self._stuck_changed,
                               prefetch=prefetch, on_run_free=self._start_waiting)
        self._lease_loops = 0
        """Lease loops running (one per node leased from)."""
        self._running: dict[str, HeldLease] = {}
        """Leases whose handler is running, by task id."""
        self._waiting: dict[str, tuple[HeldLease, Slot]] = {}
        """Leased tasks waiting for a run slot, by task id, in lease order (dict order)."""
        self._acks: dict[str, list[pb.TaskAck]] = {}
        """Delivery acks of started tasks, by the address of the node to carry them (the lease
        loop of that node sends them on its next LeaseTasks call)."""
        self._tasks: trio.Nursery | None = None
        self._handler_done = trio.Event()
        self._stopping = trio.Event()
        self._stop_deadline = math.inf
        self._heartbeats = Heartbeater(
            client, self.worker_id, heartbeat_fraction=heartbeat_fraction,
            on_lost=self._lease_lost, on_cancel_requested=self._cancel_requested, faults=faults,
        )
        self._reporter = Reporter(client, self.stats, on_settled=self._report_settled,
                                  observer=observer, on_dropped=on_report_dropped,
                                  faults=faults, linger_ms=report_linger_ms)
        self.report_linger_ms = report_linger_ms
        """How long a report waits for others to share its ReportOutcomes call (at most)."""
        self.completed = 0
        self.failed = 0
        self.abandoned = 0

    # -- control ----------------------------------------------------------------------------

    def stop(self, timeout: float = 30.0) -> None:
        """Stop leasing; running handlers and pending reports get ``timeout`` seconds (see the
        module docstring for what happens to a LeaseTasks call in flight)."""
        self._stop_deadline = trio.current_time() + timeout
        self._stopping.set()

    async def run(self) -> None:
        """Lease and run tasks until :meth:`stop`; returns once every handler has finished or
        been abandoned and every outcome has been acknowledged or dropped."""
        async with trio.open_nursery() as outer:
            outer.start_soon(self._heartbeats.run)
            outer.start_soon(self._reporter.run)
            try:
                async with trio.open_nursery() as tasks:
                    self._tasks = tasks
                    async with trio.open_nursery() as leasers:
                        leasers.start_soon(self._follow_nodes, leasers, tasks)
                        await self._stopping.wait()
                        leasers.cancel_scope.cancel()
                    self._hand_back_waiting()
                    with trio.move_on_at(self._stop_deadline):
                        while self._running:
                            await self._handler_done.wait()
                            self._handler_done = trio.Event()
                    for lease in list(self._running.values()):
                        lease.abandoned = True
                        lease.scope.cancel()
            finally:
                # A stuck body that returns later frees its slot: nothing may start then.
                self._tasks = None
            drain_until = max(self._stop_deadline, trio.current_time() + REPORT_DRAIN_MIN_S)
            await self._reporter.drain(drain_until)
            self._reporter.close("the worker stopped before the server acknowledged it")
            outer.cancel_scope.cancel()

    # -- leasing ----------------------------------------------------------------------------

    async def _follow_nodes(self, leasers: trio.Nursery, tasks: trio.Nursery) -> None:
        """One lease loop per node that owns shards: started when a node appears in the
        cluster info, retired (at its next call boundary) when it no longer owns any."""
        retired: dict[str, list[bool]] = {}
        while True:
            addresses = self.client.owner_addresses()
            for address in addresses:
                if address not in retired:
                    flag = retired[address] = [False]
                    leasers.start_soon(self._lease_loop, address, tasks, flag)
            for address in sorted(retired):
                if address not in addresses:
                    retired.pop(address)[0] = True
            if self.discover_interval_s is None:
                return
            with trio.move_on_after(self.discover_interval_s):
                await self._discover_now.wait()
            self._discover_now = trio.Event()
            try:
                await self.client.refresh_shard_map(force=True)
            except SiloError as exc:
                log.info("refreshing the cluster info failed (%s); keeping the known nodes", exc)

    async def _lease_loop(self, address: str, tasks: trio.Nursery,
                          retired: list[bool] | None = None) -> None:
        self._lease_loops += 1
        try:
            await self._lease_from(address, tasks, retired)
        finally:
            self._lease_loops -= 1

    def _poll_shape(self) -> tuple[int, int]:
        """``(wait_ms, most lease credits)`` for the next LeaseTasks of one lease loop. One
        loop: the configured wait and every free credit. Several (one per node): each takes at
        most its share of the credits and waits at most :data:`SHARED_LEASE_WAIT_MS`, so a node
        with work gets a credit within that long of one freeing, whatever the others hold."""
        credits = self._slots.credits
        loops = max(1, self._lease_loops)
        if loops == 1 or self.faults.mutation("hoard-slots-across-nodes"):
            return self.lease_wait_ms, credits
        share = -(-credits // loops)
        return min(self.lease_wait_ms, SHARED_LEASE_WAIT_MS), share

    async def _lease_from(self, address: str, tasks: trio.Nursery,
                          retired: list[bool] | None) -> None:
        failures = 0
        empty_replies = 0
        acks = self._acks.setdefault(address, [])
        while not (retired and retired[0]):
            wait_ms, most_slots = self._poll_shape()
            if (empty_replies and wait_ms < EMPTY_POLL_WAIT_MS
                    and not self.faults.mutation("no-empty-lease-backoff")):
                # The server answers at once when asked not to wait: back off instead of
                # asking again in a busy loop (10 ms doubling to EMPTY_POLL_WAIT_MS).
                await trio.sleep(empty_reply_backoff_s(empty_replies))
            await self._slots.wait_not_all_stuck()
            slots = [await self._slots.acquire()]
            try:
                # Every further free credit up to this call's share, taken at once: as many
                # as acquire_nowait() would give one by one until it raised WouldBlock (none
                # while another lease loop waits for a credit).
                slots += self._slots.acquire_up_to(
                    min(most_slots, MAX_CONCURRENT_TASKS_MAX) - len(slots))
                # Tasks start while the call waits (long poll): their acks go on the next one.
                sent_acks = acks[-ACKS_MAX:]
                acks.clear()
                try:
                    resp = await self.client.call_address(
                        address,
                        "LeaseTasks",
                        pb.LeaseTasksRequest(
                            worker_id=self.worker_id, task_group=self.task_group,
                            max_tasks=len(slots), all_shards=True, wait_ms=wait_ms,
                            acks=sent_acks,
                        ),
                        pb.LeaseTasksResponse,
                        timeout=wait_ms / 1000 + self.client.retry.call_timeout_s,
                    )
                    failures = 0
                    self._heartbeats.acknowledged([a.task_id for a in sent_acks])
                except RpcError as exc:
                    failures += 1
                    if failures == 2:
                        self._discover_now.set()  # the node may be gone or its shards moved
                    if exc.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                        acks[:0] = sent_acks  # sent again on the next call
                        del acks[:-ACKS_MAX]
                        log.info("lease from %s failed (%s); retrying", address, exc)
                    else:
                        # Heartbeats acknowledge the tasks too; acks that a server refuses must
                        # not keep every later lease call failing: they are dropped.
                        log.warning("lease from %s refused (%s); retrying", address, exc)
                    # Slot.finish() on each, in order:
                    self._slots.finish_all(slots)
                    slots = []
                    await trio.sleep(min(0.05 * 2 ** min(failures, 6), 2.0))
                    continue
                received_at = trio.current_time()
                empty_replies = 0 if resp.tasks else empty_replies + 1
                if resp.lease_ms:
                    self._heartbeats.lease_s = resp.lease_ms / 1000
                if len(resp.tasks) > len(slots):
                    log.error("%s sent %d tasks for %d slots; the extra ones are not run",
                              address, len(resp.tasks), len(slots))
                if resp.tasks and self.observer is not None:
                    self.observer("leased", min(len(resp.tasks), len(slots)))
                for task, slot in zip(resp.tasks, list(slots), strict=False):
                    slots.remove(slot)
                    lease = HeldLease(task, address, deadline=received_at + self._lease_s,
                                      next_heartbeat_at=received_at, received_at=received_at)
                    if self.faults.mutation("ack-waiting"):
                        # Planted bug for the simulator: every task is acknowledged on
                        # arrival, so one that waits unstarted counts as delivered.
                        lease.waiting = False
                        self._ack(lease)
                    if not _is_refresh(task):
                        # Refresh tasks are short and acknowledged by their report alone.
                        self._heartbeats.add(lease)
                    self._admit(lease, slot)
            finally:
                # Slot.finish() on each, in order:
                self._slots.finish_all(slots)

    @property
    def _lease_s(self) -> float:
        return self._heartbeats.lease_s

    # -- prefetched tasks -------------------------------------------------------------------

    def _admit(self, lease: HeldLease, slot: Slot) -> None:
        """Start a task just leased, or queue it behind the tasks already waiting."""
        if not self._waiting and not self._stopping.is_set() and self._slots.try_start(slot):
            self._start(lease, slot)
            return
        if self._slots.stuck >= self._slots.size and not self._stopping.is_set():
            # Leased while the last slot got stuck: it could not start, so it goes back.
            slot.finish()
            self._hand_back(lease)
            return
        self.stats.prefetched += 1
        self._waiting[lease.task_id] = (lease, slot)

    def _start(self, lease: HeldLease, slot: Slot) -> None:
        """Start ``lease``'s handler: only now is the task delivered, so only now is it
        acknowledged (its next heartbeat, or the next LeaseTasks call, carries the ack)."""
        assert self._tasks is not None
        if lease.waiting:
            self._heartbeats.started(lease)
            self._ack(lease)
        self._tasks.start_soon(self._run_task, lease, slot)

    def _ack(self, lease: HeldLease) -> None:
        """Queue the delivery ack of ``lease`` for the next LeaseTasks call to its node (when
        no lease loop serves that node, its heartbeats acknowledge it instead)."""
        acks = self._acks.get(lease.address)
        if acks is None:
            return
        acks.append(pb.TaskAck(shard=lease.shard, task_id=lease.task_id))
        del acks[:-ACKS_MAX]  # the oldest are left to their heartbeats

    def _start_waiting(self) -> None:
        """A run slot freed: start waiting tasks in lease order while slots are free."""
        if self._stopping.is_set() or self._tasks is None:
            return
        while self._waiting:
            task_id = next(iter(self._waiting))
            lease, slot = self._waiting[task_id]
            if not self._slots.try_start(slot):
                return
            del self._waiting[task_id]
            self._start(lease, slot)

    def _hand_back_waiting(self) -> None:
        """Hand back every task still waiting for a slot (the worker is stopping, or every
        slot is stuck)."""
        waiting = list(self._waiting.values())
        self._waiting.clear()
        for lease, slot in waiting:
            slot.finish()
            self._hand_back(lease)
        if self._stopping.is_set() and self.faults.mutation("release-started"):
            # Planted bug for the simulator: running tasks are handed back as if unstarted.
            for lease in list(self._running.values()):
                lease.abandoned = True
                lease.scope.cancel()
                self._hand_back(lease)

    def _hand_back(self, lease: HeldLease) -> None:
        """Report an unstarted task ``released``: the server re-queues it without charging an
        attempt (or ends it CANCELLED if its job was cancelled)."""
        task = lease.task
        if _is_refresh(task):
            log.info("refresh task %s was not started; its lease is left to expire", task.task_id)
            return
        self.faults.sometimes("worker.prefetch.released")
        self.stats.handed_back += 1
        report = OutcomeReport(self.worker_id, task.task_id, Released(), task.tenant,
                               task.job_id, task.attempt)
        self._reporter.submit(lease, outcome_to_pb(task.shard, report))

    # -- running ----------------------------------------------------------------------------

    def _timeout_ms(self, task: pb.Task) -> int | None:
        if self.faults.mutation("no-handler-timeout"):
            return None  # planted bug for the simulator: attempts run without a timeout
        return task.timeout_ms or self.default_timeout_ms

    async def _run_task(self, lease: HeldLease, slot: Slot) -> None:
        task = lease.task
        self._task_started(task)
        if _is_refresh(task):
            try:
                await self._run_refresh(lease, slot)
            finally:
                slot.finish()
                self._heartbeats.remove(lease)
            return
        timeout_ms = self._timeout_ms(task)
        try:
            ctx = TaskContext(
                payload=unpack(task.payload), job_id=task.job_id, tenant=task.tenant,
                attempt=task.attempt, task_id=task.task_id, task_group=task.task_group,
                priority=task.priority, metadata=dict(task.metadata), timeout_ms=timeout_ms,
            )
        except Exception as exc:
            slot.finish()
            self._finish(lease, Failure("PAYLOAD_DECODE_ERROR", pack(str(exc))))
            return
        lease.ctx = ctx
        lease.handler_running = True
        started_at = trio.current_time()
        self._running[task.task_id] = lease
        outcome: Outcome | None = None
        timed_out = False
        try:
            with lease.scope:
                with trio.move_on_after(math.inf if timeout_ms is None else timeout_ms / 1000) \
                        as timeout_scope:
                    outcome = await self._invoke(ctx, slot)
                timed_out = timeout_scope.cancelled_caught
        finally:
            # Released now, or (a thread or asyncio task that ignores cancellation) when its
            # body really returns.
            slot.finish()
            lease.handler_running = False
            del self._running[task.task_id]
            self._handler_done.set()
        if lease.abandoned:
            self.abandoned += 1
            self._heartbeats.remove(lease)
            self._task_finished(ctx, None, trio.current_time() - started_at)
            return
        if timed_out:
            self.stats.timeouts += 1
            if self.observer is not None:
                self.observer("timeout", 1)
            log.warning("job %s (attempt %d) timed out after %d ms", task.job_id, task.attempt,
                        timeout_ms)
            outcome = Failure(TIMEOUT, pack({
                "timeout_ms": timeout_ms,
                "message": f"the handler did not finish within {timeout_ms} ms",
            }))
        elif outcome is None:
            # Only a cancel's grace period ending stops a handler without a lost lease or stop:
            # the attempt ends as cancelled rather than waiting for its lease to expire.
            outcome = Cancelled()
        self._task_finished(ctx, outcome, trio.current_time() - started_at)
        self._finish(lease, outcome)

    async def _invoke(self, ctx: TaskContext, slot: Slot | None = None) -> Outcome:
        try:
            value = await call_handler(self.handler, self.kind, ctx, slot)
            return Success(pack(value))
        except Fail as exc:
            return Failure(exc.code, pack(exc.data))
        except Cancel:
            return Cancelled()
        except trio.Cancelled:
            raise
        except Exception as exc:
            self.faults.sometimes("worker.handler.failed")
            log.info("handler failed for job %s: %r", ctx.job_id, exc)
            data = {"type": type(exc).__name__, "message": str(exc),
                    "traceback": portable_traceback(exc)}
            return Failure(HANDLER_ERROR, pack(data))

    def _task_started(self, task: pb.Task) -> None:
        """Hook: the handler of ``task`` is about to run (it has a run slot)."""

    def _task_finished(self, ctx: TaskContext, outcome: Outcome | None,
                       elapsed_s: float) -> None:
        """Hook: ``ctx``'s handler ended with ``outcome`` after ``elapsed_s`` seconds (None:
        abandoned, nothing will be reported)."""

    def _finish(self, lease: HeldLease, outcome: Outcome) -> None:
        if isinstance(outcome, Success):
            self.completed += 1
        else:
            self.failed += 1
        task = lease.task
        report = OutcomeReport(self.worker_id, task.task_id, outcome, task.tenant, task.job_id,
                               task.attempt)
        self._reporter.submit(lease, outcome_to_pb(task.shard, report))

    async def _run_refresh(self, lease: HeldLease, slot: Slot) -> None:
        """Compute a floating limit's new max and report it (a failure backs it off)."""
        task = lease.task
        assert task.refresh is not None
        ctx = RefreshContext(task.refresh.queue, task.tenant, task.refresh.current_max,
                             dict(task.refresh.metadata))
        request = pb.ReportRefreshRequest(
            shard=task.shard, worker_id=self.worker_id, task_id=task.task_id
        )
        fn = self.refresh_handler
        timeout_ms = self._timeout_ms(task)
        try:
            if fn is None:
                raise Fail("NO_REFRESH_HANDLER", "this worker has no refresh_handler")
            with trio.fail_after(math.inf if timeout_ms is None else timeout_ms / 1000):
                value = await call_handler(fn, handler_kind(fn), ctx, slot)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise Fail("BAD_REFRESH_VALUE", f"refresh handler returned {value!r}")
            request.new_max = value
        except trio.TooSlowError:
            request.failure = pb.Failure(code=TIMEOUT, data=pack(timeout_ms))
        except trio.Cancelled:
            raise
        except Fail as exc:
            request.failure = pb.Failure(code=exc.code, data=pack(exc.data))
        except Exception as exc:
            log.info("refresh handler failed for queue %s: %r", ctx.queue, exc)
            request.failure = pb.Failure(code=HANDLER_ERROR, data=pack(str(exc)))
        slot.finish()
        for attempt in range(REFRESH_REPORT_TRIES):
            address = lease.address
            try:
                await self.client.call_address(
                    address, "ReportRefresh", request, pb.ReportRefreshResponse
                )
                return
            except RpcError as exc:
                if is_shard_not_found(exc.code, exc.message):
                    lease.address = await self.client.owner_address(
                        task.shard, stale=address, hint=exc.metadata.get(SHARD_OWNER_METADATA)
                    )
                elif exc.code not in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED,
                                      Code.RESOURCE_EXHAUSTED):
                    log.info("refresh report for %s refused: %s", ctx.queue, exc)
                    return
                await trio.sleep(min(0.05 * 2**attempt, 2.0))
        log.warning("refresh report for %s not acknowledged after %d tries", ctx.queue,
                    REFRESH_REPORT_TRIES)

    # -- callbacks --------------------------------------------------------------------------

    def _cancel_requested(self, lease: HeldLease) -> None:
        self.faults.sometimes("worker.heartbeat.cancel_seen")
        waiting = self._waiting.pop(lease.task_id, None)
        if waiting is not None:
            # Not started yet: hand it back, and the server ends it CANCELLED.
            waiting[1].finish()
            self._hand_back(lease)
            return
        ctx = lease.ctx
        if ctx is None or ctx.cancelled.is_set() or not lease.handler_running:
            return
        ctx.cancelled.set()
        lease.scope.deadline = min(lease.scope.deadline, trio.current_time() + CANCEL_GRACE_S)

    def _lease_lost(self, lease: HeldLease, error: RpcError) -> None:
        self.faults.sometimes("worker.heartbeat.lease_lost")
        self.stats.leases_lost += 1
        waiting = self._waiting.pop(lease.task_id, None)
        if waiting is not None:
            log.info("lease lost for waiting task %s of job %s (%s)", lease.task_id,
                     lease.task.job_id, error)
            waiting[1].finish()
            return
        if lease.handler_running:
            log.warning("lease lost for task %s of job %s (%s): its handler is given up",
                        lease.task_id, lease.task.job_id, error)
            lease.abandoned = True
            lease.scope.cancel()
        else:
            log.info("lease lost for task %s of job %s (%s)", lease.task_id, lease.task.job_id,
                     error)

    def _report_settled(self, lease: HeldLease, acknowledged: bool) -> None:
        self._heartbeats.remove(lease)

    def _stuck_changed(self, stuck: int) -> None:
        if stuck >= self.max_concurrent_tasks and stuck > self.stats.stuck_handlers:
            self.stats.all_slots_stuck += 1
            if self._waiting and not self._stopping.is_set():
                # None of them could start until a stuck body returns: let others run them.
                log.warning("handing back %d waiting tasks: every slot is stuck",
                            len(self._waiting))
                self._hand_back_waiting()
        self.stats.stuck_handlers = stuck
        if self.observer is not None:
            self.observer("stuck", stuck)


def default_prefetch(max_concurrent_tasks: int) -> int:
    """The default :attr:`Worker.prefetch`: as many tasks as there are slots, so a full worker
    has a next task ready for each slot when its handler returns (bounded by
    :data:`PREFETCH_MAX`)."""
    return min(max_concurrent_tasks, PREFETCH_MAX)


def _is_refresh(task: pb.Task) -> bool:
    return task.refresh is not None and task.attempt == 0


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} {value} is outside {low}..{high}")
