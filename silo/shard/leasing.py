"""Leasing and running tasks: promote due timers, lease ready tasks, heartbeats, outcome
reports and the reaper (DESIGN §4).

Contract:
- Leasing moves a task from the ready queue to a lease in one batch under the lock, so no task
  is ever handed out twice; every hand-out has a new attempt number and task id.
- Outcome reports are idempotent per task id and fenced by task id and worker id.
- :meth:`Leasing._end_attempt` is the single path by which a running attempt ends (report or
  reap): it records the attempt, drops the lease, releases the job's slots and applies the
  job's next state (see :mod:`silo.shard.transitions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from silo import keys
from silo.errors import FailedPrecondition, InvalidArgument, NotFound, SiloError
from silo.keys import Prefix, key
from silo.model import (
    READY,
    TIMER,
    WORKER_CRASHED,
    Attempt,
    AttemptState,
    Cancelled,
    Failure,
    JobStatus,
    Lease,
    LeasedTask,
    Outcome,
    OutcomeReport,
    RefreshRequest,
    Success,
    Task,
    concurrency_key,
    encode_int,
)
from silo.shard import transitions
from silo.shard import validation as lim
from silo.shard.commit import EmptyBatch
from silo.shard.context import ShardRoom
from silo.shard.limiter import check_refresh_value, require_refresh_lease
from silo.shard.tables import job_keys, timer_key
from silo.shard.transitions import Event, retry_delay_ms
from silo.shard.txn import Txn

REAP_BATCH = 500
PROMOTE_BATCH = 1000


@dataclass(frozen=True)
class HeartbeatResult:
    cancelled: bool
    lease_expiry_ms: int


class Leasing(ShardRoom):
    """Leases, heartbeats, outcome reports and reaping of one shard."""

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
        if self._rt.faults.buggify("shard.lease.batch_one"):
            max_tasks = 1
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
            expiry = txn.now + self._lease_ms
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
            expiry = max(txn.now + self._lease_ms, lease.expiry_ms)
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
                await self._limiter.queue_attempt(txn, info, new, now + delay)
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
        batch = 1 if self._rt.faults.buggify("shard.reap.batch_one") else REAP_BATCH
        async with self._commit.operation(empty=EmptyBatch.NOTHING, refusal_barrier=False) as txn:
            expired: list[str] = []
            for ek, task_id in self._mirror.expiries.items():
                _, (expiry, _) = keys.parse(ek)
                if int(expiry) > txn.now or len(expired) >= batch:
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


def _attempt_state_for(outcome: Outcome) -> AttemptState:
    if isinstance(outcome, Success):
        return AttemptState.SUCCEEDED
    if isinstance(outcome, Failure):
        return AttemptState.FAILED
    return AttemptState.CANCELLED


