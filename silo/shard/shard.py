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
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from silo import keys
from silo.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SiloError,
)
from silo.keys import Prefix, key
from silo.model import (
    DEFAULT_TENANT,
    PARKED,
    READY,
    TERMINAL_STATUSES,
    TIMER,
    WORKER_CRASHED,
    Attempt,
    AttemptState,
    Cancelled,
    Failure,
    JobInfo,
    JobResult,
    JobState,
    JobStatus,
    JobView,
    Lease,
    LeasedTask,
    NewJob,
    Outcome,
    OutcomeReport,
    RefreshRequest,
    Success,
    Task,
    concurrency_key,
    encode_int,
)
from silo.runtime import Runtime
from silo.shard import transitions
from silo.shard import validation as lim
from silo.shard.commit import CommitProtocol, EmptyBatch
from silo.shard.limiter import Limiter, check_refresh_value, require_refresh_lease
from silo.shard.loops import ShardLoops
from silo.shard.mirror import COUNTER_PREFIX, ShardMirror
from silo.shard.rows import JobRows
from silo.shard.store import ShardStore
from silo.shard.tables import (
    JOBS_TERMINAL,
    JOBS_TOTAL,
    counter_key,
    job_keys,
    request_key,
    status_counter,
    status_index_key,
    timer_key,
)
from silo.shard.transitions import Event, Operation, require, retry_delay_ms
from silo.shard.txn import Txn
from silo.shard.validation import ShardLimits

REAP_BATCH = 500
PROMOTE_BATCH = 1000


@dataclass(frozen=True)
class ShardConfig:
    limits: ShardLimits = field(default_factory=ShardLimits)
    lease_ms: int = 30_000
    """How long a lease lasts without a heartbeat."""


@dataclass(frozen=True)
class HeartbeatResult:
    cancelled: bool
    lease_expiry_ms: int


@dataclass(frozen=True)
class ShardStatistics:
    """An immutable snapshot of one shard's counters (see :meth:`JobShard.statistics`)."""

    shard_id: int
    synced_writes: int
    groups_committed: int
    batches_committed: int
    jobs_total: int
    jobs_by_status: dict[str, int]
    leases_held: int
    due_tasks_per_task_group: dict[str, int]
    scheduled_future_tasks: int
    enqueued: int
    leased: int
    completed: dict[str, int]
    retried: int
    reaped: int
    parked_requests: int = 0
    """Tasks waiting for a concurrency slot."""
    slots_held: int = 0
    """Concurrency slots currently held (over every queue)."""


class JobShard:
    """One shard. Create with :func:`open_shard`."""

    def __init__(self, runtime: Runtime, store: ShardStore, shard_id: int, config: ShardConfig):
        self._rt = runtime
        self._store = store
        self.shard_id = shard_id
        self.config = config
        self._limits = config.limits
        self._mirror = ShardMirror()
        self._rng = runtime.random.stream(f"shard/{shard_id}")
        self._rows = JobRows(shard_id, config.limits, self._rng)
        self._limiter = Limiter(self._rows, self._mirror, runtime.faults, shard_id)
        self._commit = CommitProtocol(runtime, store, self._mirror, shard_id, self._limiter.regrant)
        self._lock = self._commit.lock
        self._loops = ShardLoops(runtime, self._mirror, self.promote_due, self.reap_expired)
        self._mirror.on_timer_added = self._loops.wake_timer
        self._mirror.on_expiry_added = self._loops.wake_reaper
        self._mirror.on_ready_added = self._ready_added
        self.on_ready: Callable[[int, str], None] = lambda shard_id, task_group: None
        """Called whenever a task of a task group becomes ready (for long-polling leases)."""
        self._stats = {"enqueued": 0, "leased": 0, "retried": 0, "reaped": 0}
        self._completed: dict[str, int] = {"succeeded": 0, "failed": 0, "cancelled": 0}

    # -- lifecycle --------------------------------------------------------------------------

    def _ready_added(self, task_group: str) -> None:
        self.on_ready(self.shard_id, task_group)

    @property
    def closing(self) -> bool:
        """True once shutdown has started: the shard refuses operations from then on."""
        return self._commit.closing

    def next_timer_due_ms(self) -> int | None:
        """Due time of the earliest task waiting in the timer index (None: none waits)."""
        return self._mirror.next_timer_due_ms()

    def has_ready_tasks(self, task_group: str) -> bool:
        """True when a lease for ``task_group`` could return something now (due timers count)."""
        if self._mirror.ready_per_group.get(task_group):
            return True
        due = self._mirror.next_timer_due_ms()
        return due is not None and due <= self._rt.clock.now_ms()

    async def _load(self) -> None:
        await self._commit.load()

    async def _repair(self) -> None:
        await self._commit.repair()

    async def _shutdown(self) -> None:
        """Stop taking operations and make everything written so far durable."""
        await self._commit.shutdown()

    # -- helpers ----------------------------------------------------------------------------

    async def _queue_task(
        self, txn: Txn, info: JobInfo, state: JobState, due_ms: int
    ) -> None:
        """Allocate the next attempt number and queue its task: through its limits when due
        (see :meth:`_place`), else in the timer index."""
        attempt = state.attempt + 1
        task = Task(
            self._rows.new_id("t"), info.tenant, info.job_id, attempt, info.task_group,
            info.priority, due_ms,
        )
        state.attempt = attempt
        state.held = 0
        if due_ms <= txn.now:
            await self._limiter.place(txn, info, state, task, 0)
        else:
            txn.put(timer_key(task), task.encode())
            state.task = (attempt, due_ms, TIMER, task.task_id)
            state.next_attempt_at_ms = due_ms

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
        lim.check_job_limits(L, job.limits)
        if job.start_at_ms < 0:
            raise InvalidArgument("start_at_ms must not be negative")

    async def enqueue(self, job: NewJob) -> str:
        """Store a new job and queue its first attempt; returns the job id."""
        return (await self.enqueue_batch([job]))[0]

    async def enqueue_batch(self, jobs: Sequence[NewJob]) -> list[str]:
        """Store several jobs atomically: all of them are enqueued, or (on any error) none.

        Raises ALREADY_EXISTS when a supplied id is taken (or repeated within the batch).
        """
        if not jobs:
            return []
        if len(jobs) > self._limits.max_jobs_per_batch:
            raise InvalidArgument(
                f"batch has {len(jobs)} jobs; max_jobs_per_batch is "
                f"{self._limits.max_jobs_per_batch}"
            )
        for job in jobs:
            self._validate(job)
        async with self._commit.operation(empty=EmptyBatch.IMPOSSIBLE) as txn:
            ids: list[str] = []
            seen: set[tuple[str, str]] = set()
            await txn.prefetch(
                [key(Prefix.JOB, j.tenant, j.job_id) for j in jobs if j.job_id is not None]
            )
            for job in jobs:
                job_id = job.job_id if job.job_id is not None else self._rows.new_id("j")
                ref = (job.tenant, job_id)
                if ref in seen or await txn.get(key(Prefix.JOB, *ref)) is not None:
                    raise AlreadyExists(f"job already exists: {job_id!r} (tenant {job.tenant!r})")
                seen.add(ref)
                ids.append(job_id)
            for job, job_id in zip(jobs, ids, strict=True):
                await self._write_new_job(txn, job, job_id)
        self._stats["enqueued"] += len(jobs)
        return ids

    async def _write_new_job(self, txn: Txn, job: NewJob, job_id: str) -> None:
        now = txn.now
        info = JobInfo(
            job.tenant, job_id, job.task_group, bytes(job.payload), job.priority, job.retry,
            dict(job.metadata), now, job.start_at_ms, tuple(job.limits),
        )
        txn.put(key(Prefix.JOB, job.tenant, job_id), info.encode())
        for mk, mv in sorted(job.metadata.items()):
            txn.put(key(Prefix.METADATA_INDEX, job.tenant, mk, mv, job_id), b"")
        state = transitions.enqueued(now)
        self._limiter.note_limits(txn, info)
        await self._queue_task(
            txn, info, state, max(job.start_at_ms, now) if job.start_at_ms else now
        )
        # Planted bug for the simulator: the job counter drifts from the data.
        txn.bump(JOBS_TOTAL, 2 if self._rt.faults.mutation("counter-drift") else 1)
        txn.emit(
            "job_enqueued", shard=self.shard_id, tenant=job.tenant, job_id=job_id,
            task_group=job.task_group, priority=job.priority, due_ms=state.next_attempt_at_ms,
            retry_count=job.retry.retry_count,
        )
        self._rows.put_state(txn, info, None, state)

    # -- leasing ----------------------------------------------------------------------------

    async def promote_due(self) -> int:
        """Promote every due timer into the ready queue; returns how many moved."""
        async with self._commit.operation(empty=EmptyBatch.NOTHING, refusal_barrier=False) as txn:
            n = await self._promote_in(txn, PROMOTE_BATCH)
        return n

    async def _promote_all_due(self, txn: Txn) -> int:
        return await self._promote_in(txn, PROMOTE_BATCH)

    async def _promote_in(self, txn: Txn, limit: int) -> int:
        promoted = []
        for task in self._mirror.timers.values():
            if task.due_ms > txn.now or len(promoted) >= limit:
                break
            promoted.append(task)
        await txn.prefetch(
            [k for t in promoted if not t.is_refresh for k in job_keys(t.tenant, t.job_id)[:2]]
        )
        for task in promoted:
            if task.is_refresh:
                self._limiter.promote_refresh(txn, task)
                continue
            txn.delete(timer_key(task))
            info = await self._rows.info(txn, task.tenant, task.job_id)
            state = await self._rows.state(txn, task.tenant, task.job_id)
            if (
                info is None
                or state is None
                or state.task is None
                or state.task[2] != TIMER
                or state.task[3] != task.task_id
            ):
                continue  # a stray timer (cannot happen while the tables agree): drop it
            new = state.copy()
            await self._limiter.place(txn, info, new, task, state.held)
            self._rows.put_state(txn, info, state, new)
        return len(promoted)

    async def lease_tasks(
        self, worker_id: str, task_group: str, max_tasks: int
    ) -> list[LeasedTask]:
        """Lease up to ``max_tasks`` due tasks of ``task_group``: highest priority (lowest
        number) first, then earliest due."""
        lim.check_worker_id(self._limits, worker_id)
        lim.check_task_group(self._limits, task_group)
        lim.check_max_tasks(self._limits, max_tasks)
        # Due timers first, in their own batch, so that the lease sees them in the queue.
        async with self._commit.operation(
            empty=EmptyBatch.NOTHING, refusal_barrier=False, prelude=self._promote_all_due
        ) as txn:
            start, end = keys.prefix_range(Prefix.READY, task_group)
            picked: list[tuple[bytes, Task]] = []
            # Planted bug for the simulator: hand out the lowest priority first.
            backwards = self._rt.faults.mutation("ignore-priority")
            for rk in self._mirror.ready.irange(
                start, end, inclusive=(True, False), reverse=backwards
            ):
                picked.append((rk, self._mirror.ready[rk]))
                if len(picked) >= max_tasks:
                    break
            await txn.prefetch(
                [k for _, t in picked for k in job_keys(t.tenant, t.job_id)]
            )
            out: list[LeasedTask] = []
            expiry = txn.now + self.config.lease_ms
            for rk, task in picked:
                leased = await self._lease_one(txn, rk, task, worker_id, expiry)
                if leased is not None:
                    out.append(leased)
        self._stats["leased"] += len(out)
        return out

    async def _lease_one(
        self, txn: Txn, rk: bytes, task: Task, worker_id: str, expiry: int
    ) -> LeasedTask | None:
        if task.is_refresh:
            return self._lease_refresh(txn, rk, task, worker_id, expiry)
        info = await self._rows.info(txn, task.tenant, task.job_id)
        state = await self._rows.state(txn, task.tenant, task.job_id)
        if (
            info is None
            or state is None
            or state.status != JobStatus.SCHEDULED
            or state.task is None
            or state.task[2] != READY
            or state.task[3] != task.task_id
        ):
            # A stray queue entry (cannot happen while the tables are consistent): drop it.
            txn.delete(rk)
            return None
        if not self._rt.faults.mutation("double-lease"):
            txn.delete(rk)
        new = transitions.leased(state, txn.now, task.task_id)
        lease = Lease(
            task.task_id, task.tenant, task.job_id, task.attempt, task.task_group, worker_id,
            txn.now, expiry,
        )
        txn.put(key(Prefix.LEASE, task.task_id), lease.encode())
        txn.put(key(Prefix.LEASE_EXPIRY, expiry, task.task_id), b"")
        attempt = Attempt(task.attempt, task.task_id, AttemptState.RUNNING, worker_id, txn.now)
        txn.put(key(Prefix.ATTEMPT, task.tenant, task.job_id, task.attempt), attempt.encode())
        txn.emit(
            "task_leased", shard=self.shard_id, task_id=task.task_id, tenant=task.tenant,
            job_id=task.job_id, attempt=task.attempt, worker_id=worker_id,
            task_group=task.task_group, priority=task.priority, due_ms=task.due_ms,
            expiry_ms=expiry, at_ms=txn.now,
        )
        self._rows.put_state(txn, info, state, new)
        return LeasedTask(
            task.task_id, task.tenant, task.job_id, task.attempt, task.task_group, info.payload,
            info.priority, dict(info.metadata), expiry,
        )

    def _lease_refresh(
        self, txn: Txn, rk: bytes, task: Task, worker_id: str, expiry: int
    ) -> LeasedTask | None:
        txn.delete(rk)
        qs = self._limiter.queue_state(txn, task.tenant, task.job_id)
        if qs is None or qs.refresh_task_id != task.task_id:
            return None
        lease = Lease(
            task.task_id, task.tenant, task.job_id, 0, task.task_group, worker_id, txn.now, expiry
        )
        txn.put(key(Prefix.LEASE, task.task_id), lease.encode())
        txn.put(key(Prefix.LEASE_EXPIRY, expiry, task.task_id), b"")
        txn.emit(
            "refresh_leased", shard=self.shard_id, task_id=task.task_id, tenant=task.tenant,
            queue=task.job_id, worker_id=worker_id, expiry_ms=expiry, at_ms=txn.now,
        )
        return LeasedTask(
            task.task_id, task.tenant, task.job_id, 0, task.task_group, b"", task.priority, {},
            expiry, RefreshRequest(task.job_id, qs.max_concurrency, dict(qs.metadata)),
        )

    async def report_refresh(
        self, worker_id: str, task_id: str, new_max: int | None, error: str | None = None
    ) -> None:
        """A worker's answer to a refresh task: the queue's new max, or (``new_max=None``) a
        failure, which backs the next refresh off."""
        lim.check_worker_id(self._limits, worker_id)
        if new_max is not None:
            check_refresh_value(new_max)
        async with self._commit.operation(empty=EmptyBatch.NOTHING) as txn:
            lease = require_refresh_lease(self._mirror.leases.get(task_id), worker_id, task_id)
            self._limiter.end_refresh(txn, lease, new_max)

    # -- running tasks ----------------------------------------------------------------------

    def _owned_lease(self, worker_id: str, task_id: str) -> Lease:
        lease = self._mirror.leases.get(task_id)
        if lease is None:
            raise NotFound(f"lease not found for task {task_id!r}")
        if lease.worker_id != worker_id:
            raise FailedPrecondition(
                f"lease owner mismatch: task {task_id!r} is leased to another worker"
            )
        return lease

    async def heartbeat(self, worker_id: str, task_id: str) -> HeartbeatResult:
        """Extend a lease; reports whether the job has been cancelled."""
        lim.check_worker_id(self._limits, worker_id)
        async with self._commit.operation() as txn:
            lease = self._owned_lease(worker_id, task_id)
            expiry = max(txn.now + self.config.lease_ms, lease.expiry_ms)
            if expiry != lease.expiry_ms:
                new = Lease(
                    lease.task_id, lease.tenant, lease.job_id, lease.attempt, lease.task_group,
                    lease.worker_id, lease.leased_at_ms, expiry,
                )
                txn.delete(key(Prefix.LEASE_EXPIRY, lease.expiry_ms, task_id))
                txn.put(key(Prefix.LEASE_EXPIRY, expiry, task_id), b"")
                txn.put(key(Prefix.LEASE, task_id), new.encode())
                txn.emit(
                    "lease_extended", shard=self.shard_id, task_id=task_id, tenant=lease.tenant,
                    job_id=lease.job_id, attempt=lease.attempt, expiry_ms=expiry, at_ms=txn.now,
                )
            cancelled = await self._rows.cancelled_at(txn, lease.tenant, lease.job_id) is not None
            if self._rt.faults.mutation("lost-cancel"):
                cancelled = False
        return HeartbeatResult(cancelled, expiry)

    async def report_outcome(self, report: OutcomeReport) -> None:
        """Record how an attempt ended (idempotent for a repeated identical report)."""
        error = (await self.report_outcomes([report]))[0]
        if error is not None:
            raise error

    async def report_outcomes(self, reports: Sequence[OutcomeReport]) -> list[SiloError | None]:
        """Record several outcomes in one batch; returns one error (or None) per report."""
        if len(reports) > self._limits.max_tasks_per_lease:
            raise InvalidArgument(
                f"{len(reports)} reports in one call; max_tasks_per_lease is "
                f"{self._limits.max_tasks_per_lease}"
            )
        results: list[SiloError | None] = []
        async with self._commit.operation(refusal_barrier=False) as txn:
            await txn.prefetch(
                self._lease_keys([self._mirror.leases.get(r.task_id) for r in reports])
            )
            await self._prefetch_grants(txn, [self._mirror.leases.get(r.task_id) for r in reports])
            for report in reports:
                try:
                    self._validate_report(report)
                    await self._report_one(txn, report)
                    results.append(None)
                except SiloError as exc:
                    results.append(exc)
        return results

    async def _prefetch_grants(self, txn: Txn, leases: Sequence[Lease | None]) -> None:
        """Read ahead the jobs that ending these leases will grant a slot to."""
        wanted: list[bytes] = []
        for lease in leases:
            if lease is None or lease.is_refresh:
                continue
            info = await self._rows.info(txn, lease.tenant, lease.job_id)
            if info is None:
                continue
            for limit in info.limits:
                queue = concurrency_key(limit)
                if queue is None:
                    continue
                first = self._limiter.first_request(txn, info.tenant, queue)
                if first is not None:
                    wanted += job_keys(first[1].tenant, first[1].job_id)[:2]
        await txn.prefetch(wanted)

    def _lease_keys(self, leases: Sequence[Lease | None]) -> list[bytes]:
        """The rows ending these leases reads: each job's info, status, cancel flag and
        attempt."""
        out: list[bytes] = []
        for lease in leases:
            if lease is not None:
                out += job_keys(lease.tenant, lease.job_id)
                out.append(key(Prefix.ATTEMPT, lease.tenant, lease.job_id, lease.attempt))
        return out

    def _validate_report(self, report: OutcomeReport) -> None:
        L = self._limits
        lim.check_worker_id(L, report.worker_id)
        outcome = report.outcome
        if isinstance(outcome, Success):
            lim.check_bytes(outcome.result, "result", "result_max_bytes", L.result_max_bytes)
        elif isinstance(outcome, Failure):
            lim.check_error_code(L, outcome.code)
            lim.check_bytes(
                outcome.data, "error data", "error_data_max_bytes", L.error_data_max_bytes
            )
        elif not isinstance(outcome, Cancelled):
            raise InvalidArgument("outcome must be success, failure or cancelled")

    async def _report_one(self, txn: Txn, report: OutcomeReport) -> None:
        lease = self._mirror.leases.get(report.task_id)
        if lease is not None and key(Prefix.LEASE, report.task_id) in txn.ops:
            lease = None  # already ended earlier in this same batch
        if lease is None:
            await self._check_repeated_report(txn, report)
            return
        if lease.worker_id != report.worker_id:
            raise FailedPrecondition(
                f"lease owner mismatch: task {report.task_id!r} is leased to another worker"
            )
        if lease.is_refresh:
            raise InvalidArgument(
                f"task {report.task_id!r} is a refresh task; report it with ReportRefresh"
            )
        await self._end_attempt(txn, lease, report.outcome, reaped=False)

    async def _check_repeated_report(self, txn: Txn, report: OutcomeReport) -> None:
        """A report without a live lease: succeed if it repeats the recorded outcome."""
        if report.tenant is None or report.job_id is None or report.attempt is None:
            raise NotFound(f"lease not found for task {report.task_id!r}")
        k = key(Prefix.ATTEMPT, report.tenant, report.job_id, report.attempt)
        raw = await txn.get(k)
        if raw is None:
            raise NotFound(f"lease not found for task {report.task_id!r}")
        attempt = Attempt.decode(k, raw)
        if attempt.task_id != report.task_id:
            raise NotFound(f"lease not found for task {report.task_id!r}")
        if attempt.worker_id != report.worker_id:
            raise FailedPrecondition(
                f"lease owner mismatch: task {report.task_id!r} was leased to another worker"
            )
        crashed = attempt.error_code == WORKER_CRASHED
        if attempt.state == _attempt_state_for(report.outcome) and not crashed:
            return
        raise NotFound(
            f"lease not found for task {report.task_id!r}: the attempt already ended "
            f"{attempt.state.name}"
            + (" (lease expired)" if attempt.error_code == WORKER_CRASHED else "")
        )

    async def _end_attempt(
        self, txn: Txn, lease: Lease, outcome: Outcome, *, reaped: bool
    ) -> None:
        """The single path by which a running attempt ends (report or reap)."""
        info = await self._rows.info(txn, lease.tenant, lease.job_id)
        state = await self._rows.state(txn, lease.tenant, lease.job_id)
        if info is None or state is None:
            raise NotFound(f"job not found: {lease.job_id!r} (tenant {lease.tenant!r})")
        cancelled_at = await self._rows.cancelled_at(txn, lease.tenant, lease.job_id)
        ak = key(Prefix.ATTEMPT, lease.tenant, lease.job_id, lease.attempt)
        raw = await txn.get(ak)
        started = Attempt.decode(ak, raw).started_at_ms if raw is not None else lease.leased_at_ms
        now = txn.now
        if isinstance(outcome, Success):
            attempt = Attempt(lease.attempt, lease.task_id, AttemptState.SUCCEEDED,
                              lease.worker_id, started, now, result=outcome.result)
        elif isinstance(outcome, Cancelled) or (reaped and cancelled_at is not None):
            # A reaped attempt keeps the WORKER_CRASHED mark even when it ends CANCELLED, so a
            # late report for it is answered "lease not found", not taken as a repeat.
            attempt = Attempt(lease.attempt, lease.task_id, AttemptState.CANCELLED,
                              lease.worker_id, started, now,
                              error_code=WORKER_CRASHED if reaped else None)
        else:
            assert isinstance(outcome, Failure)
            attempt = Attempt(lease.attempt, lease.task_id, AttemptState.FAILED, lease.worker_id,
                              started, now, error_code=outcome.code, error_data=outcome.data)
        txn.put(ak, attempt.encode())
        txn.delete(key(Prefix.LEASE, lease.task_id))
        txn.delete(key(Prefix.LEASE_EXPIRY, lease.expiry_ms, lease.task_id))
        self._limiter.release(txn, info, state.held, lease.task_id)

        if isinstance(outcome, Success):
            new = transitions.attempt_ended(state, now, Event.SUCCEED)
        elif isinstance(outcome, Cancelled) or cancelled_at is not None:
            new = transitions.attempt_ended(state, now, Event.CANCEL)
            if cancelled_at is None:
                txn.put(key(Prefix.CANCEL, lease.tenant, lease.job_id), encode_int(now))
        else:
            jitter = 1.0 + self._rng.random()
            delay = retry_delay_ms(info.retry, state.run_attempts, jitter)
            if delay is None:
                new = transitions.attempt_ended(state, now, Event.FAIL)
            else:
                new = transitions.attempt_ended(state, now, Event.RETRY)
                await self._queue_task(txn, info, new, now + delay)
                self._stats["retried"] += 1
        kind = "reaped" if reaped else attempt.state.name.lower()
        txn.emit(
            "lease_ended", shard=self.shard_id, task_id=lease.task_id, tenant=lease.tenant,
            job_id=lease.job_id, attempt=lease.attempt, outcome=kind, at_ms=now,
            state=attempt.state.name,
        )
        if reaped:
            self._stats["reaped"] += 1
        if new.status.terminal:
            self._completed[new.status.name.lower()] += 1
        self._rows.put_state(txn, info, state, new)

    async def reap_expired(self) -> int:
        """End every lease whose expiry has passed as a ``WORKER_CRASHED`` failure (or a cancel
        when the job was cancelled); returns how many were reaped."""
        if self._rt.faults.mutation("no-reaper"):
            return 0
        async with self._commit.operation(empty=EmptyBatch.NOTHING, refusal_barrier=False) as txn:
            expired: list[str] = []
            for ek, task_id in self._mirror.expiries.items():
                _, (expiry, _) = keys.parse(ek)
                if int(expiry) > txn.now or len(expired) >= REAP_BATCH:
                    break
                expired.append(task_id)
            await txn.prefetch(self._lease_keys([self._mirror.leases.get(t) for t in expired]))
            for task_id in expired:
                lease = self._mirror.leases.get(task_id)
                if lease is not None and lease.is_refresh:
                    self._limiter.end_refresh(txn, lease, None, reaped=True)
                elif lease is not None:
                    await self._end_attempt(txn, lease, Failure(WORKER_CRASHED), reaped=True)
        return len(expired)

    # -- operator actions -------------------------------------------------------------------

    async def cancel(self, tenant: str, job_id: str) -> None:
        """Cancel a scheduled job now, or flag a running one (its worker learns on heartbeat)."""
        async with self._commit.operation() as txn:
            info, state = await self._rows.job(txn, tenant, job_id)
            require(Operation.CANCEL, state.status)
            if await self._rows.cancelled_at(txn, tenant, job_id) is None:
                txn.put(key(Prefix.CANCEL, tenant, job_id), encode_int(txn.now))
                txn.emit("cancel_requested", shard=self.shard_id, tenant=tenant, job_id=job_id,
                         status=state.status.name, at_ms=txn.now)
            if state.status == JobStatus.SCHEDULED:
                new = transitions.cancelled(state, txn.now)
                if self._rt.faults.mutation("skip-release-on-cancel"):
                    new.task = None  # planted bug: the queued task and its slots stay behind
                    new.held = 0
                else:
                    self._limiter.unqueue_task(txn, info, new)
                self._completed["cancelled"] += 1
                self._rows.put_state(txn, info, state, new)

    async def restart(self, tenant: str, job_id: str) -> None:
        """Give a FAILED or CANCELLED job a new run with a fresh retry budget."""
        async with self._commit.operation(empty=EmptyBatch.IMPOSSIBLE) as txn:
            info, state = await self._rows.job(txn, tenant, job_id)
            require(Operation.RESTART, state.status)
            txn.delete(key(Prefix.CANCEL, tenant, job_id))
            new = transitions.restarted(state, txn.now)
            await self._queue_task(txn, info, new, txn.now)
            self._rows.put_state(txn, info, state, new)

    async def expedite(self, tenant: str, job_id: str) -> None:
        """Make a scheduled job's future task due now (same attempt and task id).

        A job waiting for its start time (or a retry's backoff) acquires its limits now. A job
        already due is left as it is: one ready or parked on a concurrency queue (a parked
        request is ordered by priority and due time, and its due time has passed), or one
        waiting for a rate-limit token it has reserved.
        """
        async with self._commit.operation() as txn:
            info, state = await self._rows.job(txn, tenant, job_id)
            require(Operation.EXPEDITE, state.status)
            if state.task is not None and state.task[1] > txn.now:
                attempt, due_ms, where, task_id = state.task
                old = Task(task_id, tenant, job_id, attempt, info.task_group, info.priority,
                           due_ms)
                now_task = replace(old, due_ms=txn.now)
                new = transitions.expedited(state)
                if where == TIMER and state.held == 0:
                    txn.delete(timer_key(old))
                    await self._limiter.place(txn, info, new, now_task, 0)
                elif where == PARKED:
                    queue = concurrency_key(info.limits[state.held])
                    assert queue is not None
                    txn.delete(request_key(tenant, queue, old))
                    rk = request_key(tenant, queue, now_task)
                    txn.put(rk, now_task.encode())
                    txn.new_requests[rk] = now_task
                    txn.regrant.append((tenant, queue))
                    new.task = (attempt, txn.now, PARKED, task_id)
                    new.next_attempt_at_ms = txn.now
                txn.emit("task_expedited", shard=self.shard_id, tenant=tenant, job_id=job_id,
                         attempt=attempt, old_due_ms=due_ms, due_ms=txn.now, at_ms=txn.now)
                self._rows.put_state(txn, info, state, new)

    async def delete(self, tenant: str, job_id: str) -> None:
        """Remove every row of a terminal job, its attempts included."""
        async with self._commit.operation(empty=EmptyBatch.IMPOSSIBLE) as txn:
            info, state = await self._rows.job(txn, tenant, job_id)
            require(Operation.DELETE, state.status)
            txn.delete(key(Prefix.JOB, tenant, job_id))
            txn.delete(key(Prefix.STATUS, tenant, job_id))
            txn.delete(status_index_key(tenant, state, job_id))
            for mk, mv in info.metadata.items():
                txn.delete(key(Prefix.METADATA_INDEX, tenant, mk, mv, job_id))
            start, end = keys.prefix_range(Prefix.ATTEMPT, tenant, job_id)
            for ak, _ in await txn.scan(start, end):
                txn.delete(ak)
            txn.delete(key(Prefix.CANCEL, tenant, job_id))
            txn.bump(JOBS_TOTAL, -1)
            txn.bump(JOBS_TERMINAL, -1)
            txn.bump(status_counter(tenant, state.status), -1)
            txn.emit("job_deleted", shard=self.shard_id, tenant=tenant, job_id=job_id,
                     status=state.status.name)

    # -- reads ------------------------------------------------------------------------------

    async def get_job(
        self, tenant: str, job_id: str, *, include_attempts: bool = False
    ) -> JobView:
        async with self._commit.read() as txn:
            info, state = await self._rows.job(txn, tenant, job_id)
            cancelled_at = await self._rows.cancelled_at(txn, tenant, job_id)
            attempts = None
            if include_attempts:
                start, end = keys.prefix_range(Prefix.ATTEMPT, tenant, job_id)
                attempts = tuple(Attempt.decode(k, v) for k, v in await txn.scan(start, end))
            waiting_for = self._limiter.waiting_for(info, state)
        return JobView(info, state, cancelled_at, attempts, waiting_for)

    async def get_result(self, tenant: str, job_id: str) -> JobResult:
        """The outcome of a terminal job; FAILED_PRECONDITION while it is not terminal."""
        view = await self.get_job(tenant, job_id)
        status = view.state.status
        require(Operation.RESULT, status)
        if status == JobStatus.CANCELLED:
            return JobResult(status, cancelled_at_ms=view.cancelled_at_ms)
        async with self._commit.read(barrier=False) as txn:
            k = key(Prefix.ATTEMPT, tenant, job_id, view.state.attempt)
            raw = await txn.get(k)
        if raw is None:
            raise NotFound(f"attempt {view.state.attempt} of job {job_id!r} not found")
        attempt = Attempt.decode(k, raw)
        if status == JobStatus.SUCCEEDED:
            return JobResult(status, result=attempt.result)
        return JobResult(status, error_code=attempt.error_code, error_data=attempt.error_data)

    def queue_info(self, tenant: str, queue: str, *, max_listed: int = 100) -> dict[str, Any]:
        """A queue's max, holders and waiting requests (at most ``max_listed`` of each)."""
        return self._limiter.queue_info(tenant, queue, max_listed=max_listed)

    def statistics(self) -> ShardStatistics:
        by_status = {s.name: 0 for s in JobStatus}
        prefix = counter_key("status")
        for ck, n in self._mirror.counters.items():
            if ck.startswith(prefix):
                _, parts = keys.parse(ck)
                by_status[JobStatus(int(parts[3])).name] += n
        return ShardStatistics(
            shard_id=self.shard_id,
            synced_writes=self._store.synced_writes,
            groups_committed=self._store.groups_committed,
            batches_committed=self._store.batches_committed,
            jobs_total=self._mirror.counters.get(JOBS_TOTAL, 0),
            jobs_by_status=by_status,
            leases_held=len(self._mirror.leases),
            due_tasks_per_task_group=dict(sorted(self._mirror.ready_per_group.items())),
            scheduled_future_tasks=len(self._mirror.timers),
            parked_requests=len(self._mirror.requests),
            slots_held=len(self._mirror.holder_keys),
            enqueued=self._stats["enqueued"],
            leased=self._stats["leased"],
            completed=dict(self._completed),
            retried=self._stats["retried"],
            reaped=self._stats["reaped"],
        )

    def counters(self) -> dict[bytes, int]:
        """The stored counters (as mirrored in memory), non-zero ones only."""
        return {k: v for k, v in sorted(self._mirror.counters.items()) if v}

    async def recount(self) -> dict[bytes, int]:
        """Counters recomputed from the job status table; must equal :meth:`counters`."""
        out: dict[bytes, int] = {}
        async with self._lock:
            start, end = keys.prefix_range(Prefix.STATUS)
            cursor: bytes = start
            while True:
                rows = await self._store.scan(cursor, end, limit=5000)
                for k, v in rows:
                    _, (tenant, _job) = keys.parse(k)
                    state = JobState.decode(k, v)
                    out[JOBS_TOTAL] = out.get(JOBS_TOTAL, 0) + 1
                    if state.status.terminal:
                        out[JOBS_TERMINAL] = out.get(JOBS_TERMINAL, 0) + 1
                    sk = status_counter(str(tenant), state.status)
                    out[sk] = out.get(sk, 0) + 1
                if len(rows) < 5000:
                    break
                cursor = rows[-1][0] + b"\x00"
        return dict(sorted(out.items()))

def _attempt_state_for(outcome: Outcome) -> AttemptState:
    if isinstance(outcome, Success):
        return AttemptState.SUCCEEDED
    if isinstance(outcome, Failure):
        return AttemptState.FAILED
    return AttemptState.CANCELLED


@asynccontextmanager
async def open_shard(
    runtime: Runtime, path: str, *, shard_id: int = 0, config: ShardConfig | None = None
) -> AsyncIterator[JobShard]:
    """Open the shard stored at ``path`` and run its writer, timer and reaper until exit.

    On a clean exit every acknowledged and every queued write is made durable and the store is
    closed.
    """
    kv = await runtime.disk.open(path)
    try:
        store = ShardStore(kv, runtime.faults, runtime.events)
        shard = JobShard(runtime, store, shard_id, config or ShardConfig())
        await shard._load()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run_writer)
            nursery.start_soon(shard._loops.timer_loop)
            nursery.start_soon(shard._loops.reaper_loop)
            runtime.events("shard_opened", {"shard": shard_id, "node": runtime.node_id})
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
