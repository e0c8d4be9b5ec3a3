"""Poison items (DESIGN §4 "No poison"): what the shard does with an item it cannot process.

A background loop (reaper, timers, grants, floating refresh), a lease round or a report batch
that hits an unexpected error on one item undoes that item's writes (its
:class:`~silo.shard.txn.Savepoint`), logs the error and counts it
(``ShardStatistics.poison_items``), then ends the item's job FAILED with code
``INTERNAL_ERROR`` (its attempt recorded as failed, its lease and slots released). When even
that fails (the job's own rows are unreadable), the rows in the way are moved to the quarantine
table (:func:`~silo.shard.tables.quarantine_key`), byte for byte: out of the live tables, so no
loop meets them again, but never lost. The other items of the batch go on.

Rows the shard could not decode when it loaded (``ShardMirror.corrupt``) are handled the same
way in the first transaction after the load.

Invariants: nothing here raises (a failure of the fallback is logged and the item skipped);
every write goes through the caller's transaction, so it commits with the batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from silo import keys
from silo.errors import NotFound
from silo.keys import Prefix, key
from silo.model import (
    INTERNAL_ERROR,
    Attempt,
    AttemptState,
    CorruptRecord,
    Failure,
    JobState,
    JobStatus,
    Lease,
    Outcome,
    decode_int,
)
from silo.shard import transitions
from silo.shard.context import ShardContext, ShardRoom
from silo.shard.poison import job_of_row, log_poison
from silo.shard.tables import quarantine_key
from silo.shard.txn import Savepoint, Txn

INTERNAL_ERROR_DATA_MAX_CHARS = 500
"""How much of an unexpected error's text is kept as the failed attempt's error data."""
LEASE_SEARCH_PAGE = 1000
"""Status rows read per page when looking for the job of an unreadable lease row."""

EndAttempt = Callable[..., Awaitable[None]]


class PoisonItems(ShardRoom):
    """Ends the jobs of items the shard cannot process, or quarantines their rows."""

    def __init__(self, ctx: ShardContext, end_attempt: EndAttempt) -> None:
        super().__init__(ctx)
        self._end_attempt = end_attempt

    def count(self, what: str, exc: BaseException) -> None:
        """Log one poison item and count it."""
        self._stats["poison"] += 1
        log_poison(self.shard_id, what, exc)

    # -- a running attempt ------------------------------------------------------------------

    async def lease(
        self, txn: Txn, sp: Savepoint, lease: Lease | None, exc: Exception, *, what: str
    ) -> None:
        """Undo what ending ``lease`` wrote since ``sp``, then end its job FAILED
        ``INTERNAL_ERROR``; if that fails too, quarantine the lease rows."""
        txn.rollback(sp)
        self.count(what, exc)
        self._emit(txn, what, exc)
        if lease is None:
            return
        sp = txn.savepoint()
        try:
            if lease.is_refresh:
                await self._limiter.end_refresh(txn, lease, None)
            else:
                await self._fail_running(txn, lease, exc)
        except Exception as again:
            txn.rollback(sp)
            log_poison(self.shard_id, f"{what}: ending its job", again)
            self._quarantine(txn, key(Prefix.LEASE, lease.task_id), lease.encode())
            txn.delete(key(Prefix.LEASE_EXPIRY, lease.expiry_ms, lease.task_id))

    async def _fail_running(self, txn: Txn, lease: Lease, exc: Exception) -> None:
        t, j = lease.tenant, lease.job_id
        if not await self._readable(txn, key(Prefix.STATUS, t, j), JobState.decode):
            # A live lease means RUNNING (DESIGN §3), holding every limit of the job.
            info = await self._rows.info(txn, t, j)
            if info is None:
                raise NotFound(f"no job {j!r} (tenant {t!r}) for lease {lease.task_id!r}")
            running = JobState(
                JobStatus.RUNNING, lease.leased_at_ms, attempt=lease.attempt,
                lease_task_id=lease.task_id, held=len(info.limits),
            )
            txn.put(key(Prefix.STATUS, t, j), running.encode())
        await self._readable(txn, key(Prefix.ATTEMPT, t, j, lease.attempt), Attempt.decode)
        await self._readable(txn, key(Prefix.CANCEL, t, j), decode_int)
        await self._end_attempt(txn, lease, internal_failure(exc), reaped=False, final=True)
        self._rt.faults.sometimes("shard.poison.job_failed")

    # -- a queued task ----------------------------------------------------------------------

    async def queued(
        self, txn: Txn, sp: Savepoint, k: bytes, raw: bytes | None, exc: Exception
    ) -> None:
        """Undo what processing the queued row ``k`` (stored value ``raw``) wrote since ``sp``,
        then end its job FAILED ``INTERNAL_ERROR`` without running (its queued attempt
        recorded as failed); if that fails too, or the row is no job's, quarantine the row."""
        txn.rollback(sp)
        self.count(f"queued row {k.hex()}", exc)
        self._emit(txn, f"queued row {k.hex()}", exc)
        sp = txn.savepoint()
        try:
            await self._fail_queued(txn, k, raw, exc)
        except Exception as again:
            txn.rollback(sp)
            log_poison(self.shard_id, f"queued row {k.hex()}: ending its job", again)
            self._quarantine(txn, k, raw)

    async def _fail_queued(self, txn: Txn, k: bytes, raw: bytes | None, exc: Exception) -> None:
        job = job_of_row(k)
        info = None if job is None else await self._rows.info(txn, *job)
        state = None if job is None else await self._rows.state(txn, *job)
        attempt_in_key = keys.parse(k)[1][-1]
        if (
            info is None
            or state is None
            or state.status != JobStatus.SCHEDULED
            or state.task is None
            or state.task[0] != attempt_in_key  # e.g. a refresh task (attempt 0) of a queue
        ):
            raise NotFound(f"no scheduled job owns queued row {k.hex()}")
        if raw is not None:
            txn.put(quarantine_key(k), raw)
        txn.delete(k)
        new = state.copy()
        task = await self._limiter.unqueue_task(txn, info, new)
        attempt = state.task[0] if task is None else task.attempt
        failure = internal_failure(exc)
        txn.put(
            key(Prefix.ATTEMPT, info.tenant, info.job_id, attempt),
            Attempt(attempt, state.task[3], AttemptState.FAILED, "", txn.now, txn.now,
                    error_code=failure.code, error_data=failure.data).encode(),
        )
        new = transitions.poisoned(new, txn.now)
        self._completed["failed"] += 1
        self._rows.put_state(txn, info, state, new)

    # -- rows a load could not decode -------------------------------------------------------

    async def quarantine_loaded(self, txn: Txn) -> None:
        """The rows the last load set aside: fail their jobs (when the row says which) and
        move them to the quarantine table (lock held, inside ``txn``)."""
        corrupt, self._mirror.corrupt = self._mirror.corrupt, []
        for k, raw in corrupt:
            exc = CorruptRecord(k, "could not be decoded when the shard loaded")
            if k[0] in (Prefix.TIMER, Prefix.READY, Prefix.CONCURRENCY_REQUEST):
                await self.queued(txn, txn.savepoint(), k, raw, exc)
                continue
            self.count(f"row {k.hex()} at load", exc)
            self._quarantine(txn, k, raw)
            if k[0] == Prefix.LEASE:
                sp = txn.savepoint()
                try:
                    await self._fail_job_of_lost_lease(txn, k, exc)
                except Exception as again:
                    txn.rollback(sp)
                    log_poison(self.shard_id, f"lease row {k.hex()}: ending its job", again)

    async def _fail_job_of_lost_lease(self, txn: Txn, k: bytes, exc: Exception) -> None:
        """The lease row ``k`` was unreadable: find the RUNNING job whose lease it was (one
        scan of the status table, only ever for a damaged lease row) and end it FAILED."""
        _, (task_id,) = keys.parse(k)
        start, end = keys.prefix_range(Prefix.STATUS)
        while True:  # ends: every page starts past the last key of the one before
            rows = await txn.scan(start, end, limit=LEASE_SEARCH_PAGE)
            for sk, sv in rows:
                try:
                    state = JobState.decode(sk, sv)
                except CorruptRecord:
                    continue
                if state.status == JobStatus.RUNNING and state.lease_task_id == task_id:
                    _, (t, j) = keys.parse(sk)
                    await self._fail_running_without_lease(txn, str(t), str(j), state, exc)
                    return
            if not rows:
                return
            start = rows[-1][0] + b"\x00"

    async def _fail_running_without_lease(
        self, txn: Txn, tenant: str, job_id: str, state: JobState, exc: Exception
    ) -> None:
        info = await self._rows.info(txn, tenant, job_id)
        if info is None:
            return
        task_id = state.lease_task_id
        assert task_id is not None
        expiry = next(
            (int(keys.parse(ek)[1][0]) for ek, t in self._mirror.expiries.items() if t == task_id),
            0,
        )
        ak = key(Prefix.ATTEMPT, tenant, job_id, state.attempt)
        raw = await txn.get(ak)
        attempt = None
        if raw is not None:
            try:
                attempt = Attempt.decode(ak, raw)
            except CorruptRecord:
                self._quarantine(txn, ak, raw)
        lease = Lease(
            task_id, tenant, job_id, state.attempt, info.task_group,
            "" if attempt is None else attempt.worker_id,
            state.changed_at_ms if attempt is None else attempt.started_at_ms, expiry,
        )
        await self._end_attempt(txn, lease, internal_failure(exc), reaped=False, final=True)
        self._rt.faults.sometimes("shard.poison.job_failed")

    # -- helpers ----------------------------------------------------------------------------

    def _emit(self, txn: Txn, what: str, exc: BaseException) -> None:
        """Announce the poison item with the batch that handles it (before its job's events)."""
        txn.emit("poison_item", shard=self.shard_id, what=what,
                 error=f"{type(exc).__name__}: {exc}"[:INTERNAL_ERROR_DATA_MAX_CHARS],
                 at_ms=txn.now)

    def _quarantine(self, txn: Txn, k: bytes, raw: bytes | None) -> None:
        """Move row ``k`` (stored value ``raw``) out of the live tables."""
        if raw is not None:
            txn.put(quarantine_key(k), raw)
        txn.delete(k)

    async def _readable(
        self, txn: Txn, k: bytes, decode: Callable[[bytes, bytes], object]
    ) -> bool:
        """True when row ``k`` is absent or decodes; a row that does not is quarantined."""
        raw = await txn.get(k)
        if raw is None:
            return True
        try:
            decode(k, raw)
            return True
        except CorruptRecord:
            self._quarantine(txn, k, raw)
            return False


def internal_failure(exc: BaseException) -> Outcome:
    """The outcome recorded for an attempt ended by a poison item."""
    text = f"{type(exc).__name__}: {exc}"[:INTERNAL_ERROR_DATA_MAX_CHARS]
    return Failure(INTERNAL_ERROR, text.encode("utf-8", "replace"))
