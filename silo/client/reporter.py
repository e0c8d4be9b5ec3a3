"""Reporter: delivers a worker's outcome reports until each is acknowledged or dropped.

Contract:
- reports go out in ReportOutcomes batches, one sender per node address at a time; a batch holds
  at most ``REPORT_BATCH_MAX`` reports and its encoded request stays under the client's
  ``max_message_bytes`` (a report larger than that alone cannot be sent and is dropped);
- linger: a new report waits up to ``linger_ms`` (measured from when the oldest report waiting
  for that address was submitted) for others to join its batch; a full batch goes at once, and
  no report waits longer than ``linger_ms`` for company (retries wait for their backoff only);
- transient errors (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, whole call or per
  report) are retried with bounded exponential backoff while the report's lease would still be
  alive (``HeldLease.deadline``, which the worker's heartbeats keep extending) and for at most
  ``REPORT_TRIES_MAX`` tries;
- "shard not found" (whole call or per report) re-routes the report through the client's routing
  (owner hint, else a fresh shard map) and tries again;
- each report of a batch settles on its own status: one refused report never drops the others;
  a whole-call refusal of a multi-report batch (e.g. INVALID_ARGUMENT for one bad report) splits
  the batch and sends its reports alone;
- a report is *dropped* only for a stated reason (refused, lease lost or expired, tries spent,
  worker stopped); every drop is logged at ERROR with that reason, counted in
  ``stats.reports_dropped`` and passed to the observer as ("dropped", 1);
- a *result* the server refuses as INVALID_ARGUMENT (too large, say) is dropped like any other,
  and replaced by a failure with code ``RESULT_REJECTED`` carrying the server's reason, so the
  attempt ends now instead of when its lease expires;
- ``on_settled(lease, acknowledged)`` is called exactly once per lease.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from silo.client.client import SiloClient
from silo.client.heartbeats import is_shard_not_found
from silo.client.leases import HeldLease
from silo.client.types import pack
from silo.errors import Code
from silo.node import SHARD_OWNER_METADATA
from silo.rpc import RpcError
from silo.runtime.faults import NO_FAULTS, Faults
from silo.wire import pb

log = logging.getLogger("silo.worker")

REPORT_BATCH_MAX = 500
LINGER_MS = 1.0
"""Default of ``Reporter(linger_ms=...)`` (and of ``Worker(report_linger_ms=...)``)."""
LINGER_MS_MAX = 1000.0
REQUEST_OVERHEAD_BYTES = 1024
"""Headroom left under ``max_message_bytes`` for framing that a batch's sizing does not count."""
REPORT_TRIES_MAX = 200
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0
RESULT_REJECTED = "RESULT_REJECTED"
REJECTION_MESSAGE_MAX_CHARS = 1000
TRANSIENT = frozenset({Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.RESOURCE_EXHAUSTED})


@dataclass
class ReporterStats:
    reports_acknowledged: int = 0
    reports_retried: int = 0
    reports_dropped: int = 0


@dataclass(eq=False)
class PendingReport:
    lease: HeldLease
    outcome: pb.Outcome
    size_bytes: int
    """Bytes this report adds to a ReportOutcomesRequest (field tag, length and message)."""
    tries: int = 0
    not_before: float = 0.0
    submitted_at: float = 0.0
    """Trio time of :meth:`Reporter.submit`."""
    alone: bool = False
    """Send in a batch of its own (its batch was refused as a whole)."""
    last_error: str = ""


def _field_size(message_bytes: int) -> int:
    varint = 1
    while message_bytes >= 0x80 ** varint:
        varint += 1
    return 1 + varint + message_bytes


class Reporter:
    def __init__(
        self,
        client: SiloClient,
        stats: ReporterStats,
        *,
        on_settled: Callable[[HeldLease, bool], None],
        observer: Callable[[str, int], None] | None = None,
        on_dropped: Callable[[pb.Task, pb.Outcome, str], None] | None = None,
        faults: Faults = NO_FAULTS,
        linger_ms: float = LINGER_MS,
    ) -> None:
        if not 0 <= linger_ms <= LINGER_MS_MAX:
            raise ValueError(f"report linger_ms {linger_ms} is outside 0..{LINGER_MS_MAX:g}")
        self._linger_s = linger_ms / 1000
        self._faults = faults
        self._client = client
        self.stats = stats
        self._on_settled = on_settled
        self._observer = observer
        self._on_dropped = on_dropped
        self._queue: list[PendingReport] = []
        """Reports waiting to be sent (now, or after their backoff)."""
        self._outstanding: dict[str, PendingReport] = {}
        """Every report not yet settled, queued or in flight, by task id."""
        self._busy: dict[str, bool] = {}
        self._wake = trio.Event()
        self._settled = trio.Event()

    @property
    def max_batch_bytes(self) -> int:
        return self._client.max_message_bytes - REQUEST_OVERHEAD_BYTES

    @property
    def pending(self) -> int:
        return len(self._outstanding)

    def submit(self, lease: HeldLease, outcome: pb.Outcome) -> None:
        """Queue the report of ``lease``'s outcome (at most one per lease)."""
        assert lease.task_id not in self._outstanding, "one report per lease"
        item = PendingReport(lease, outcome, _field_size(len(bytes(outcome))),
                             submitted_at=trio.current_time())
        self._outstanding[lease.task_id] = item
        self._queue.append(item)
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                due: dict[str, list[PendingReport]] = {}
                waiting: list[PendingReport] = []
                next_due = math.inf
                for item in self._queue:
                    address = item.lease.address
                    if item.not_before <= now and not self._busy.get(address):
                        due.setdefault(address, []).append(item)
                    else:
                        waiting.append(item)
                        if item.not_before > now:
                            next_due = min(next_due, item.not_before)
                for address in sorted(due):
                    items = due[address]
                    linger_until = self._linger_until(items)
                    if linger_until > now:
                        waiting += items
                        next_due = min(next_due, linger_until)
                        continue
                    self._busy[address] = True
                    nursery.start_soon(self._send_all, address, items)
                self._queue = waiting
                with trio.move_on_at(next_due):
                    await self._wake.wait()
                self._wake = trio.Event()

    def _linger_until(self, items: list[PendingReport]) -> float:
        """When the due reports ``items`` of one address should go: now (``-inf``) for a full
        batch or one holding a retry, else ``linger_ms`` after the oldest was submitted."""
        if not self._linger_s or len(items) >= REPORT_BATCH_MAX:
            return -math.inf
        if any(item.tries for item in items):
            return -math.inf
        return min(item.submitted_at for item in items) + self._linger_s

    async def drain(self, deadline: float) -> bool:
        """Wait until every report has settled or ``deadline`` (trio time) passes; whether all
        settled."""
        with trio.move_on_at(deadline):
            while self._outstanding:
                await self._settled.wait()
                self._settled = trio.Event()
        return not self._outstanding

    def close(self, reason: str) -> None:
        """Drop every report not yet settled (the worker is going away)."""
        for item in list(self._outstanding.values()):
            self._drop(item, reason)
        self._queue = []

    # -- sending ----------------------------------------------------------------------------

    def _batches(self, items: list[PendingReport]) -> list[list[PendingReport]]:
        batches: list[list[PendingReport]] = []
        current: list[PendingReport] = []
        size = 0
        for item in items:
            if item.alone or item.size_bytes > self.max_batch_bytes:
                batches.append([item])
                continue
            if current and (len(current) >= REPORT_BATCH_MAX
                            or size + item.size_bytes > self.max_batch_bytes):
                batches.append(current)
                current, size = [], 0
            current.append(item)
            size += item.size_bytes
        if current:
            batches.append(current)
        return batches

    async def _send_all(self, address: str, items: list[PendingReport]) -> None:
        try:
            for batch in self._batches(items):
                live = [item for item in batch if self._still_live(item)]
                if live:
                    await self._send(address, live)
        finally:
            self._busy.pop(address, None)
            self._wake.set()

    def _still_live(self, item: PendingReport) -> bool:
        if self._outstanding.get(item.lease.task_id) is not item:
            return False
        if item.size_bytes > self.max_batch_bytes:
            self._drop(item, f"report of {item.size_bytes} bytes exceeds the client's "
                             f"max_message_bytes of {self._client.max_message_bytes}")
            return False
        if item.tries and trio.current_time() >= item.lease.deadline:
            self._drop(item, f"its lease would have expired after {item.tries} tries "
                             f"(last error: {item.last_error})")
            return False
        return True

    async def _send(self, address: str, batch: list[PendingReport]) -> None:
        if self._faults.buggify("worker.report.delay"):
            await trio.sleep(1.0)
        request = pb.ReportOutcomesRequest(outcomes=[item.outcome for item in batch])
        try:
            resp = await self._client.call_address(
                address, "ReportOutcomes", request, pb.ReportOutcomesResponse
            )
        except RpcError as exc:
            await self._call_failed(address, batch, exc)
            return
        acknowledged = 0
        statuses = list(resp.statuses)
        rerouted: dict[int, str] = {}
        for i, item in enumerate(batch):
            if i >= len(statuses):
                self._retry(item, "the server sent fewer statuses than reports")
                continue
            status = statuses[i]
            if status.code == 0:
                acknowledged += 1
                self._acknowledged(item)
            elif is_shard_not_found(status.code, status.message):
                if item.lease.shard not in rerouted:
                    rerouted[item.lease.shard] = await self._client.owner_address(
                        item.lease.shard, stale=address
                    )
                item.lease.address = rerouted[item.lease.shard]
                self._retry(item, status.message)
            elif status.code in TRANSIENT:
                self._retry(item, f"{Code(status.code).name}: {status.message}")
            else:
                self._refused(item, status.code, status.message)
        if acknowledged and self._observer is not None:
            self._observer("reported", acknowledged)

    async def _call_failed(self, address: str, batch: list[PendingReport], exc: RpcError) -> None:
        error = f"{exc.code.name}: {exc.message}"
        if is_shard_not_found(exc.code, exc.message):
            # One shard per address is enough to learn where its reports go now; the others in
            # the batch re-route on their own retry if they too moved.
            new_address = await self._client.owner_address(
                batch[0].lease.shard, stale=address, hint=exc.metadata.get(SHARD_OWNER_METADATA)
            )
            for item in batch:
                if item.lease.shard == batch[0].lease.shard:
                    item.lease.address = new_address
                self._retry(item, error)
        elif exc.code == Code.RESOURCE_EXHAUSTED and len(batch) > 1:
            self._split(batch, error)
        elif exc.code in TRANSIENT and self._faults.mutation("reports-dropped-on-error"):
            # Planted bug for the simulator: the batch is abandoned, unlogged and uncounted.
            for item in batch:
                if self._outstanding.pop(item.lease.task_id, None) is item:
                    self._settled.set()
                    self._on_settled(item.lease, False)
        elif exc.code in TRANSIENT:
            log.info("reports to %s failed (%s); retrying", address, exc)
            for item in batch:
                self._retry(item, error)
        elif len(batch) > 1:
            log.info("a batch of %d reports to %s was refused (%s); sending them one by one",
                     len(batch), address, exc)
            self._split(batch, error)
        else:
            self._refused(batch[0], exc.code, exc.message)

    # -- settling ---------------------------------------------------------------------------

    def _split(self, batch: list[PendingReport], error: str) -> None:
        for item in batch:
            item.alone = True
            item.last_error = error
            self._queue.append(item)
        self._wake.set()

    def _retry(self, item: PendingReport, error: str) -> None:
        item.tries += 1
        item.last_error = error
        if item.tries >= REPORT_TRIES_MAX:
            self._drop(item, f"not acknowledged after {item.tries} tries (last error: {error})")
            return
        self.stats.reports_retried += 1
        delay = min(BACKOFF_INITIAL_S * 2 ** min(item.tries - 1, 10), BACKOFF_MAX_S)
        item.not_before = trio.current_time() + delay
        self._queue.append(item)
        self._wake.set()

    def _acknowledged(self, item: PendingReport) -> None:
        if self._outstanding.pop(item.lease.task_id, None) is not item:
            return
        self.stats.reports_acknowledged += 1
        self._settled.set()
        self._on_settled(item.lease, True)

    def _refused(self, item: PendingReport, code: int, message: str) -> None:
        self._faults.sometimes("worker.report.refused")
        reason = f"refused with {_code_name(code)}: {message}"
        if code != Code.INVALID_ARGUMENT or item.outcome.success is None:
            self._drop(item, reason)
            return
        o = item.outcome
        replacement = pb.Outcome(
            shard=o.shard, worker_id=o.worker_id, task_id=o.task_id, tenant=o.tenant,
            job_id=o.job_id, attempt=o.attempt,
            failure=pb.Failure(code=RESULT_REJECTED, data=pack({
                "code": _code_name(code), "message": message[:REJECTION_MESSAGE_MAX_CHARS],
            })),
        )
        self._drop(item, f"{reason}; reporting {RESULT_REJECTED} instead", replacement)

    def _drop(self, item: PendingReport, reason: str,
              replacement: pb.Outcome | None = None) -> None:
        if self._outstanding.pop(item.lease.task_id, None) is not item:
            return
        task = item.lease.task
        log.error("report for job %s (tenant %s, attempt %d, task %s) dropped: %s",
                  task.job_id, task.tenant, task.attempt, task.task_id, reason)
        self.stats.reports_dropped += 1
        self._settled.set()
        if self._observer is not None:
            self._observer("dropped", 1)
        if self._on_dropped is not None:
            self._on_dropped(task, item.outcome, reason)
        if replacement is not None:
            self.submit(item.lease, replacement)
        else:
            self._on_settled(item.lease, False)


def _code_name(code: int) -> str:
    try:
        return Code(code).name
    except ValueError:
        return f"code {code}"
