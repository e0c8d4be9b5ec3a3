"""Worker: leases tasks of one task group, runs a handler on each, heartbeats, reports.

Contract:
- at most ``max_concurrent_tasks`` handlers run at once; leasing asks for exactly the free slots
  and long-polls, so an idle worker costs one RPC per poll window, not a busy loop;
- every running task is heartbeated at a fraction of its lease; a heartbeat that says the job
  was cancelled sets ``ctx.cancelled``; a heartbeat that finds the lease gone (reaped, or owned
  by someone else) abandons the task: its handler is cancelled and nothing is reported;
- a handler's return value is the result; ``raise Fail(code, data)`` fails with that code; any
  other exception fails with ``HANDLER_ERROR``; ``raise Cancel()`` reports a cancellation;
- outcomes are reported in batches (one ReportOutcomes per shard owner per flush) and retried
  until the server answers (reports are idempotent);
- ``stop(timeout)`` stops leasing, lets running handlers finish for up to ``timeout`` seconds,
  then abandons the rest (their leases expire and the jobs are retried elsewhere).
"""

from __future__ import annotations

import inspect
import logging
import math
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from silo.client.client import SiloClient
from silo.client.types import Cancel, Fail, pack, unpack
from silo.errors import Code
from silo.model import Cancelled, Failure, Outcome, OutcomeReport, Success
from silo.rpc import RpcError
from silo.runtime.faults import NO_FAULTS, Faults
from silo.wire import outcome_to_pb, pb

log = logging.getLogger("silo.worker")

HANDLER_ERROR = "HANDLER_ERROR"
LEASE_WAIT_MS = 5_000
REPORT_BATCH = 500
CANCEL_GRACE_S = 5.0


@dataclass
class TaskContext:
    """What a handler receives for one task."""

    payload: Any
    job_id: str
    tenant: str
    attempt: int
    task_id: str
    task_group: str
    priority: int
    metadata: dict[str, str]
    cancelled: trio.Event = field(default_factory=trio.Event)
    """Set when a heartbeat reports that the job was cancelled."""

    @property
    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()


@dataclass
class RefreshContext:
    """What a refresh handler receives: compute and return the queue's new max."""

    queue: str
    tenant: str
    current_max: int
    metadata: dict[str, str]


HandlerFn = Callable[[TaskContext], Any]
RefreshFn = Callable[[RefreshContext], Any]


@dataclass
class _Running:
    task: pb.Task
    address: str
    ctx: TaskContext
    scope: trio.CancelScope
    abandoned: bool = False


def handler_kind(handler: HandlerFn) -> str:
    """"trio", "asyncio" or "sync". Async functions are trio functions unless marked with
    :func:`asyncio_handler`."""
    if getattr(handler, "__silo_asyncio__", False):
        return "asyncio"
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        type(handler).__call__
    ):
        return "trio"
    return "sync"


async def call_handler(fn: Callable[..., Any], kind: str, ctx: Any) -> Any:
    """Run a handler of ``kind`` ("trio", "asyncio" or "sync") on ``ctx``; return its value."""
    if kind == "trio":
        return await fn(ctx)
    if kind == "asyncio":
        from silo.transport.aio import run_asyncio_handler

        return await run_asyncio_handler(fn, ctx)
    from silo.runtime.threads import run_in_thread

    return await run_in_thread(fn, ctx)


def asyncio_handler(fn: Callable[[TaskContext], Awaitable[Any]]) -> Callable[..., Any]:
    """Mark an ``async def`` handler as asyncio code (run through trio-asyncio)."""
    fn.__silo_asyncio__ = True  # type: ignore[attr-defined]
    return fn


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
        worker_id: str | None = None,
        heartbeat_fraction: float = 1 / 3,
        lease_wait_ms: int = LEASE_WAIT_MS,
        kind: str | None = None,
        observer: Callable[[str, int], None] | None = None,
        refresh_handler: RefreshFn | None = None,
        faults: Faults = NO_FAULTS,
    ) -> None:
        if max_concurrent_tasks < 1:
            raise ValueError("max_concurrent_tasks must be at least 1")
        self.client = client
        self.task_group = task_group
        self.handler = handler
        self.kind = kind or handler_kind(handler)
        if self.kind not in ("trio", "asyncio", "sync"):
            raise ValueError(f"unknown handler kind {self.kind!r}")
        self.max_concurrent_tasks = max_concurrent_tasks
        self.faults = faults
        """Forced rare paths and probes (silo.runtime.points); the simulator's, or none."""
        self.refresh_handler = refresh_handler
        """Answers floating-limit refresh tasks with the queue's new max (an int)."""
        self.observer = observer
        """Called with ("leased", n) after each lease response and ("reported", n) after each
        acknowledged batch of reports (benchmarks and tests use it)."""
        self.worker_id = worker_id or f"worker-{client.new_id()[:12]}"
        self.heartbeat_fraction = heartbeat_fraction
        self.lease_wait_ms = lease_wait_ms
        self._running: dict[str, _Running] = {}
        self._slots = trio.Semaphore(max_concurrent_tasks)
        self._stopping = trio.Event()
        self._stop_deadline = math.inf
        self._lease_ms = 30_000
        self._lease_ms_known = trio.Event()
        self._reports: list[tuple[str, int, OutcomeReport]] = []
        self._reports_ready = trio.Event()
        self._in_flight_reports = 0
        self.completed = 0
        self.failed = 0
        self.abandoned = 0

    # -- control ----------------------------------------------------------------------------

    def stop(self, timeout: float = 30.0) -> None:
        """Stop leasing; running handlers get ``timeout`` seconds to finish."""
        self._stop_deadline = trio.current_time() + timeout
        self._stopping.set()

    async def run(self) -> None:
        """Lease and run tasks until :meth:`stop`; returns once every handler has finished or
        been abandoned and every outcome has been reported (or given up on)."""
        async with trio.open_nursery() as outer:
            outer.start_soon(self._heartbeat_loop)
            outer.start_soon(self._report_loop)
            async with trio.open_nursery() as tasks:
                async with trio.open_nursery() as leasers:
                    for address in self.client.owner_addresses():
                        leasers.start_soon(self._lease_loop, address, tasks)
                    await self._stopping.wait()
                    leasers.cancel_scope.cancel()
                with trio.move_on_at(self._stop_deadline):
                    while self._running:
                        await trio.sleep(0.01)
                for running in list(self._running.values()):
                    running.abandoned = True
                    running.scope.cancel()
            with trio.move_on_at(self._stop_deadline + 5):
                while self._reports or self._in_flight_reports:
                    self._reports_ready.set()
                    await trio.sleep(0.01)
            outer.cancel_scope.cancel()

    # -- leasing ----------------------------------------------------------------------------

    async def _lease_loop(self, address: str, tasks: trio.Nursery) -> None:
        failures = 0
        while True:
            await self._slots.acquire()
            free = 1
            while free < self.max_concurrent_tasks:
                try:
                    self._slots.acquire_nowait()
                except trio.WouldBlock:
                    break
                free += 1
            try:
                resp = await self.client.call_address(
                    address,
                    "LeaseTasks",
                    pb.LeaseTasksRequest(
                        worker_id=self.worker_id, task_group=self.task_group,
                        max_tasks=free, all_shards=True, wait_ms=self.lease_wait_ms,
                    ),
                    pb.LeaseTasksResponse,
                    timeout=self.lease_wait_ms / 1000 + self.client.retry.call_timeout_s,
                )
                failures = 0
            except RpcError as exc:
                resp = None
                failures += 1
                log.info("lease from %s failed (%s); retrying", address, exc)
            if resp is None:
                for _ in range(free):
                    self._slots.release()
                await trio.sleep(min(0.05 * 2 ** min(failures, 6), 2.0))
                continue
            if resp.lease_ms:
                self._lease_ms = resp.lease_ms
            if resp.lease_ms or resp.tasks:
                self._lease_ms_known.set()
            for _ in range(free - len(resp.tasks)):
                self._slots.release()
            if resp.tasks and self.observer is not None:
                self.observer("leased", len(resp.tasks))
            for task in resp.tasks:
                tasks.start_soon(self._run_task, task, address)

    # -- running ----------------------------------------------------------------------------

    async def _run_task(self, task: pb.Task, address: str) -> None:
        if task.refresh is not None and task.attempt == 0:
            try:
                await self._run_refresh(task, address)
            finally:
                self._slots.release()
            return
        try:
            ctx = TaskContext(
                payload=unpack(task.payload), job_id=task.job_id, tenant=task.tenant,
                attempt=task.attempt, task_id=task.task_id, task_group=task.task_group,
                priority=task.priority, metadata=dict(task.metadata),
            )
        except Exception as exc:
            self._queue_report(task, address, Failure("PAYLOAD_DECODE_ERROR", pack(str(exc))))
            self._slots.release()
            return
        running = _Running(task, address, ctx, trio.CancelScope())
        self._running[task.task_id] = running
        outcome: Outcome | None = None
        try:
            with running.scope:
                outcome = await self._invoke(ctx)
        finally:
            del self._running[task.task_id]
            self._slots.release()
        if outcome is None and not running.abandoned and ctx.is_cancelled:
            # The job was cancelled and its handler overran the grace period: it was stopped,
            # and the attempt ends as cancelled rather than waiting for its lease to expire.
            outcome = Cancelled()
        if running.abandoned or outcome is None:
            self.abandoned += 1
            return
        self._queue_report(task, address, outcome)

    async def _invoke(self, ctx: TaskContext) -> Outcome:
        try:
            value = await call_handler(self.handler, self.kind, ctx)
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
                    "traceback": traceback.format_exc(limit=20)}
            return Failure(HANDLER_ERROR, pack(data))

    async def _run_refresh(self, task: pb.Task, address: str) -> None:
        """Compute a floating limit's new max and report it (a failure backs it off)."""
        assert task.refresh is not None
        ctx = RefreshContext(task.refresh.queue, task.tenant, task.refresh.current_max,
                             dict(task.refresh.metadata))
        request = pb.ReportRefreshRequest(
            shard=task.shard, worker_id=self.worker_id, task_id=task.task_id
        )
        fn = self.refresh_handler
        try:
            if fn is None:
                raise Fail("NO_REFRESH_HANDLER", "this worker has no refresh_handler")
            value = await call_handler(fn, handler_kind(fn), ctx)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise Fail("BAD_REFRESH_VALUE", f"refresh handler returned {value!r}")
            request.new_max = value
        except trio.Cancelled:
            raise
        except Fail as exc:
            request.failure = pb.Failure(code=exc.code, data=pack(exc.data))
        except Exception as exc:
            log.info("refresh handler failed for queue %s: %r", ctx.queue, exc)
            request.failure = pb.Failure(code=HANDLER_ERROR, data=pack(str(exc)))
        for attempt in range(10):
            try:
                await self.client.call_address(
                    address, "ReportRefresh", request, pb.ReportRefreshResponse
                )
                return
            except RpcError as exc:
                if exc.code not in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                    log.info("refresh report for %s refused: %s", ctx.queue, exc)
                    return
                await trio.sleep(min(0.05 * 2**attempt, 2.0))

    # -- heartbeats -------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        # The heartbeat interval depends on the server's lease length, which the first lease
        # response tells; sleeping on the 30 s default first would let shorter leases expire.
        await self._lease_ms_known.wait()
        while True:
            await trio.sleep(max(0.01, self._lease_ms / 1000 * self.heartbeat_fraction))
            async with trio.open_nursery() as nursery:
                for running in list(self._running.values()):
                    nursery.start_soon(self._heartbeat, running)

    async def _heartbeat(self, running: _Running) -> None:
        task = running.task
        if self.faults.buggify("worker.heartbeat.delay"):
            await trio.sleep(self._lease_ms / 2000)
        try:
            resp = await self.client.call_address(
                running.address, "Heartbeat",
                pb.HeartbeatRequest(shard=task.shard, worker_id=self.worker_id,
                                    task_id=task.task_id),
                pb.HeartbeatResponse,
            )
        except RpcError as exc:
            if exc.code in (Code.NOT_FOUND, Code.FAILED_PRECONDITION):
                # The lease is gone (reaped) or belongs to someone else: abandon silently.
                self.faults.sometimes("worker.heartbeat.lease_lost")
                log.info("lease lost for task %s: %s", task.task_id, exc)
                running.abandoned = True
                running.scope.cancel()
            return
        if resp.cancelled and not running.ctx.cancelled.is_set():
            self.faults.sometimes("worker.heartbeat.cancel_seen")
            running.ctx.cancelled.set()
            if self.kind == "trio":
                running.scope.deadline = min(
                    running.scope.deadline, trio.current_time() + CANCEL_GRACE_S
                )

    # -- reporting --------------------------------------------------------------------------

    def _queue_report(self, task: pb.Task, address: str, outcome: Outcome) -> None:
        if isinstance(outcome, Success):
            self.completed += 1
        else:
            self.failed += 1
        report = OutcomeReport(self.worker_id, task.task_id, outcome, task.tenant, task.job_id,
                               task.attempt)
        self._reports.append((address, task.shard, report))
        self._reports_ready.set()

    async def _report_loop(self) -> None:
        while True:
            await self._reports_ready.wait()
            self._reports_ready = trio.Event()
            while self._reports:
                batch, self._reports = self._reports[:REPORT_BATCH], self._reports[REPORT_BATCH:]
                self._in_flight_reports += len(batch)
                try:
                    await self._send_reports(batch)
                finally:
                    self._in_flight_reports -= len(batch)

    async def _send_reports(self, batch: list[tuple[str, int, OutcomeReport]]) -> None:
        if self.faults.buggify("worker.report.delay"):
            await trio.sleep(self._lease_ms / 2000)
        by_address: dict[str, list[tuple[int, OutcomeReport]]] = {}
        for address, shard, report in batch:
            by_address.setdefault(address, []).append((shard, report))
        for address in sorted(by_address):
            items = by_address[address]
            request = pb.ReportOutcomesRequest(outcomes=[outcome_to_pb(s, r) for s, r in items])
            for attempt in range(60):
                try:
                    resp = await self.client.call_address(
                        address, "ReportOutcomes", request, pb.ReportOutcomesResponse
                    )
                except RpcError as exc:
                    if exc.code not in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                        log.warning("reports to %s refused: %s", address, exc)
                        break
                    await trio.sleep(min(0.05 * 2**attempt, 2.0))
                    continue
                if self.observer is not None:
                    self.observer("reported", len(items))
                for (_, report), status in zip(items, resp.statuses, strict=False):
                    if status.code:
                        self.faults.sometimes("worker.report.refused")
                        log.info("report for task %s refused: %s", report.task_id,
                                 status.message)
                break
