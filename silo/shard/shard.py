"""JobShard: one shard's jobs, attempts, queues and leases, stored in one ordered KV store.

Contract (DESIGN §3-§4):

- Every operation is one atomic batch. Mutations are serialized by the shard lock; each computes
  its batch on the current state (durable state plus batches still being written), then waits for
  the group-commit writer, and replies only once its batch is durable.
- In-memory state (ready queue, timers, leases, counters) mirrors the stored tables and is
  rebuilt from disk on open and after any failed write.
- Leasing moves a task from the ready queue to a lease in one batch under the lock, so no task
  is ever handed out twice; every hand-out has a new attempt number and task id.
- Outcome reports are idempotent per task id and fenced by task id and worker id.

JobShard is the facade; the work lives in rooms sharing one :class:`ShardContext`:
``commit.py`` (lock, batch, durability wait), ``rows.py`` (job rows), ``limiter.py``
(concurrency and rate limits), ``transitions.py`` (job state machine), ``leasing.py`` (leases,
reports, reaper), ``operations.py`` (cancel, restart, expedite, delete), ``reads.py`` and
``loops.py`` (timer and reaper loops), ``quarantine.py`` (poison items: jobs failed
``INTERNAL_ERROR``, rows quarantined). Enqueue is here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from silo.errors import Aborted, AlreadyExists, InvalidArgument, SiloError, quote
from silo.keys import Prefix, key
from silo.model import (
    DEFAULT_TENANT,
    ENQUEUE_HELD_BACK,
    TERMINAL_STATUSES,
    AttemptHighWater,
    EnqueueResult,
    JobFingerprint,
    JobInfo,
    JobResult,
    JobView,
    LeasedTask,
    NewJob,
    OutcomeReport,
)
from silo.runtime import Runtime
from silo.runtime.clock import WallAsMonotonic
from silo.shard import transitions
from silo.shard import validation as lim
from silo.shard.cleanup import (
    BATCH_KEYS,
    LIVE_BATCH_KEYS,
    SplitCleanup,
    SplitMarker,
    clean_live_tables,
    read_marker,
)
from silo.shard.commit import CommitProtocol
from silo.shard.context import ShardContext
from silo.shard.fingerprint import job_fingerprint
from silo.shard.leasing import HeartbeatResult, Leasing
from silo.shard.limiter import Limiter, acquisition_order
from silo.shard.loops import ShardLoops
from silo.shard.mirror import COUNTER_PREFIX, ShardMirror, TimerPaging
from silo.shard.operations import OperatorOps
from silo.shard.pages import GroupPaging
from silo.shard.quarantine import PoisonItems
from silo.shard.reads import ShardReads, ShardStatistics
from silo.shard.rows import JobRows
from silo.shard.store import ShardStore
from silo.shard.tables import JOBS_TOTAL, attempt_high_water_key, fingerprint_key
from silo.shard.txn import Txn
from silo.shard.validation import ShardLimits


@dataclass(frozen=True)
class ShardConfig:
    limits: ShardLimits = field(default_factory=ShardLimits)
    lease_ms: int = 30_000
    """How long a lease lasts without a heartbeat."""
    cleanup_batch_keys: int = BATCH_KEYS
    """The most rows one batch of a split child's cleanup examines (and so deletes)."""
    cleanup_pause_s: float = 0.0
    """How long a split child's cleanup waits between batches (0: only yields)."""
    timer_page_rows: int = 10_000
    """Timer rows read from disk at once when paging timers in (0: every timer row is kept
    in memory, no paging). Fewer than this many in memory reads the next page."""
    timer_memory_rows: int = 50_000
    """The most timers kept in memory: past it, the latest ones (due after the lookahead) are
    dropped from memory down to this minus a page (at least twice ``timer_page_rows``)."""
    timer_lookahead_ms: int = 60_000
    """Every timer due (wall time) within this of now is in memory when an operation starts."""

    ready_page_rows: int = 2_000
    """Ready rows of one task group read from disk at once when paging them in (0: every
    ready row is kept in memory, no paging). Fewer than this of a group in memory reads its
    next page; at or above ``max_tasks_per_lease``, a lease is never short for want of rows in
    memory."""
    ready_memory_rows: int = 10_000
    """The most ready rows of one task group kept in memory: past it, the group's latest ones
    are dropped from memory down to this minus a page (at least twice ``ready_page_rows``)."""
    request_page_rows: int = 2_000
    """Parked requests of one concurrency queue read from disk at once (0: every parked request
    is kept in memory, no paging). Fewer than this of a queue in memory reads its next page; a
    grant that runs out of them in the middle of an operation reads the next page then."""
    request_memory_rows: int = 10_000
    """The most parked requests of one queue kept in memory: past it, the queue's latest ones
    are dropped from memory down to this minus a page (at least twice ``request_page_rows``)."""

    def timer_paging(self) -> TimerPaging | None:
        if self.timer_page_rows == 0:
            return None
        return TimerPaging(self.timer_page_rows, self.timer_memory_rows, self.timer_lookahead_ms)

    def ready_paging(self) -> GroupPaging | None:
        if self.ready_page_rows == 0:
            return None
        return GroupPaging(self.ready_page_rows, self.ready_memory_rows)

    def request_paging(self) -> GroupPaging | None:
        if self.request_page_rows == 0:
            return None
        return GroupPaging(self.request_page_rows, self.request_memory_rows)


class JobShard:
    """One shard. Create with :func:`open_shard`."""

    def __init__(self, runtime: Runtime, store: ShardStore, shard_id: int, config: ShardConfig):
        self._rt = runtime
        self._store = store
        self.shard_id = shard_id
        self.config = config
        self._limits = config.limits
        self._mirror = ShardMirror(
            runtime.clock, config.timer_paging(), config.ready_paging(), config.request_paging()
        )
        self._mirror.on_timers_paged = self._timers_paged
        self._mirror.mutation = runtime.faults.mutation
        store.shard_id = shard_id
        self._rng = runtime.random.stream(f"shard/{shard_id}")
        self._rows = JobRows(shard_id, config.limits, self._rng)
        self._limiter = Limiter(self._rows, self._mirror, runtime.faults, shard_id)
        self._commit = CommitProtocol(runtime, store, self._mirror, shard_id, self._limiter.regrant)
        self._lock = self._commit.lock
        self._stats = {
            "enqueued": 0, "leased": 0, "retried": 0, "reaped": 0, "undelivered": 0, "poison": 0,
        }
        self._completed: dict[str, int] = {"succeeded": 0, "failed": 0, "cancelled": 0}
        ctx = ShardContext(
            runtime, store, self._mirror, shard_id, config.limits, config.lease_ms, self._rng,
            self._rows, self._limiter, self._commit, self._stats, self._completed,
        )
        self._leasing = Leasing(ctx)
        self._poison = PoisonItems(ctx, self._leasing.end_attempt)
        self._leasing.poison = self._poison
        self._limiter.on_poison_request = self._poison.queued
        self._commit.after_load = self._poison.quarantine_loaded
        self._ops = OperatorOps(ctx)
        self._reads = ShardReads(ctx)
        self._loops = ShardLoops(runtime, self._mirror, self.promote_due, self.reap_expired)
        self._loops.on_error = self._poison.count
        self._mirror.on_timer_added = self._loops.wake_timer
        self._mirror.on_expiry_added = self._loops.wake_reaper
        self._mirror.on_ready_added = self._ready_added
        self.on_ready: Callable[[int, str], None] = lambda shard_id, task_group: None
        """Called whenever a task of a task group becomes ready (for long-polling leases)."""
        self.cleanup: SplitCleanup | None = None
        """The split cleanup of this shard, when it is a split child (done or not)."""

    def split_marker(self) -> SplitMarker | None:
        """This shard's split-child marker as last written (None: not a split child)."""
        return None if self.cleanup is None else self.cleanup.marker

    # -- lifecycle --------------------------------------------------------------------------

    def _ready_added(self, task_group: str) -> None:
        self.on_ready(self.shard_id, task_group)

    def _timers_paged(
        self, before: bytes | None, after: bytes | None, wall_ms: int, mono_ms: int
    ) -> None:
        """The timer frontier moved (see :class:`ShardMirror`): rows paged in were re-based on
        ``(wall_ms, mono_ms)`` (pending rows excepted)."""
        self._rt.events("timers_paged", {
            "shard": self.shard_id, "node": self._rt.node_id,
            "before": None if before is None else before.hex(),
            "after": None if after is None else after.hex(),
            "at_ms": wall_ms, "mono_ms": mono_ms,
        })

    @property
    def closing(self) -> bool:
        """True once shutdown has started: the shard refuses operations from then on."""
        return self._commit.closing

    def next_timer_due_ms(self) -> int | None:
        """When the earliest task waiting in the timer index is due, as wall time now plus the
        monotonic time until then (timers follow the monotonic clock; None: none waits)."""
        due = self._mirror.next_timer_deadline_ms()
        if due is None:
            return None
        return self._rt.clock.now_ms() + max(0, due - self._rt.clock.monotonic_ms())

    def holds_lease(self, task_id: str) -> bool:
        """True when lease ``task_id`` is live on this shard."""
        return task_id in self._mirror.leases

    def has_ready_tasks(self, task_group: str) -> bool:
        """True when a lease for ``task_group`` could return something now (due timers count)."""
        if self._mirror.ready_per_group.get(task_group):
            return True
        due = self._mirror.next_timer_deadline_ms()
        return due is not None and due <= self._rt.clock.monotonic_ms()

    async def _load(self) -> None:
        await self._commit.load()

    async def _quarantine_after_open(self) -> None:
        """Set aside the rows the open could not decode (DESIGN §4 "No poison"): their jobs
        fail, the rows go to the quarantine table. The writer is not running yet, so the batch
        is written here."""
        async with self._lock:
            txn = self._commit.new_txn()
            await self._poison.quarantine_loaded(txn)
            await self._commit.finish(txn)
            await self._store.flush()

    async def _repair(self) -> None:
        await self._commit.repair()

    async def _shutdown(self) -> None:
        """Stop taking operations and make everything written so far durable."""
        await self._commit.shutdown()

    # -- enqueue ----------------------------------------------------------------------------

    def _validate(self, job: NewJob) -> None:
        L = self._limits
        lim.check_tenant(L, job.tenant)
        if job.job_id is not None:
            lim.check_job_id(L, job.job_id)
        lim.check_task_group(L, job.task_group)
        lim.check_bytes(job.payload, "payload", "payload_max_bytes", L.payload_max_bytes)
        lim.check_priority(L, job.priority)
        lim.check_metadata(L, job.metadata)
        lim.check_retry(L, job.retry)
        lim.check_timeout(L, job.timeout_ms)
        lim.check_job_limits(L, job.limits)
        if job.start_at_ms < 0:
            raise InvalidArgument("start_at_ms must not be negative")

    async def enqueue(self, job: NewJob, *, request_id: str = "") -> str:
        """Store a new job and queue its first attempt; returns the job id.

        Idempotent for a re-sent identical job: when the id is taken by a job with the same
        request fingerprint, nothing is written and the id is returned. ALREADY_EXISTS when a
        different job holds the id. ``request_id``: the id of the enqueue call this try belongs
        to (see :meth:`enqueue_each`).
        """
        return (await self.enqueue_batch([job], request_id=request_id))[0]

    async def enqueue_batch(
        self, jobs: Sequence[NewJob], *, request_id: str = ""
    ) -> list[str]:
        """Store several jobs atomically: all of them are enqueued, or (on any error) none.

        Raises the error of the first job that refused the batch (ALREADY_EXISTS when a
        supplied id holds a different job or is repeated within the batch, INVALID_ARGUMENT
        for a job out of bounds); see :meth:`enqueue_each` for per-job results.
        """
        results = await self.enqueue_each(jobs, request_id=request_id)
        refused = [r.error for r in results if r.error is not None]
        if refused:
            cause = next((e for e in refused if not _held_back(e)), refused[0])
            raise cause
        return [r.job_id for r in results]

    async def enqueue_each(
        self, jobs: Sequence[NewJob], *, request_id: str = ""
    ) -> list[EnqueueResult]:
        """Enqueue several jobs atomically and say, job by job, how each fared.

        ``request_id`` names the enqueue call: a client sends the same id on every try of one
        call, so a try whose answer was lost can be recognised by a later try ("" = no id: a
        call that is never recognised). A created job keeps the id with its fingerprint, and
        its delete carries both into the id's attempt high-water row.

        A job whose id already holds a job with the same request fingerprint (a re-sent
        identical job) is OK ``existed``, whatever the request id, and nothing is written for
        it. A job whose id holds no job but the high-water row of a deleted job with the same
        fingerprint *and* the same non-empty request id is OK ``existed`` and ``deleted``: a
        try of this very call created it and it has been deleted since, so nothing is written
        and the row stays. Any other job whose id holds no job is created (consuming the row:
        its attempts are numbered above it), so an identical job deliberately enqueued again
        after its delete, by a new call, is created again. A job out of bounds (or a request id
        over ``request_id_max_chars``) is INVALID_ARGUMENT; a job whose id holds a different
        job, or whose id an earlier job of the batch already uses, is ALREADY_EXISTS. If any
        job is refused, none is written and every other job is ABORTED ("not written: another
        job in the batch was refused"). An answer decided on rows read is given only once they
        are durable.
        """
        lim.check_request_id(self._limits, request_id)
        if not jobs:
            return []
        if len(jobs) > self._limits.max_jobs_per_batch:
            raise InvalidArgument(
                f"batch has {len(jobs)} jobs; max_jobs_per_batch is "
                f"{self._limits.max_jobs_per_batch}"
            )
        errors: list[SiloError | None] = []
        for job in jobs:
            try:
                self._validate(job)
                errors.append(None)
            except SiloError as exc:
                errors.append(exc)
        results: list[EnqueueResult] = []
        async with self._commit.operation() as txn:
            ids = [j.job_id if j.job_id is not None else self._rows.new_id("j") for j in jobs]
            await txn.prefetch(
                [k for j, i, e in zip(jobs, ids, errors, strict=True) if e is None
                 for k in (key(Prefix.JOB, j.tenant, i), fingerprint_key(j.tenant, i),
                           attempt_high_water_key(j.tenant, i))]
            )
            seen: set[tuple[str, str]] = set()
            fresh: list[tuple[NewJob, str, bytes]] = []
            for job, job_id, error in zip(jobs, ids, errors, strict=True):
                if error is None:
                    result, fp = await self._admit(txn, job, job_id, seen, request_id)
                else:
                    result, fp = EnqueueResult(job_id, error), b""
                results.append(result)
                if result.error is None and not result.existed:
                    fresh.append((job, job_id, fp))
            if any(r.error is not None for r in results):
                results = [
                    r if r.error is not None or r.existed
                    else EnqueueResult(r.job_id, Aborted(ENQUEUE_HELD_BACK))
                    for r in results
                ]
            else:
                for job, job_id, fp in fresh:
                    await self._write_new_job(txn, job, job_id, request_id)
                    txn.put(fingerprint_key(job.tenant, job_id),
                            JobFingerprint(fp, request_id).encode())
        self._stats["enqueued"] += sum(1 for r in results if r.error is None and not r.existed)
        return results

    async def _admit(
        self, txn: Txn, job: NewJob, job_id: str, seen: set[tuple[str, str]], request_id: str
    ) -> tuple[EnqueueResult, bytes]:
        """How ``job`` fares under ``job_id`` (before the batch is judged as a whole), and its
        request fingerprint. A result with no error and not ``existed`` is to be written."""
        ref = (job.tenant, job_id)
        fp = job_fingerprint(job, job_id)
        if ref in seen:
            return EnqueueResult(job_id, AlreadyExists(
                f"job id {quote(job_id)} (tenant {quote(job.tenant)}) appears twice in the "
                f"batch"
            )), fp
        seen.add(ref)
        if await txn.get(key(Prefix.JOB, *ref)) is None:
            if (request_id and not self._rt.faults.mutation("recreate-deleted-on-retry")
                    and await self._created_by_this_call(txn, ref, fp, request_id)):
                return EnqueueResult(job_id, existed=True, deleted=True), fp
            return EnqueueResult(job_id), fp
        fk = fingerprint_key(*ref)
        raw = await txn.get(fk)
        stored = None if raw is None else JobFingerprint.decode(fk, raw).fingerprint
        if stored == fp:
            return EnqueueResult(job_id, existed=True), fp
        why = "a different job than the one sent" if stored is not None else (
            "stored without a request fingerprint, so it cannot be matched")
        return EnqueueResult(job_id, AlreadyExists(
            f"job already exists: {quote(job_id)} (tenant {quote(job.tenant)}), {why}"
        )), fp

    async def _created_by_this_call(
        self, txn: Txn, ref: tuple[str, str], fp: bytes, request_id: str
    ) -> bool:
        """Whether the id ``ref`` belonged to a job with fingerprint ``fp``, created by the
        call ``request_id`` (non-empty), that was deleted since."""
        mark = attempt_high_water_key(*ref)
        raw = await txn.get(mark)
        if raw is None:
            return False
        deleted = AttemptHighWater.decode(mark, raw)
        return deleted.fingerprint == fp and deleted.request_id == request_id

    async def _write_new_job(
        self, txn: Txn, job: NewJob, job_id: str, request_id: str
    ) -> None:
        now = txn.now
        # Planted bug for the simulator: limits acquired in the order given, so two jobs can
        # each hold a slot the other waits for.
        given = self._rt.faults.mutation("limits-given-order")
        info = JobInfo(
            job.tenant, job_id, job.task_group, bytes(job.payload), job.priority, job.retry,
            dict(job.metadata), now, job.start_at_ms,
            tuple(job.limits) if given else acquisition_order(job.limits), job.timeout_ms,
        )
        txn.put(key(Prefix.JOB, job.tenant, job_id), info.encode())
        for mk, mv in sorted(job.metadata.items()):
            txn.put(key(Prefix.METADATA_INDEX, job.tenant, mk, mv, job_id), b"")
        state = transitions.enqueued(now)
        mark = attempt_high_water_key(job.tenant, job_id)
        raw = await txn.get(mark)
        if raw is not None:  # the id was used before: number attempts above its last one
            state.attempt = AttemptHighWater.decode(mark, raw).attempt
            txn.delete(mark)
        self._limiter.note_limits(txn, info)
        await self._limiter.queue_attempt(
            txn, info, state, max(job.start_at_ms, now) if job.start_at_ms else now
        )
        # Planted bug for the simulator: the job counter drifts from the data.
        txn.bump(JOBS_TOTAL, 2 if self._rt.faults.mutation("counter-drift") else 1)
        txn.emit(
            "job_enqueued", shard=self.shard_id, tenant=job.tenant, job_id=job_id,
            task_group=job.task_group, priority=job.priority, due_ms=state.next_attempt_at_ms,
            retry_count=job.retry.retry_count, request_id=request_id,
        )
        self._rows.put_state(txn, info, None, state)

    # -- leasing and running tasks (silo/shard/leasing.py) ---------------------------------

    async def promote_due(self) -> int:
        """Promote every due timer into the ready queue; returns how many moved."""
        return await self._leasing.promote_due()

    async def lease_tasks(
        self, worker_id: str, task_group: str, max_tasks: int, *,
        max_reply_bytes: int | None = None, reply_bytes_used: int = 0,
        acks: Sequence[str] = (),
    ) -> list[LeasedTask]:
        """Lease up to ``max_tasks`` due tasks of ``task_group``: highest priority (lowest
        number) first, then earliest due; no more than fit in ``max_reply_bytes`` less
        ``reply_bytes_used`` (a task too large for any reply fails ``TASK_TOO_LARGE``).
        ``acks`` acknowledge this worker's earlier leases in the same batch."""
        return await self._leasing.lease_tasks(
            worker_id, task_group, max_tasks, max_reply_bytes=max_reply_bytes,
            reply_bytes_used=reply_bytes_used, acks=acks,
        )

    async def acknowledge(self, worker_id: str, task_ids: Sequence[str]) -> None:
        """Acknowledge delivery of this worker's leases ``task_ids`` (DESIGN §4 "Delivery")."""
        await self._leasing.acknowledge(worker_id, task_ids)

    async def report_refresh(
        self, worker_id: str, task_id: str, new_max: int | None, error: str | None = None
    ) -> None:
        """A worker's answer to a refresh task: the queue's new max, or (``new_max=None``) a
        failure, which backs the next refresh off."""
        await self._leasing.report_refresh(worker_id, task_id, new_max, error)

    async def heartbeat(self, worker_id: str, task_id: str, *,
                        waiting: bool = False) -> HeartbeatResult:
        """Extend a lease (acknowledging it unless ``waiting``: its handler has not started);
        reports whether the job has been cancelled."""
        return await self._leasing.heartbeat(worker_id, task_id, waiting=waiting)

    async def report_outcome(self, report: OutcomeReport) -> None:
        """Record how an attempt ended (idempotent for a repeated identical report)."""
        await self._leasing.report_outcome(report)

    async def report_outcomes(self, reports: Sequence[OutcomeReport]) -> list[SiloError | None]:
        """Record several outcomes in one batch; returns one error (or None) per report."""
        return await self._leasing.report_outcomes(reports)

    async def reap_expired(self) -> int:
        """End every expired lease: undelivered (re-queued, retry budget intact) when never
        acknowledged, else a ``WORKER_CRASHED`` failure (or a cancel when the job was
        cancelled); returns how many were reaped."""
        return await self._leasing.reap_expired()

    # -- operator actions (silo/shard/operations.py) -----------------------------------------

    async def cancel(self, tenant: str, job_id: str) -> None:
        """Cancel a scheduled job now, or flag a running one (its worker learns on heartbeat)."""
        await self._ops.cancel(tenant, job_id)

    async def restart(self, tenant: str, job_id: str) -> None:
        """Give a FAILED or CANCELLED job a new run with a fresh retry budget."""
        await self._ops.restart(tenant, job_id)

    async def expedite(self, tenant: str, job_id: str) -> None:
        """Make a scheduled job's future task due now (see :meth:`OperatorOps.expedite`)."""
        await self._ops.expedite(tenant, job_id)

    async def delete(self, tenant: str, job_id: str) -> None:
        """Remove every row of a terminal job, its attempts included."""
        await self._ops.delete(tenant, job_id)

    # -- reads (silo/shard/reads.py) ---------------------------------------------------------

    async def get_job(
        self, tenant: str, job_id: str, *, include_attempts: bool = False,
        max_attempts: int = 0, attempts_before: int = 0,
    ) -> JobView:
        """The job, and with ``include_attempts`` a page of its attempts (newest first; see
        :meth:`ShardReads.get_job`)."""
        return await self._reads.get_job(
            tenant, job_id, include_attempts=include_attempts, max_attempts=max_attempts,
            attempts_before=attempts_before,
        )

    async def get_result(self, tenant: str, job_id: str) -> JobResult:
        """The outcome of a terminal job; FAILED_PRECONDITION while it is not terminal."""
        return await self._reads.get_result(tenant, job_id)

    def queue_info(self, tenant: str, queue: str, *, max_listed: int = 100) -> dict[str, Any]:
        """A queue's max, holders and waiting requests (at most ``max_listed`` of each)."""
        return self._reads.queue_info(tenant, queue, max_listed=max_listed)

    def statistics(self) -> ShardStatistics:
        return self._reads.statistics()

    def counters(self) -> dict[bytes, int]:
        """The stored counters (as mirrored in memory), non-zero ones only."""
        return self._reads.counters()

    async def recount(self) -> dict[bytes, int]:
        """Counters recomputed from the job status table; must equal :meth:`counters`."""
        return await self._reads.recount()

@asynccontextmanager
async def open_shard(
    runtime: Runtime, path: str, *, shard_id: int = 0, config: ShardConfig | None = None
) -> AsyncIterator[JobShard]:
    """Open the shard stored at ``path`` and run its writer, timer and reaper until exit.

    On a clean exit every acknowledged and every queued write is made durable and the store is
    closed.
    """
    if runtime.faults.mutation("wall-clock-deadlines"):
        runtime = dataclasses.replace(runtime, clock=WallAsMonotonic(runtime.clock))
    config = config or ShardConfig()
    kv = await runtime.disk.open(path)
    try:
        marker = await read_marker(kv)
        if marker is not None and marker.stage == "live":
            marker = await clean_live_tables(
                kv, shard_id, marker, runtime,
                batch_keys=max(config.cleanup_batch_keys, LIVE_BATCH_KEYS))
        store = ShardStore(kv, runtime.faults, runtime.events)
        shard = JobShard(runtime, store, shard_id, config)
        if marker is not None:
            shard.cleanup = SplitCleanup(
                runtime, shard._commit, shard._mirror, kv, shard_id, marker,
                batch_keys=config.cleanup_batch_keys, pause_s=config.cleanup_pause_s,
            )
        await shard._load()
        if shard._mirror.corrupt:
            await shard._quarantine_after_open()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run_writer)
            nursery.start_soon(shard._loops.timer_loop)
            nursery.start_soon(shard._loops.reaper_loop)
            if shard.cleanup is not None and not shard.cleanup.marker.done:
                nursery.start_soon(shard.cleanup.run)
            # With the clock readings its timers and lease expiries were re-based on.
            wall, mono = shard._mirror.loaded_at or (None, None)
            frontier = shard._mirror.timer_frontier
            runtime.events("shard_opened", {
                "shard": shard_id, "node": runtime.node_id, "at_ms": wall, "mono_ms": mono,
                "timers_to": None if frontier is None else frontier.hex(),
            })
            try:
                yield shard
            finally:
                with trio.CancelScope(shield=True):
                    try:
                        await shard._shutdown()
                    finally:
                        nursery.cancel_scope.cancel()
                runtime.events("shard_closed", {"shard": shard_id, "node": runtime.node_id})
    finally:
        with trio.CancelScope(shield=True):
            await kv.close()


def _held_back(error: Exception) -> bool:
    return isinstance(error, Aborted)


__all__ = [
    "DEFAULT_TENANT",
    "TERMINAL_STATUSES",
    "COUNTER_PREFIX",
    "HeartbeatResult",
    "JobShard",
    "ShardConfig",
    "ShardStatistics",
    "open_shard",
]
