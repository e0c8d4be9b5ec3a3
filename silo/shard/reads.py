"""Reads of one shard: a job and its attempts, a job's result, a queue, statistics, counters.

A read of rows answers (a refusal included) only once everything it may have seen is durable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from silo import keys
from silo.errors import NotFound
from silo.keys import Prefix, key
from silo.model import Attempt, JobResult, JobState, JobStatus, JobView
from silo.shard.context import ShardRoom
from silo.shard.tables import JOBS_TERMINAL, JOBS_TOTAL, counter_key, status_counter
from silo.shard.transitions import Operation, require


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
    undelivered: int = 0
    """Leases that expired before their worker acknowledged them (re-queued)."""
    parked_requests: int = 0
    """Tasks waiting for a concurrency slot."""
    slots_held: int = 0
    """Concurrency slots currently held (over every queue)."""
    poison_items: int = 0
    """Items a background loop, a report or the open could not process (DESIGN §4 "No
    poison"): each was logged and its job failed ``INTERNAL_ERROR`` or its row quarantined."""


class ShardReads(ShardRoom):
    """Job, result, queue and counter reads of one shard."""

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
            poison_items=self._stats["poison"] + self._store.poison_items,
            undelivered=self._stats["undelivered"],
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
                if not rows:  # a page may be short only at the end, but never trust that
                    break
                cursor = rows[-1][0] + b"\x00"
        return dict(sorted(out.items()))

