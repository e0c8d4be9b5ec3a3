"""Operator operations on one job: cancel, restart, expedite, delete (DESIGN §3).

Each is allowed only in the statuses :func:`~silo.shard.transitions.require` lists (else
FAILED_PRECONDITION, answered after the read barrier) and applies the job's next state through
:mod:`silo.shard.transitions`.
"""

from __future__ import annotations

from dataclasses import replace

from silo import keys
from silo.keys import Prefix, key
from silo.model import (
    PARKED,
    TIMER,
    AttemptHighWater,
    JobFingerprint,
    JobStatus,
    Task,
    concurrency_key,
    encode_int,
)
from silo.shard import transitions
from silo.shard.commit import EmptyBatch
from silo.shard.context import ShardRoom
from silo.shard.tables import (
    JOBS_TERMINAL,
    JOBS_TOTAL,
    attempt_high_water_key,
    fingerprint_key,
    request_key,
    status_counter,
    status_index_key,
    timer_key,
)
from silo.shard.transitions import Operation, require


class OperatorOps(ShardRoom):
    """Cancel, restart, expedite and delete of one shard's jobs."""

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
                    await self._limiter.unqueue_task(txn, info, new)
                self._completed["cancelled"] += 1
                self._rows.put_state(txn, info, state, new)

    async def restart(self, tenant: str, job_id: str) -> None:
        """Give a FAILED or CANCELLED job a new run with a fresh retry budget."""
        async with self._commit.operation(empty=EmptyBatch.IMPOSSIBLE) as txn:
            info, state = await self._rows.job(txn, tenant, job_id)
            require(Operation.RESTART, state.status)
            transitions.restart_attempts_left(state, info.retry, self._limits.max_attempts_per_job)
            txn.delete(key(Prefix.CANCEL, tenant, job_id))
            new = transitions.restarted(state, txn.now)
            await self._limiter.queue_attempt(txn, info, new, txn.now)
            self._rows.put_state(txn, info, state, new)

    async def expedite(self, tenant: str, job_id: str) -> None:
        """Make a scheduled job's future task due now (same attempt and task id).

        A job waiting for its start time (or a retry's backoff) acquires its limits now. A job
        already due is left as it is: one ready or parked on a concurrency queue (a parked
        request is ordered by priority and due time, and its due time has passed), or one
        waiting for a rate-limit token it has reserved: a token is never granted before its
        time, so the rate holds whoever asks.
        """
        async with self._commit.operation() as txn:
            info, state = await self._rows.job(txn, tenant, job_id)
            require(Operation.EXPEDITE, state.status)
            waits_for_token = (
                state.task is not None and state.task[2] == TIMER and state.held > 0
            )
            if state.task is not None and state.task[1] > txn.now and not waits_for_token:
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
                         attempt=attempt, old_due_ms=due_ms, due_ms=txn.now, at_ms=txn.now,
                         mono_ms=txn.mono)
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
            fk = fingerprint_key(tenant, job_id)
            raw = await txn.get(fk)
            made = JobFingerprint.decode(fk, raw) if raw is not None else None
            txn.delete(fk)
            # Attempt numbers go on increasing if the id is used again (handlers fence on them),
            # and a later try of the enqueue call that created this job is not taken for a new
            # call (it carries the same request id).
            txn.put(attempt_high_water_key(tenant, job_id), AttemptHighWater(
                state.attempt, made.fingerprint if made else None,
                made.request_id if made else "").encode())
            txn.bump(JOBS_TOTAL, -1)
            txn.bump(JOBS_TERMINAL, -1)
            txn.bump(status_counter(tenant, state.status), -1)
            txn.emit("job_deleted", shard=self.shard_id, tenant=tenant, job_id=job_id,
                     status=state.status.name)

