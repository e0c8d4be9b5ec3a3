"""Concurrency, floating concurrency and rate limits of one shard (DESIGN §5).

Contract:
- A job acquires its limits one at a time before its attempt becomes a ready task, in one
  canonical order whatever the order it gave (:func:`acquisition_order`, applied when the job is
  stored, so ``JobState.held`` always counts a prefix of ``JobInfo.limits``): its rate limits
  first, in the order given, then its concurrency and floating limits sorted by queue key.
- A rate limit ``(name, key, limit, per_ms)`` reserves a token in the tenant's bucket, a sliding
  window kept as one reservation row per token granted (:mod:`silo.shard.reservations`): the
  token goes at ``max(now, latest slot, limit-th latest slot + per_ms)``, so no window of
  ``per_ms`` ever holds more than ``limit`` tokens, and reservations are served in the order
  they are made. When the slot is later than now the task waits in the timer index until it
  (no polling), and then goes on with its next limit. Rate limits come first, so a job
  waiting for a token holds no concurrency slot.
- A job cancelled while it waits for its token gives it back: the job holding the bucket's
  latest reservation is moved into the freed slot (its timer rewritten, O(log n) through the
  index) and the bucket's horizon moves back by one token; if the cancelled job held the latest
  slot, the horizon just moves back. That one move is the exception to first come, first
  served: moving every later job up one slot instead would rewrite O(n) timers per cancel.
  Once the token's time has come and the job moved on, it is spent. Expedite leaves a job
  waiting for a token as it is.
- A concurrency limit is a slot in the tenant's queue ``key`` (a holder row keyed by the task
  id); a full queue, or one with requests waiting, parks the task as a request ordered by
  priority, then due time. A parked job keeps the slots it holds, which all sort before the
  queue it waits on.
- No wait-for cycle: a job waits only on a queue later in key order than every queue it
  holds, so a chain of jobs waiting for each other's slots climbs strictly in key order and
  ends at a job that is ready or running. (The alternative, holding nothing while parked, was
  rejected: each park would release slots and each grant re-acquire them, cascading through
  one batch, and a job needing several busy queues could be overtaken forever: granted A, it
  finds B full, gives A back, and so on. With one order a granted slot is progress that is
  never undone, and granting stays one step per queue in priority order. The cost: a job
  parked on a later queue keeps its earlier slots meanwhile.)
- Whatever ends or abandons an attempt releases its slots in the same batch, and the freed slots
  are granted to the next eligible requests in that same batch (:meth:`Limiter.regrant`).
- A queue's max is stored with the queue; a later job carrying another max, or a floating
  refresh, changes it at once, in both directions (a lower max grants nothing until the holders
  drop below it).
- A floating queue is refreshed by handing a refresh task to a worker of the task group while
  the queue has work; a failed or expired refresh backs off from 1 s, doubling, to 60 s.
- Idle state keeps no row: a queue left with no holder, no request and no refresh pending is
  deleted by the operation that left it so, and set up again from the limit of the next job
  that acquires it (a floating queue then starts from its default max, refreshed at once); a
  rate reservation is deleted by the timer loop ``per_ms`` after its slot, when it can no
  longer constrain a reservation (:meth:`Limiter.forget_expired_reservations`; token-bucket
  rows of earlier versions are deleted once refilled, :meth:`Limiter.forget_full_buckets`).
  What the deleted rows still say should the wall clock step back is one row per shard, the
  rate floor (:mod:`silo.shard.reservations`).

Invariant: a queue never has more holders than its max at the time of each grant; a slot is
granted to a task at most once (its holder row is keyed by the task id); a job waiting for a
rate token has its reservation row at its timer's time, and a bucket's reservations never put
more than ``limit`` in a window of ``per_ms``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import msgpack

from silo import keys
from silo.errors import FailedPrecondition, InvalidArgument, NotFound, quote
from silo.keys import Prefix
from silo.model import (
    PARKED,
    READY,
    TIMER,
    ConcurrencyLimit,
    FloatingConcurrencyLimit,
    JobInfo,
    JobState,
    JobStatus,
    Lease,
    Limit,
    QueueState,
    RateLimit,
    Task,
    concurrency_key,
)
from silo.shard.reservations import RateWindows, Reservation
from silo.shard.tables import (
    holder_key,
    queue_key,
    ready_key,
    request_key,
    timer_key,
)
from silo.shard.txn import Txn

if TYPE_CHECKING:
    from silo.runtime.faults import Faults
    from silo.shard.mirror import ShardMirror
    from silo.shard.rows import JobRows

PoisonHandler = Callable[[Txn, Any, bytes, "bytes | None", Exception], Awaitable[None]]


async def _unhandled_poison(
    txn: Txn, sp: Any, k: bytes, raw: bytes | None, exc: Exception
) -> None:
    raise exc


REFRESH_BACKOFF_MIN_MS = 1_000
REFRESH_BACKOFF_MAX_MS = 60_000
MAX_GRANTS_PER_QUEUE_PER_OP = 10_000


class Limiter:
    """Limit acquisition, release and grant for one shard, on a transaction.

    Reads job rows through ``rows``, the committed queue state (holders, requests, buckets)
    through ``mirror``; asks ``faults`` for planted simulator mutations.
    """

    def __init__(self, rows: JobRows, mirror: ShardMirror, faults: Faults, shard_id: int) -> None:
        self._rows = rows
        self._mirror = mirror
        self._faults = faults
        self._windows = RateWindows(mirror)
        self.shard_id = shard_id
        self.on_poison_request: PoisonHandler = _unhandled_poison
        """Called with a parked request whose grant raised unexpectedly (after its savepoint):
        the shard fails its job or quarantines it (DESIGN §4 "No poison")."""

    # -- queue state ------------------------------------------------------------------------

    def queue_state(self, txn: Txn, tenant: str, queue: str) -> QueueState | None:
        """The queue's record as this transaction sees it (do not mutate; copy first)."""
        k = queue_key(tenant, queue)
        if k in txn.ops:
            v = txn.ops[k]
            return None if v is None else QueueState.decode(k, v)
        return self._mirror.queues.get((tenant, queue))

    def _put_queue_state(self, txn: Txn, tenant: str, queue: str, qs: QueueState) -> None:
        txn.put(queue_key(tenant, queue), qs.encode())

    def _holders(self, txn: Txn, tenant: str, queue: str) -> int:
        q = (tenant, queue)
        return self._mirror.holders.get(q, 0) + txn.holder_deltas.get(q, 0)

    def _queue_max(self, txn: Txn, tenant: str, queue: str) -> int:
        qs = self.queue_state(txn, tenant, queue)
        return 0 if qs is None else qs.max_concurrency

    def _holder_exists(self, txn: Txn, hk: bytes) -> bool:
        if hk in txn.ops:
            return txn.ops[hk] is not None
        return hk in self._mirror.holder_keys

    async def first_request(
        self, txn: Txn, tenant: str, queue: str
    ) -> tuple[bytes, Task] | None:
        """The request a free slot of the queue goes to next, as this transaction sees it:
        its smallest parked request not granted (or cancelled) yet. When the queue's requests
        in memory are all taken and more are on disk, the next page is read first."""
        start, end = keys.prefix_range(Prefix.CONCURRENCY_REQUEST, tenant, queue)
        q = (tenant, queue)
        pages = self._mirror.request_pages
        best: bytes | None = None
        # Requests are granted smallest first, so this operation's earlier grants on the queue
        # are all below its floor: start past them instead of skipping them one by one.
        floor = txn.request_floor.get(q)
        lower, inclusive = (start, True) if floor is None else (floor, False)
        while True:
            for k in self._mirror.requests.irange(lower, end, inclusive=(inclusive, False)):
                if k in txn.ops and txn.ops[k] is None:
                    continue
                best = k
                break
            if best is not None or q not in pages.frontiers:
                break
            self._faults.sometimes("shard.limits.requests_paged_mid_operation")
            # Every request held up to the frontier was looked at and is taken: the page read
            # now holds only later ones.
            lower, inclusive = pages.frontiers[q], False
            await pages.page_in(txn.store, q)
        for k in txn.new_requests:
            if start <= k and (end is None or k < end) and txn.ops.get(k) is not None:
                if best is None or k < best:
                    best = k
        if best is None:
            return None
        raw = txn.ops.get(best)
        task = Task.decode(best, raw) if raw is not None else self._mirror.requests[best]
        return best, task

    async def _has_waiting(self, txn: Txn, tenant: str, queue: str) -> bool:
        return await self.first_request(txn, tenant, queue) is not None

    async def _queue_has_work(self, txn: Txn, tenant: str, queue: str) -> bool:
        return (self._holders(txn, tenant, queue) > 0
                or await self._has_waiting(txn, tenant, queue))

    def note_limits(self, txn: Txn, info: JobInfo) -> None:
        """A new job's limits applied to the queues that have state now: a plain limit's max
        replaces the stored one, a floating limit makes the queue floating. A queue without a
        row is idle; the job's own limit sets it up when the job acquires it."""
        for limit in info.limits:
            if isinstance(limit, RateLimit):
                continue
            qs = self.queue_state(txn, info.tenant, limit.key)
            if qs is None:
                continue
            if isinstance(limit, ConcurrencyLimit):
                if qs.max_concurrency != limit.max_concurrency and not qs.floating:
                    new = qs.copy()
                    new.max_concurrency = limit.max_concurrency
                    self._put_queue_state(txn, info.tenant, limit.key, new)
                    txn.regrant.append((info.tenant, limit.key))
            elif not qs.floating:
                self._put_queue_state(
                    txn, info.tenant, limit.key,
                    _floating_state(limit, info.task_group, qs.max_concurrency),
                )

    def _ensure_queue(self, txn: Txn, info: JobInfo, limit: Limit) -> None:
        """Give an idle queue (no row) its state from the acquiring job's limit."""
        assert not isinstance(limit, RateLimit)
        if self.queue_state(txn, info.tenant, limit.key) is not None:
            return
        if isinstance(limit, ConcurrencyLimit):
            qs = QueueState(limit.max_concurrency)
        else:
            qs = _floating_state(limit, info.task_group, limit.default_max_concurrency)
        self._put_queue_state(txn, info.tenant, limit.key, qs)

    async def _forget_idle_queues(
        self, txn: Txn, queues: Iterable[tuple[str, str]]
    ) -> None:
        """Delete the row of every queue in ``queues`` that has no holder, no waiting request
        and no refresh pending: an idle queue is indistinguishable from one never used."""
        for tenant, queue in queues:
            qs = self.queue_state(txn, tenant, queue)
            if (
                qs is not None
                and qs.refresh_task_id is None
                and not await self._queue_has_work(txn, tenant, queue)
            ):
                txn.delete(queue_key(tenant, queue))

    async def queue_attempt(
        self, txn: Txn, info: JobInfo, state: JobState, due_ms: int
    ) -> None:
        """Allocate the next attempt number and queue its task: through its limits when due
        (see :meth:`place`), else in the timer index."""
        attempt = state.attempt + 1
        task = Task(
            self._rows.new_id("t"), info.tenant, info.job_id, attempt, info.task_group,
            info.priority, due_ms,
        )
        state.attempt = attempt
        state.held = 0
        if due_ms <= txn.now:
            await self.place(txn, info, state, task, 0)
        else:
            txn.put(timer_key(task), task.encode())
            state.task = (attempt, due_ms, TIMER, task.task_id)
            state.next_attempt_at_ms = due_ms

    # -- acquisition ------------------------------------------------------------------------

    async def place(
        self, txn: Txn, info: JobInfo, state: JobState, task: Task, start: int
    ) -> None:
        """Acquire ``info.limits[start:]`` for ``task`` and queue it: ready when every limit
        is held, parked on the first full queue, or in the timer index until a reserved rate
        token's time. Updates ``state.task``, ``state.held`` and ``state.next_attempt_at_ms``."""
        limits = info.limits
        i = start
        while i < len(limits):
            limit = limits[i]
            if isinstance(limit, RateLimit):
                due = self._windows.reserve(txn, info.tenant, limit, task.job_id, task.attempt)
                if due > txn.now:
                    waiting = replace(task, due_ms=due)
                    txn.put(timer_key(waiting), waiting.encode())
                    state.task = (task.attempt, due, TIMER, task.task_id)
                    state.held = i + 1
                    state.next_attempt_at_ms = due
                    return
                self._token_taken(txn, info.tenant, limit, task, due)
            else:
                queue = limit.key
                self._ensure_queue(txn, info, limit)
                self.ensure_refresh(txn, info.tenant, queue)
                free = self._holders(txn, info.tenant, queue) < self._queue_max(
                    txn, info.tenant, queue
                )
                if free and not await self._has_waiting(txn, info.tenant, queue):
                    self._grant(txn, info.tenant, queue, task)
                else:
                    rk = request_key(info.tenant, queue, task)
                    txn.put(rk, task.encode())
                    txn.new_requests[rk] = task
                    state.task = (task.attempt, task.due_ms, PARKED, task.task_id)
                    state.held = i
                    state.next_attempt_at_ms = task.due_ms
                    txn.regrant.append((info.tenant, queue))
                    return
            i += 1
        txn.put(ready_key(task), task.encode())
        state.task = (task.attempt, task.due_ms, READY, task.task_id)
        state.held = len(limits)
        state.next_attempt_at_ms = task.due_ms

    def _grant(self, txn: Txn, tenant: str, queue: str, task: Task) -> None:
        hk = holder_key(tenant, queue, task.task_id)
        txn.put(hk, msgpack.packb([txn.now, task.job_id, task.attempt]))
        q = (tenant, queue)
        txn.holder_deltas[q] = txn.holder_deltas.get(q, 0) + 1
        txn.emit(
            "slot_granted", shard=self.shard_id, tenant=tenant, queue=queue,
            task_id=task.task_id, job_id=task.job_id, attempt=task.attempt,
            holders=self._holders(txn, tenant, queue),
            max=self._queue_max(txn, tenant, queue), at_ms=txn.now,
        )

    def release(self, txn: Txn, info: JobInfo, held: int, task_id: str) -> None:
        """Release the concurrency slots among ``info.limits[:held]`` held by ``task_id``."""
        for limit in info.limits[:held]:
            queue = concurrency_key(limit)
            if queue is None:
                continue
            hk = holder_key(info.tenant, queue, task_id)
            if not self._holder_exists(txn, hk):
                continue
            if not self._faults.mutation("leak-holder"):
                txn.delete(hk)
                q = (info.tenant, queue)
                txn.holder_deltas[q] = txn.holder_deltas.get(q, 0) - 1
            txn.emit(
                "slot_released", shard=self.shard_id, tenant=info.tenant, queue=queue,
                task_id=task_id, job_id=info.job_id, at_ms=txn.now,
            )
            txn.regrant.append((info.tenant, queue))

    async def regrant(self, txn: Txn) -> None:
        """Grant freed slots to waiting requests, for every queue touched by this operation;
        then forget those of them left idle."""
        done: set[tuple[str, str]] = set()
        touched: dict[tuple[str, str], None] = {}  # in order: no set decides what is written
        while txn.regrant:
            q = txn.regrant.pop(0)
            if q in done:
                continue
            done.add(q)
            touched[q] = None
            granted = await self._grant_waiting(txn, *q)
            if granted:
                self._faults.sometimes("shard.limits.regrant")
                # Granted tasks may have parked on other queues; those get another look.
                done.discard(q)
        await self._forget_idle_queues(txn, touched)

    async def _grant_waiting(self, txn: Txn, tenant: str, queue: str) -> int:
        granted = 0
        over = 1 if self._faults.mutation("over-grant") else 0
        for _ in range(MAX_GRANTS_PER_QUEUE_PER_OP):
            if self._holders(txn, tenant, queue) >= self._queue_max(txn, tenant, queue) + over:
                break
            first = await self.first_request(txn, tenant, queue)
            if first is None:
                break
            rk, task = first
            sp = txn.savepoint()
            try:
                granted += await self._grant_one(txn, tenant, queue, rk, task)
            except Exception as exc:
                await self.on_poison_request(txn, sp, rk, task.encode(), exc)
                txn.delete(rk)  # never offered again, whatever became of its job
        return granted

    async def _grant_one(self, txn: Txn, tenant: str, queue: str, rk: bytes, task: Task) -> int:
        """Grant a slot of ``queue`` to the parked request ``rk``; returns 1 when granted, 0
        for a stray request (dropped)."""
        txn.delete(rk)
        if rk not in txn.new_requests:
            txn.request_floor[(tenant, queue)] = rk
        found = await self._rows.queued_job(txn, task, PARKED)
        if found is None:
            return 0  # a stray request: dropped
        info, state = found
        self._grant(txn, tenant, queue, task)
        new = state.copy()
        await self.place(txn, info, new, task, state.held + 1)
        self._rows.put_state(txn, info, state, new)
        return 1

    def _token_taken(
        self, txn: Txn, tenant: str, limit: RateLimit, task: Task, slot_ms: int
    ) -> None:
        txn.emit(
            "token_taken", shard=self.shard_id, tenant=tenant, name=limit.name, key=limit.key,
            limit=limit.limit, per_ms=limit.per_ms, slot_ms=slot_ms, job_id=task.job_id,
            attempt=task.attempt, at_ms=txn.now,
        )

    def reserved_token_due(self, txn: Txn, info: JobInfo, state: JobState, task: Task) -> None:
        """A due timer of a job waiting for a reserved rate token: the token is taken now (the
        caller then places the task on its next limits). Other timers: nothing."""
        if state.held > 0 and isinstance(info.limits[state.held - 1], RateLimit):
            limit = info.limits[state.held - 1]
            assert isinstance(limit, RateLimit)
            self._token_taken(txn, info.tenant, limit, task, task.due_ms)

    async def _give_back_token(
        self, txn: Txn, info: JobInfo, limit: RateLimit, freed: Reservation
    ) -> None:
        """The attempt holding ``freed`` no longer waits for it: the job holding the bucket's
        latest reservation moves into the freed slot, and the bucket's horizon moves back by
        one token (see :mod:`silo.shard.reservations`). When the latest reservation is not an
        attempt waiting for it (cannot happen while the tables agree), nothing is given back:
        the slot stays spent, which never exceeds the rate."""
        tenant = info.tenant
        if not self._windows.holds(txn, tenant, limit, freed):
            return
        latest = self._windows.latest(txn, tenant, limit)
        assert latest is not None
        latest_limit: RateLimit | None = limit
        if latest != freed:
            latest_limit = await self._move_into(txn, tenant, limit, latest, freed.slot_ms)
            if latest_limit is None:
                return
        self._windows.give_back(txn, tenant, limit, freed, latest, latest_limit)
        txn.emit(
            "token_returned", shard=self.shard_id, tenant=tenant, name=limit.name,
            key=limit.key, job_id=info.job_id, slot_ms=freed.slot_ms,
            moved_job_id=None if latest == freed else latest.job_id,
            moved_from_ms=None if latest == freed else latest.slot_ms, at_ms=txn.now,
        )

    async def _move_into(
        self, txn: Txn, tenant: str, limit: RateLimit, latest: Reservation, slot_ms: int
    ) -> RateLimit | None:
        """Move the timer of the attempt holding reservation ``latest`` to ``slot_ms``; returns
        the rate limit it waits on (None: it does not wait for that reservation)."""
        info = await self._rows.info(txn, tenant, latest.job_id)
        state = await self._rows.state(txn, tenant, latest.job_id)
        if info is None or state is None or state.status != JobStatus.SCHEDULED:
            return None
        if state.task is None or state.held == 0:
            return None
        attempt, due_ms, where, task_id = state.task
        theirs = info.limits[state.held - 1]
        if (
            where != TIMER
            or attempt != latest.attempt
            or due_ms != latest.slot_ms
            or not isinstance(theirs, RateLimit)
            or (theirs.name, theirs.key) != (limit.name, limit.key)
        ):
            return None
        probe = Task(task_id, tenant, latest.job_id, attempt, info.task_group, info.priority,
                     due_ms)
        tk = timer_key(probe)
        if tk in txn.ops:
            raw = txn.ops[tk]
            task = None if raw is None else Task.decode(tk, raw)
        else:
            task = await self._timer(txn, tk)
        if task is None:
            return None
        if self._faults.mutation("rate-token-returned-in-place"):
            # Planted bug: the slot is given back but the latest job keeps its later time,
            # so the next reservation lands on it (the count-only bucket of earlier versions).
            return theirs
        if slot_ms == due_ms:
            # The freed slot is the latest job's own time (several tokens share a slot): it
            # keeps its timer as indexed. Rewriting the row would re-index it on the wall
            # clock now, moving its monotonic deadline by every wall step since it was queued.
            return theirs
        txn.delete(tk)
        moved = replace(task, due_ms=slot_ms)
        txn.put(timer_key(moved), moved.encode())
        new = state.copy()
        new.task = (attempt, slot_ms, TIMER, task_id)
        new.next_attempt_at_ms = slot_ms
        self._rows.put_state(txn, info, state, new, cause="rate_token_given_back")
        return theirs

    def forget_expired_reservations(self, txn: Txn, max_rows: int) -> int:
        """Delete up to ``max_rows`` rate reservations that no longer matter; returns how
        many (:meth:`RateWindows.forget_expired`)."""
        return self._windows.forget_expired(txn, max_rows)

    def forget_full_buckets(self, txn: Txn, max_rows: int) -> int:
        """Delete up to ``max_rows`` token-bucket rows (written by earlier versions, no longer
        read) that have refilled by now; returns how many."""
        n = 0
        for full_at, bk in self._mirror.bucket_full_at:
            if full_at > txn.now or n >= max_rows:
                break
            if bk not in txn.ops:
                txn.delete(bk)
                n += 1
        return n

    # -- floating limits --------------------------------------------------------------------

    def ensure_refresh(self, txn: Txn, tenant: str, queue: str) -> None:
        """Schedule a refresh task for a floating queue that has none pending."""
        qs = self.queue_state(txn, tenant, queue)
        if qs is None or not qs.floating or qs.refresh_task_id is not None:
            return
        due = max(txn.now, qs.next_refresh_ms)
        task = Task(self._rows.new_id("r"), tenant, queue, 0, qs.task_group, 0, due)
        if due <= txn.now:
            txn.put(ready_key(task), task.encode())
        else:
            txn.put(timer_key(task), task.encode())
        new = qs.copy()
        new.refresh_task_id = task.task_id
        self._put_queue_state(txn, tenant, queue, new)

    async def promote_refresh(self, txn: Txn, task: Task) -> None:
        """A due refresh timer: hand it to workers if the queue still has work, else drop it."""
        txn.delete(timer_key(task))
        qs = self.queue_state(txn, task.tenant, task.job_id)
        if qs is None or qs.refresh_task_id != task.task_id:
            return
        if await self._queue_has_work(txn, task.tenant, task.job_id):
            txn.put(ready_key(task), task.encode())
        else:
            new = qs.copy()
            new.refresh_task_id = None
            self._put_queue_state(txn, task.tenant, task.job_id, new)
            txn.regrant.append((task.tenant, task.job_id))  # idle now: forgotten at commit

    async def end_refresh(
        self, txn: Txn, lease: Lease, new_max: int | None, *, reaped: bool = False
    ) -> None:
        """Apply a refresh result (``new_max``) or a failure (``None``)."""
        from silo.keys import key

        txn.delete(key(Prefix.LEASE, lease.task_id))
        txn.delete(key(Prefix.LEASE_EXPIRY, lease.expiry_ms, lease.task_id))
        queue = lease.job_id
        qs = self.queue_state(txn, lease.tenant, queue)
        txn.emit(
            "refresh_ended", shard=self.shard_id, tenant=lease.tenant, queue=queue,
            task_id=lease.task_id, new_max=new_max, reaped=reaped, at_ms=txn.now,
        )
        if qs is None:
            return
        new = qs.copy()
        new.refresh_task_id = None
        if new_max is None:
            new.backoff_ms = min(
                max(REFRESH_BACKOFF_MIN_MS, qs.backoff_ms * 2), REFRESH_BACKOFF_MAX_MS
            )
            new.next_refresh_ms = txn.now + new.backoff_ms
        else:
            new.backoff_ms = 0
            new.max_concurrency = new_max
            new.next_refresh_ms = txn.now + qs.refresh_interval_ms
        self._put_queue_state(txn, lease.tenant, queue, new)
        # Grants what a larger max frees; forgets the queue if it has no work left.
        txn.regrant.append((lease.tenant, queue))
        if await self._queue_has_work(txn, lease.tenant, queue):
            self.ensure_refresh(txn, lease.tenant, queue)

    async def _timer(self, txn: Txn, k: bytes) -> Task | None:
        """Timer ``k`` as stored before this transaction (see :func:`_stored_task`)."""
        return await _stored_task(txn, k, self._mirror.timer_lookup(k))

    # -- unqueue ----------------------------------------------------------------------------

    async def unqueue_task(self, txn: Txn, info: JobInfo, state: JobState) -> Task | None:
        """Remove the job's queued task (ready, timer or parked request), release the slots it
        holds and give back the rate token it waits for; returns the task."""
        if state.task is None:
            return None
        attempt, due_ms, where, task_id = state.task
        probe = Task(task_id, info.tenant, info.job_id, attempt, info.task_group, info.priority,
                     due_ms)
        if where == READY:
            k = ready_key(probe)
            task = await _stored_task(txn, k, self._mirror.ready_lookup(k))
        elif where == TIMER:
            k = timer_key(probe)
            task = await self._timer(txn, k)
        else:
            queue = concurrency_key(info.limits[state.held])
            assert queue is not None
            k = request_key(info.tenant, queue, probe)
            task = await _stored_task(txn, k, self._mirror.request_lookup(k))
            txn.regrant.append((info.tenant, queue))  # forgotten at commit if left idle
        if where == TIMER and state.held > 0:
            reserved = info.limits[state.held - 1]
            if isinstance(reserved, RateLimit):
                await self._give_back_token(
                    txn, info, reserved, Reservation(due_ms, info.job_id, attempt)
                )
        if k in txn.ops:
            raw = txn.ops[k]
            task = Task.decode(k, raw) if raw is not None else None
        txn.delete(k)
        self.release(txn, info, state.held, task_id)
        state.task = None
        state.held = 0
        state.next_attempt_at_ms = None
        return task or probe

    # -- visibility -------------------------------------------------------------------------

    def waiting_for(self, info: JobInfo, state: JobState) -> str:
        """What a scheduled job is waiting for, in words."""
        if state.status != JobStatus.SCHEDULED or state.task is None:
            return ""
        _, due_ms, where, _ = state.task
        if where == READY:
            return "a worker"
        if where == PARKED:
            limit = info.limits[state.held]
            queue = concurrency_key(limit)
            assert queue is not None
            q = (info.tenant, queue)
            qs = self._mirror.queues.get(q)
            return (
                f"a slot in concurrency queue {quote(queue)} "
                f"({self._mirror.holders.get(q, 0)}/{qs.max_concurrency if qs else 0} held, "
                f"{self._mirror.requests_per_queue.get(q, 0)} waiting)"
            )
        if state.held > 0 and isinstance(info.limits[state.held - 1], RateLimit):
            limit = info.limits[state.held - 1]
            assert isinstance(limit, RateLimit)
            return f"rate limit {limit.name}/{limit.key} (token reserved for {due_ms})"
        return f"its start time ({due_ms})"

    def queue_info(self, tenant: str, queue: str, *, max_listed: int = 100) -> dict[str, Any]:
        """A queue's max, holders and waiting requests (at most ``max_listed`` of each); an
        idle queue (no row) answers max 0, no holders, nobody waiting."""
        q = (tenant, queue)
        qs = self._mirror.queues.get(q)
        if qs is None:
            # An idle queue keeps no row: no holders, nobody waiting, no max until a job sets it.
            qs = QueueState(0)
        holders = []
        start, end = keys.prefix_range(Prefix.CONCURRENCY_HOLDER, tenant, queue)
        for hk, hq in self._mirror.holder_keys.items():
            if hq == q and start <= hk and (end is None or hk < end):
                holders.append(str(keys.parse(hk)[1][2]))
        waiting = []
        rstart, rend = keys.prefix_range(Prefix.CONCURRENCY_REQUEST, tenant, queue)
        for rk in self._mirror.requests.irange(rstart, rend, inclusive=(True, False)):
            t = self._mirror.requests[rk]
            waiting.append({"job_id": t.job_id, "attempt": t.attempt, "priority": t.priority,
                            "due_ms": t.due_ms})
            if len(waiting) >= max_listed:
                break
        return {
            "tenant": tenant,
            "queue": queue,
            "max_concurrency": qs.max_concurrency,
            "floating": qs.floating,
            "holders": len(holders),
            "holder_task_ids": sorted(holders)[:max_listed],
            "waiting": self._mirror.requests_per_queue.get(q, 0),
            "first_waiting": waiting,
            "next_refresh_ms": qs.next_refresh_ms if qs.floating else None,
            "refresh_backoff_ms": qs.backoff_ms if qs.floating else None,
        }


async def _stored_task(txn: Txn, k: bytes, found: Task | None | bool) -> Task | None:
    """The queued task ``k`` as stored before this transaction: ``found`` by a mirror lookup,
    or (``False``: ``k`` is beyond its table's frontier, paged out) read from the store."""
    if found is not False:
        return found  # type: ignore[return-value]
    raw = await txn.get(k)
    return None if raw is None else Task.decode(k, raw)


def acquisition_order(limits: Iterable[Limit]) -> tuple[Limit, ...]:
    """The order a job acquires its limits in: rate limits first (as given), then concurrency
    and floating limits by queue key (see the module docstring for why)."""
    listed = list(limits)
    rates = [x for x in listed if isinstance(x, RateLimit)]
    queues = sorted((x for x in listed if not isinstance(x, RateLimit)), key=lambda x: x.key)
    return (*rates, *queues)


def _floating_state(
    limit: FloatingConcurrencyLimit, task_group: str, max_concurrency: int
) -> QueueState:
    return QueueState(
        max_concurrency,
        floating=True,
        default_max=limit.default_max_concurrency,
        refresh_interval_ms=limit.refresh_interval_ms,
        metadata=dict(limit.metadata),
        task_group=task_group,
    )


def check_refresh_value(new_max: int) -> None:
    if not 0 <= new_max <= 1_000_000:
        raise InvalidArgument(f"refreshed max {new_max} is outside 0..1000000")


def require_refresh_lease(lease: Lease | None, worker_id: str, task_id: str) -> Lease:
    if lease is None or not lease.is_refresh:
        raise NotFound(f"lease not found for refresh task {quote(task_id)}")
    if lease.worker_id != worker_id:
        raise FailedPrecondition(
            f"lease owner mismatch: refresh task {quote(task_id)} is leased to another "
            f"worker"
        )
    return lease
