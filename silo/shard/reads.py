"""Reads of one shard: a job and its attempts, a job's result, a queue, statistics, counters.

A read of rows answers (a refusal included) only once everything it may have seen is durable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from silo import keys
from silo.errors import NotFound, quote
from silo.keys import Prefix, key
from silo.model import Attempt, JobResult, JobState, JobStatus, JobView
from silo.shard import validation
from silo.shard.context import ShardRoom
from silo.shard.tables import JOBS_TERMINAL, JOBS_TOTAL, counter_key, status_counter
from silo.shard.transitions import Operation, require
from silo.shard.txn import Txn


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


ATTEMPT_PAGE_WINDOWS_MAX = 64
"""Windows of attempt numbers one GetJob page may read (each twice the last: 2^64 numbers)."""


class ShardReads(ShardRoom):
    """Job, result, queue and counter reads of one shard."""

    # -- reads ------------------------------------------------------------------------------

    async def get_job(
        self, tenant: str, job_id: str, *, include_attempts: bool = False,
        max_attempts: int = 0, attempts_before: int = 0,
    ) -> JobView:
        """The job; with ``include_attempts`` a page of its attempts, newest first: at most
        ``max_attempts`` (0: ``get_job_attempts_default``; above ``get_job_attempts_max`` is
        INVALID_ARGUMENT), only those numbered below ``attempts_before`` when it is set.
        ``attempts_total`` of the view counts every stored attempt."""
        page = validation.check_attempts_page(self._limits, max_attempts, attempts_before)
        async with self._commit.read() as txn:
            info, state = await self._rows.job(txn, tenant, job_id)
            cancelled_at = await self._rows.cancelled_at(txn, tenant, job_id)
            attempts = None
            if include_attempts:
                attempts = await self._attempt_page(txn, tenant, job_id, state.attempt, page,
                                                    attempts_before)
            waiting_for = self._limiter.waiting_for(info, state)
        return JobView(info, state, cancelled_at, attempts, waiting_for, state.attempt_rows)

    async def _attempt_page(
        self, txn: Txn, tenant: str, job_id: str, highest: int, page: int, before: int
    ) -> tuple[Attempt, ...]:
        """Up to ``page`` attempts numbered below ``before`` (0: all), newest first.

        Attempt rows are keyed by number, so the page is read in windows of numbers going down
        from the top. Numbers can have gaps (an attempt cancelled before it was leased has no
        row), so a window short of rows is followed by a wider one below it, down to the lowest
        stored attempt: at most ``ATTEMPT_PAGE_WINDOWS_MAX`` windows, each at most twice as wide
        as the one before.
        """
        start, end = keys.prefix_range(Prefix.ATTEMPT, tenant, job_id)
        first = await txn.scan(start, end, limit=1)
        if not first:
            return ()
        lowest = Attempt.decode(*first[0]).attempt
        top = highest + 1 if before == 0 else min(before, highest + 1)
        out: list[Attempt] = []
        width = page
        for _ in range(ATTEMPT_PAGE_WINDOWS_MAX):
            if len(out) >= page or top <= lowest:
                break
            bottom = max(lowest, top - width)
            rows = await txn.scan(key(Prefix.ATTEMPT, tenant, job_id, bottom),
                                  key(Prefix.ATTEMPT, tenant, job_id, top))
            out.extend(Attempt.decode(k, v) for k, v in reversed(rows))
            top = bottom
            width *= 2
        return tuple(out[:page])

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
            raise NotFound(f"attempt {view.state.attempt} of job {quote(job_id)} not found")
        attempt = Attempt.decode(k, raw)
        if status == JobStatus.SUCCEEDED:
            return JobResult(status, result=attempt.result)
        return JobResult(status, error_code=attempt.error_code, error_data=attempt.error_data)

    def queue_info(self, tenant: str, queue: str, *, max_listed: int = 100) -> dict[str, Any]:
        """A queue's max, holders and waiting requests (at most ``max_listed`` of each)."""
        validation.check_tenant(self._limits, tenant)
        validation.check_queue_key(self._limits, queue)
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
            scheduled_future_tasks=self._mirror.timer_rows,
            parked_requests=self._mirror.request_pages.total,
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
        """The stored counters (as mirrored in memory). A counter that reaches zero is deleted,
        so none is stored as 0; the filter only hides rows an older version left at 0."""
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

