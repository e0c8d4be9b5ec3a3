"""Leasing and running tasks: promote due timers, lease ready tasks, heartbeats, outcome
reports and the reaper (DESIGN §4).

Contract:
- Leasing moves a task from the ready queue to a lease in one batch under the lock, so no task
  is ever handed out twice; every hand-out has a new attempt number and task id.
- Outcome reports are idempotent per task id and fenced by task id and worker id.
- :meth:`Leasing.end_attempt` is the single path by which a running attempt ends (report or
  reap): it records the attempt, drops the lease, releases the job's slots and applies the
  job's next state (see :mod:`silo.shard.transitions`).
- Delivery (DESIGN §4): a lease is committed unacknowledged; an ack on a later lease call (in
  that call's batch), a heartbeat or a report acknowledges it, except a heartbeat marked
  ``waiting`` (a task the worker holds unstarted), which only extends it. The reaper turns an
  expired unacknowledged lease into an UNDELIVERED attempt and re-queues the job with its retry
  budget intact, at most ``MAX_UNDELIVERED`` times per run; after that, and for any
  acknowledged lease, an expiry is a ``WORKER_CRASHED`` failure.
- A lease reply is sized while tasks are picked (:mod:`silo.reply_size`): no lease is committed
  that the reply cannot carry; a task too large for any reply fails its job
  ``TASK_TOO_LARGE``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import msgpack

from silo import keys
from silo.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    SiloError,
    quote,
)
from silo.keys import Prefix, key
from silo.model import (
    INTERNAL_ERROR,
    MAX_UNDELIVERED,
    READY,
    RELEASED,
    TASK_TOO_LARGE,
    TIMER,
    WORKER_CRASHED,
    Attempt,
    AttemptState,
    Cancelled,
    Failure,
    JobInfo,
    JobState,
    Lease,
    LeasedTask,
    Outcome,
    OutcomeReport,
    RefreshRequest,
    Released,
    Success,
    Task,
    concurrency_key,
    encode_int,
)
from silo.reply_size import Fit, ReplyBudget, task_reply_bytes
from silo.shard import transitions
from silo.shard import validation as lim
from silo.shard.commit import EmptyBatch
from silo.shard.context import ShardRoom
from silo.shard.limiter import check_refresh_value, require_refresh_lease
from silo.shard.tables import job_keys, timer_key
from silo.shard.transitions import Event, retry_delay_ms
from silo.shard.txn import Txn

if TYPE_CHECKING:
    from silo.shard.quarantine import PoisonItems

REAP_BATCH = 500
PROMOTE_BATCH = 1000


@dataclass(frozen=True)
class HeartbeatResult:
    cancelled: bool
    lease_expiry_ms: int


class Leasing(ShardRoom):
    """Leases, heartbeats, outcome reports and reaping of one shard.

    Every item of a batch (a timer, a ready task, a report, an expired lease) is processed
    under its own savepoint: one that raises unexpectedly is undone alone and handed to
    :attr:`poison`, and the others go on (DESIGN §4 "No poison").
    """

    poison: PoisonItems
    """Set by the shard once built (it needs :meth:`end_attempt`)."""

    # -- leasing ----------------------------------------------------------------------------

    async def promote_due(self) -> int:
        """Promote every due timer into the ready queue, and delete rate reservations that no
        longer matter (and old token-bucket rows that have refilled); returns how many timers
        moved."""
        async with self._commit.operation(empty=EmptyBatch.NOTHING, refusal_barrier=False) as txn:
            n = await self._promote_in(txn, PROMOTE_BATCH)
            self._limiter.forget_expired_reservations(txn, PROMOTE_BATCH)
            self._limiter.forget_full_buckets(txn, PROMOTE_BATCH)
        return n

    async def _promote_all_due(self, txn: Txn) -> int:
        return await self._promote_in(txn, PROMOTE_BATCH)

    async def _promote_in(self, txn: Txn, limit: int) -> int:
        """Promote up to ``limit`` timers due by the monotonic clock (DESIGN §4 "Deadlines");
        a timer that cannot be processed is a poison item (see :mod:`silo.shard.quarantine`)."""
        assert txn.mono is not None
        # Planted bug for the simulator: timers fall due a second early.
        early_ms = 1000 if self._rt.faults.mutation("lease-before-due") else 0
        promoted = self._mirror.due_timers(txn.mono + early_ms, limit)
        await txn.prefetch(
            [k for t in promoted if not t.is_refresh for k in job_keys(t.tenant, t.job_id)[:2]]
        )
        for task in promoted:
            sp = txn.savepoint()
            try:
                await self._promote_one(txn, task)
            except Exception as exc:
                await self.poison.queued(txn, sp, timer_key(task), task.encode(), exc)
        return len(promoted)

    async def _promote_one(self, txn: Txn, task: Task) -> None:
        if task.is_refresh:
            await self._limiter.promote_refresh(txn, task)
            return
        txn.delete(timer_key(task))
        found = await self._rows.queued_job(txn, task, TIMER)
        if found is None:
            return  # a stray timer: drop it
        info, state = found
        self._limiter.reserved_token_due(txn, info, state, task)
        new = state.copy()
        await self._limiter.place(txn, info, new, task, state.held)
        self._rows.put_state(txn, info, state, new)

    async def lease_tasks(
        self, worker_id: str, task_group: str, max_tasks: int, *,
        max_reply_bytes: int | None = None, reply_bytes_used: int = 0,
        acks: Sequence[str] = (),
    ) -> list[LeasedTask]:
        """Lease up to ``max_tasks`` due tasks of ``task_group``: highest priority (lowest
        number) first, then earliest due.

        With ``max_reply_bytes`` the tasks are sized as they are picked: picking stops before
        the reply (of which ``reply_bytes_used`` is already taken, e.g. by other shards) would
        exceed it; a task larger than a whole reply fails its job ``TASK_TOO_LARGE``. ``acks``
        acknowledge this worker's earlier leases in the same batch (unknown ones and other
        workers' are ignored).
        """
        lim.check_worker_id(self._limits, worker_id)
        lim.check_task_group(self._limits, task_group)
        lim.check_max_tasks(self._limits, max_tasks)
        if self._rt.faults.buggify("shard.lease.batch_one"):
            max_tasks = 1
        self._check_acks(acks)
        budget = ReplyBudget(max_reply_bytes, reply_bytes_used)
        # Due timers first, in their own batch, so that the lease sees them in the queue.
        async with self._commit.operation(
            empty=EmptyBatch.NOTHING, refusal_barrier=False, prelude=self._promote_all_due
        ) as txn:
            self._ack_in(txn, worker_id, acks)
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
                sp = txn.savepoint()
                try:
                    fit, leased = await self._lease_one(txn, rk, task, worker_id, expiry, budget)
                except Exception as exc:
                    await self.poison.queued(txn, sp, rk, task.encode(), exc)
                    continue
                if fit == Fit.FULL:
                    self._rt.faults.sometimes("shard.lease.reply_split_by_size")
                    break
                if leased is not None:
                    out.append(leased)
        self._stats["leased"] += len(out)
        return out

    async def _lease_one(
        self, txn: Txn, rk: bytes, task: Task, worker_id: str, expiry: int,
        budget: ReplyBudget,
    ) -> tuple[Fit, LeasedTask | None]:
        """Lease ``task`` if it fits in ``budget``: ``(FITS, leased)``. ``(FULL, None)`` leaves
        it queued for a later reply; ``(TOO_LARGE, None)`` has failed its job; a stray queue
        entry is dropped: ``(FITS, None)``."""
        if task.is_refresh:
            return self._lease_refresh(txn, rk, task, worker_id, expiry, budget)
        found = await self._rows.queued_job(txn, task, READY)
        if found is None:
            txn.delete(rk)  # a stray queue entry: drop it
            return Fit.FITS, None
        info, state = found
        leased = LeasedTask(
            task.task_id, task.tenant, task.job_id, task.attempt, task.task_group, info.payload,
            info.priority, dict(info.metadata), expiry, timeout_ms=info.timeout_ms,
        )
        size = task_reply_bytes(leased)
        fit = budget.fit(size)
        if fit == Fit.TOO_LARGE:
            await self._fail_unsendable(txn, info, state, task, size, budget)
        if fit != Fit.FITS:
            return fit, None
        budget.take(size)
        if not self._rt.faults.mutation("double-lease"):
            txn.delete(rk)
        new = transitions.leased(state, txn.now, task.task_id)
        lease = Lease(
            task.task_id, task.tenant, task.job_id, task.attempt, task.task_group, worker_id,
            txn.now, expiry, acked=False,
        )
        txn.put(key(Prefix.LEASE, task.task_id), lease.encode())
        txn.put(key(Prefix.LEASE_EXPIRY, expiry, task.task_id), b"")
        attempt = Attempt(task.attempt, task.task_id, AttemptState.RUNNING, worker_id, txn.now)
        txn.put(key(Prefix.ATTEMPT, task.tenant, task.job_id, task.attempt), attempt.encode())
        txn.emit(
            "task_leased", shard=self.shard_id, task_id=task.task_id, tenant=task.tenant,
            job_id=task.job_id, attempt=task.attempt, worker_id=worker_id,
            task_group=task.task_group, priority=task.priority, due_ms=task.due_ms,
            expiry_ms=expiry, at_ms=txn.now, mono_ms=txn.mono,
        )
        self._rows.put_state(txn, info, state, new)
        return Fit.FITS, leased

    async def _fail_unsendable(
        self, txn: Txn, info: JobInfo, state: JobState, task: Task, size: int,
        budget: ReplyBudget,
    ) -> None:
        """End a job whose task can never fit in a LeaseTasks reply: FAILED ``TASK_TOO_LARGE``
        (its queued task removed, its slots released, the attempt recorded), not retried."""
        message = (
            f"task of job {info.job_id!r} needs up to {size} bytes in a LeaseTasks reply, more "
            f"than the reply budget of {budget.max_bytes} bytes (the server's "
            f"max_message_bytes less headroom); it cannot be delivered"
        )
        new = transitions.unsendable(state, txn.now)
        await self._limiter.unqueue_task(txn, info, new)
        attempt = Attempt(task.attempt, task.task_id, AttemptState.FAILED, "", txn.now, txn.now,
                          error_code=TASK_TOO_LARGE,
                          error_data=msgpack.packb(message, use_bin_type=True))
        txn.put(key(Prefix.ATTEMPT, info.tenant, info.job_id, task.attempt), attempt.encode())
        txn.emit("task_too_large", shard=self.shard_id, tenant=info.tenant, job_id=info.job_id,
                 attempt=task.attempt, task_id=task.task_id, size_bytes=size,
                 max_bytes=budget.max_bytes, at_ms=txn.now)
        self._completed["failed"] += 1
        self._rows.put_state(txn, info, state, new)

    def _lease_refresh(
        self, txn: Txn, rk: bytes, task: Task, worker_id: str, expiry: int,
        budget: ReplyBudget,
    ) -> tuple[Fit, LeasedTask | None]:
        qs = self._limiter.queue_state(txn, task.tenant, task.job_id)
        if qs is None or qs.refresh_task_id != task.task_id:
            txn.delete(rk)
            return Fit.FITS, None
        leased = LeasedTask(
            task.task_id, task.tenant, task.job_id, 0, task.task_group, b"", task.priority, {},
            expiry, RefreshRequest(task.job_id, qs.max_concurrency, dict(qs.metadata)),
        )
        size = task_reply_bytes(leased)
        if budget.fit(size) != Fit.FITS:
            return Fit.FULL, None  # small (bounded metadata): it waits for the next reply
        budget.take(size)
        txn.delete(rk)
        lease = Lease(
            task.task_id, task.tenant, task.job_id, 0, task.task_group, worker_id, txn.now, expiry
        )
        txn.put(key(Prefix.LEASE, task.task_id), lease.encode())
        txn.put(key(Prefix.LEASE_EXPIRY, expiry, task.task_id), b"")
        txn.emit(
            "refresh_leased", shard=self.shard_id, task_id=task.task_id, tenant=task.tenant,
            queue=task.job_id, worker_id=worker_id, expiry_ms=expiry, at_ms=txn.now,
        )
        return Fit.FITS, leased

    # -- delivery acknowledgements ----------------------------------------------------------

    def _check_acks(self, acks: Sequence[str]) -> None:
        limit = self._limits.max_tasks_per_lease
        if len(acks) > limit:
            raise InvalidArgument(f"{len(acks)} acks in one call; max_tasks_per_lease is {limit}")

    def _ack_in(self, txn: Txn, worker_id: str, task_ids: Sequence[str]) -> None:
        """Mark this worker's unacknowledged leases among ``task_ids`` acknowledged, in
        ``txn``'s batch (ids of ended, unknown or other workers' leases are ignored)."""
        for task_id in task_ids:
            lease = self._mirror.leases.get(task_id)
            lk = key(Prefix.LEASE, task_id)
            if lease is None or lease.acked or lease.worker_id != worker_id or lk in txn.ops:
                continue
            txn.put(lk, replace(lease, acked=True).encode())
            txn.emit("lease_acked", shard=self.shard_id, task_id=task_id, tenant=lease.tenant,
                     job_id=lease.job_id, attempt=lease.attempt, at_ms=txn.now)

    async def acknowledge(self, worker_id: str, task_ids: Sequence[str]) -> None:
        """Acknowledge delivery of this worker's leases ``task_ids`` in one batch (for acks of
        a shard the worker's lease call did not lease from)."""
        lim.check_worker_id(self._limits, worker_id)
        self._check_acks(task_ids)
        async with self._commit.operation(refusal_barrier=False) as txn:
            self._ack_in(txn, worker_id, task_ids)

    async def report_refresh(
        self, worker_id: str, task_id: str, new_max: int | None, error: str | None = None
    ) -> None:
        """A worker's answer to a refresh task: the queue's new max, or (``new_max=None``) a
        failure, which backs the next refresh off."""
        lim.check_worker_id(self._limits, worker_id)
        lim.check_task_id(self._limits, task_id)
        if new_max is not None:
            check_refresh_value(new_max)
        async with self._commit.operation(empty=EmptyBatch.NOTHING) as txn:
            lease = require_refresh_lease(self._mirror.leases.get(task_id), worker_id, task_id)
            await self._limiter.end_refresh(txn, lease, new_max)

    # -- running tasks ----------------------------------------------------------------------

    def _owned_lease(self, worker_id: str, task_id: str) -> Lease:
        lease = self._mirror.leases.get(task_id)
        if lease is None:
            raise NotFound(f"lease not found for task {quote(task_id)}")
        # Planted bug for the simulator: any worker may heartbeat any lease.
        if lease.worker_id != worker_id and not self._rt.faults.mutation("no-fencing"):
            raise FailedPrecondition(
                f"lease owner mismatch: task {quote(task_id)} is leased to another worker"
            )
        return lease

    async def heartbeat(self, worker_id: str, task_id: str, *,
                        waiting: bool = False) -> HeartbeatResult:
        """Extend a lease and acknowledge its delivery; reports whether the job has been
        cancelled. With ``waiting`` (the worker holds the task but its handler has not started,
        DESIGN §4 "Delivery") the lease is extended but not acknowledged: expiring, it is still
        undelivered. A lease already acknowledged stays so."""
        lim.check_worker_id(self._limits, worker_id)
        lim.check_task_id(self._limits, task_id)
        async with self._commit.operation() as txn:
            lease = self._owned_lease(worker_id, task_id)
            # lease_ms from now on the monotonic clock, so never shorter than before; after a
            # backward wall step the stored (wall-clock) expiry goes down with the clock.
            expiry = txn.now + self._lease_ms
            acked = lease.acked or not waiting
            if expiry != lease.expiry_ms or acked != lease.acked:
                # A heartbeat of a started task acknowledges delivery too, in the batch that
                # extends the lease.
                txn.put(key(Prefix.LEASE, task_id),
                        replace(lease, expiry_ms=expiry, acked=acked).encode())
            if expiry != lease.expiry_ms:
                txn.delete(key(Prefix.LEASE_EXPIRY, lease.expiry_ms, task_id))
                txn.put(key(Prefix.LEASE_EXPIRY, expiry, task_id), b"")
                txn.emit(
                    "lease_extended", shard=self.shard_id, task_id=task_id, tenant=lease.tenant,
                    job_id=lease.job_id, attempt=lease.attempt, expiry_ms=expiry, at_ms=txn.now,
                    by_worker_id=worker_id,
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
            # Planted bug for the simulator: the last report of a batch is answered OK but
            # never recorded.
            dropped = len(reports) > 1 and self._rt.faults.mutation("drop-reports")
            for n, report in enumerate(reports):
                if dropped and n == len(reports) - 1:
                    results.append(None)
                    continue
                sp = txn.savepoint()
                try:
                    self._validate_report(report)
                    await self._report_one(txn, report)
                    results.append(None)
                except SiloError as exc:
                    txn.rollback(sp)
                    results.append(exc)
                except Exception as exc:
                    # A poison report answers alone; the others in the batch are recorded.
                    lease = self._mirror.leases.get(report.task_id)
                    if lease is not None and lease.worker_id != report.worker_id:
                        lease = None
                    await self.poison.lease(txn, sp, lease, exc, what=f"report {report.task_id}")
                    results.append(Internal(
                        f"the outcome of task {report.task_id!r} could not be recorded "
                        f"({type(exc).__name__}); its job ended FAILED {INTERNAL_ERROR}"
                    ))
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
                first = await self._limiter.first_request(txn, info.tenant, queue)
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
        lim.check_report_ids(L, report)
        outcome = report.outcome
        if isinstance(outcome, Success):
            lim.check_bytes(outcome.result, "result", "result_max_bytes", L.result_max_bytes)
        elif isinstance(outcome, Failure):
            lim.check_error_code(L, outcome.code)
            lim.check_bytes(
                outcome.data, "error data", "error_data_max_bytes", L.error_data_max_bytes
            )
        elif not isinstance(outcome, (Cancelled, Released)):
            raise InvalidArgument("outcome must be success, failure, cancelled or released")

    async def _report_one(self, txn: Txn, report: OutcomeReport) -> None:
        lease = self._mirror.leases.get(report.task_id)
        if lease is not None and key(Prefix.LEASE, report.task_id) in txn.ops:
            lease = None  # already ended earlier in this same batch
        if lease is None:
            await self._check_repeated_report(txn, report)
            return
        # Planted bug for the simulator: any worker may report any lease.
        if lease.worker_id != report.worker_id and not self._rt.faults.mutation("no-fencing"):
            raise FailedPrecondition(
                f"lease owner mismatch: task {quote(report.task_id)} is leased to another "
                f"worker"
            )
        if lease.is_refresh:
            raise InvalidArgument(
                f"task {quote(report.task_id)} is a refresh task; report it with ReportRefresh"
            )
        await self.end_attempt(txn, lease, report.outcome, reaped=False,
                               by_worker_id=report.worker_id)

    async def _check_repeated_report(self, txn: Txn, report: OutcomeReport) -> None:
        """A report without a live lease: succeed if it repeats the recorded outcome."""
        if report.tenant is None or report.job_id is None or report.attempt is None:
            raise NotFound(f"lease not found for task {quote(report.task_id)}")
        k = key(Prefix.ATTEMPT, report.tenant, report.job_id, report.attempt)
        raw = await txn.get(k)
        if raw is None:
            raise NotFound(f"lease not found for task {quote(report.task_id)}")
        attempt = Attempt.decode(k, raw)
        if attempt.task_id != report.task_id:
            raise NotFound(f"lease not found for task {quote(report.task_id)}")
        if attempt.worker_id != report.worker_id:
            raise FailedPrecondition(
                f"lease owner mismatch: task {quote(report.task_id)} was leased to another "
                f"worker"
            )
        crashed = attempt.error_code == WORKER_CRASHED
        if attempt.state == _attempt_state_for(report.outcome) and not crashed:
            return
        raise NotFound(
            f"lease not found for task {quote(report.task_id)}: the attempt already ended "
            f"{attempt.state.name}"
            + (" (lease expired)" if attempt.error_code == WORKER_CRASHED else "")
        )

    async def end_attempt(
        self, txn: Txn, lease: Lease, outcome: Outcome, *, reaped: bool, final: bool = False,
        by_worker_id: str = "",
    ) -> None:
        """The single path by which a running attempt ends (report, reap or poison). With
        ``final`` a failure is not retried. ``by_worker_id``: the worker whose report ends it
        ("" for a reap or a poison item), carried on the ``lease_ended`` event.

        A reaped lease that was never acknowledged is undelivered: unless the job was cancelled
        or already had ``MAX_UNDELIVERED`` of them this run, its attempt ends UNDELIVERED and
        the job is re-queued at once (limits released and re-acquired, a new attempt number
        and task id, no backoff) with its retry budget untouched.

        A lease its worker hands back unstarted (:class:`Released`) is not an attempt either:
        its row ends UNDELIVERED (error code ``RELEASED``) and the job is re-queued the same way,
        whether or not the lease was acknowledged, without counting in ``undelivered``. A
        cancelled job ends CANCELLED instead, and a job at ``max_attempts_per_job`` ends FAILED
        ``RELEASED``."""
        info = await self._rows.info(txn, lease.tenant, lease.job_id)
        state = await self._rows.state(txn, lease.tenant, lease.job_id)
        if info is None or state is None:
            raise NotFound(
                f"job not found: {quote(lease.job_id)} (tenant {quote(lease.tenant)})"
            )
        cancelled_at = await self._rows.cancelled_at(txn, lease.tenant, lease.job_id)
        ak = key(Prefix.ATTEMPT, lease.tenant, lease.job_id, lease.attempt)
        raw = await txn.get(ak)
        started = Attempt.decode(ak, raw).started_at_ms if raw is not None else lease.leased_at_ms
        now = txn.now
        released = False
        if isinstance(outcome, Released):
            released = (not reaped and cancelled_at is None
                        and state.attempt_rows < self._limits.max_attempts_per_job)
            if not released:
                outcome = Cancelled() if cancelled_at is not None else Failure(RELEASED)
        undelivered = not released and (
            reaped
            and not lease.acked
            and cancelled_at is None
            and state.undelivered < MAX_UNDELIVERED
            # A job at max_attempts_per_job gets no further attempt: the expiry is a failure.
            and state.attempt_rows < self._limits.max_attempts_per_job
        )
        if undelivered or released:
            attempt = Attempt(lease.attempt, lease.task_id, AttemptState.UNDELIVERED,
                              lease.worker_id, started, now,
                              error_code=RELEASED if released else None)
        elif isinstance(outcome, Success):
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

        if released:
            new = transitions.released(state, now)
            if self._rt.faults.mutation("charge-released"):
                new.run_attempts = state.run_attempts  # planted bug: the budget is charged
            await self._limiter.queue_attempt(txn, info, new, now)
            self._rt.faults.sometimes("shard.lease.released_requeued")
        elif undelivered:
            new = transitions.undelivered(state, now)
            if self._rt.faults.mutation("charge-undelivered"):
                new.run_attempts = state.run_attempts  # planted bug: the budget is charged
            await self._limiter.queue_attempt(txn, info, new, now)
            self._stats["undelivered"] += 1
            self._rt.faults.sometimes("shard.lease.undelivered_requeued")
        elif isinstance(outcome, Success):
            new = transitions.attempt_ended(state, now, Event.SUCCEED)
        elif isinstance(outcome, Cancelled) or cancelled_at is not None:
            new = transitions.attempt_ended(state, now, Event.CANCEL)
            if cancelled_at is None:
                txn.put(key(Prefix.CANCEL, lease.tenant, lease.job_id), encode_int(now))
        else:
            jitter = 1.0 + self._rng.random()
            if self._rt.faults.mutation("poison-retry-overflow"):
                # Planted bug for the simulator: the unguarded float power of old, which
                # overflows for a large factor and retry number.
                _ = info.retry.initial_backoff_ms * info.retry.backoff_factor ** max(
                    0, state.run_attempts - 1)
            delay = None if final else retry_delay_ms(info.retry, state.run_attempts, jitter)
            if state.attempt_rows >= self._limits.max_attempts_per_job:
                delay = None  # the job has made every attempt it may ever make
            if delay is None:
                new = transitions.attempt_ended(state, now, Event.FAIL)
            else:
                new = transitions.attempt_ended(state, now, Event.RETRY)
                await self._limiter.queue_attempt(txn, info, new, now + delay)
                self._stats["retried"] += 1
        kind = ("released" if released else "undelivered" if undelivered
                else "reaped" if reaped else attempt.state.name.lower())
        txn.emit(
            "lease_ended", shard=self.shard_id, task_id=lease.task_id, tenant=lease.tenant,
            job_id=lease.job_id, attempt=lease.attempt, outcome=kind, at_ms=now,
            state=attempt.state.name, by_worker_id=by_worker_id,
        )
        if reaped and not undelivered:
            self._stats["reaped"] += 1
        if new.status.terminal:
            self._completed[new.status.name.lower()] += 1
        self._rows.put_state(txn, info, state, new)

    async def reap_expired(self) -> int:
        """End every lease whose expiry has passed: undelivered (re-queued) when it was never
        acknowledged, else a ``WORKER_CRASHED`` failure (or a cancel when the job was
        cancelled); returns how many were reaped."""
        if self._rt.faults.mutation("no-reaper"):
            return 0
        batch = 1 if self._rt.faults.buggify("shard.reap.batch_one") else REAP_BATCH
        async with self._commit.operation(empty=EmptyBatch.NOTHING, refusal_barrier=False) as txn:
            assert txn.mono is not None
            expired = self._mirror.expired(txn.mono, batch)
            await txn.prefetch(
                self._lease_keys([self._mirror.leases.get(t) for _, t in expired])
            )
            for ek, task_id in expired:
                lease = self._mirror.leases.get(task_id)
                if lease is None:
                    # An expiry entry without its lease (cannot happen while the tables
                    # agree): drop it, or the reaper would meet it on every round.
                    self.poison.count(f"reap {task_id}", NotFound(f"no lease for {ek.hex()}"))
                    txn.delete(ek)
                    continue
                sp = txn.savepoint()
                try:
                    if lease.is_refresh:
                        await self._limiter.end_refresh(txn, lease, None, reaped=True)
                    else:
                        await self.end_attempt(txn, lease, Failure(WORKER_CRASHED), reaped=True)
                except Exception as exc:
                    await self.poison.lease(txn, sp, lease, exc, what=f"reap {task_id}")
        return len(expired)


def _attempt_state_for(outcome: Outcome) -> AttemptState:
    if isinstance(outcome, Success):
        return AttemptState.SUCCEEDED
    if isinstance(outcome, Failure):
        return AttemptState.FAILED
    if isinstance(outcome, Released):
        return AttemptState.UNDELIVERED
    return AttemptState.CANCELLED


