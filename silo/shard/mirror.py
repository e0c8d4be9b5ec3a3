"""In-memory mirrors of the shard's queue, timer, lease and counter tables.

A mirror is a cache of what is on disk: it is loaded by scanning the tables when the shard opens
and after a failed write, and is otherwise changed only by applying the exact operations of each
submitted batch. Because the mirrors follow the batch's key writes rather than the shard's
intentions, they cannot drift from the stored tables.
"""

from __future__ import annotations

from collections.abc import Callable

from sortedcontainers import SortedDict, SortedList

from silo import keys
from silo.keys import Prefix
from silo.model import (
    CorruptRecord,
    Lease,
    QueueState,
    RateBucket,
    RateReservation,
    Task,
    decode_int,
)
from silo.runtime.clock import Clock
from silo.runtime.disk import KVStore
from silo.shard.deadlines import DeadlineIndex
from silo.shard.tables import RATE_FLOOR_KEY

_READY = bytes((Prefix.READY,))
_TIMER = bytes((Prefix.TIMER,))
_LEASE = bytes((Prefix.LEASE,))
_EXPIRY = bytes((Prefix.LEASE_EXPIRY,))
_META = bytes((Prefix.META,))
_REQUEST = bytes((Prefix.CONCURRENCY_REQUEST,))
_HOLDER = bytes((Prefix.CONCURRENCY_HOLDER,))
_QUEUE = bytes((Prefix.FLOATING_LIMIT,))
_BUCKET = bytes((Prefix.RATE_BUCKET,))
_RESERVATION = bytes((Prefix.RATE_RESERVATION,))
COUNTER_PREFIX = keys.key(Prefix.META, "counter")


def _first_int(k: bytes) -> int:
    """The wall-clock deadline at the head of a timer or lease-expiry key."""
    return int(keys.parse(k)[1][0])


class ShardMirror:
    """Ready queue, timers, leases, lease expiries and counters, kept in memory.

    Timers and lease expiries are also indexed by deadline on the monotonic clock
    (:mod:`silo.shard.deadlines`): a batch's timer and expiry rows get the clock readings of the
    operation that wrote them (``clock_ref`` in :meth:`apply`), loaded rows are re-based on the
    readings taken when the load ends. Without a clock, monotonic deadlines equal the stored
    wall-clock ones.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock
        self.timer_deadlines = DeadlineIndex(_first_int)
        """Timer key -> monotonic due time."""
        self.expiry_deadlines = DeadlineIndex(_first_int)
        """Lease-expiry key -> monotonic expiry."""
        self._loading = False
        self.ready: SortedDict = SortedDict()  # ready key -> Task
        self.ready_per_group: dict[str, int] = {}
        self.timers: SortedDict = SortedDict()  # timer key -> Task
        self.leases: dict[str, Lease] = {}
        self.expiries: SortedDict = SortedDict()  # expiry key -> task id
        self.counters: dict[bytes, int] = {}
        self.requests: SortedDict = SortedDict()  # request key -> Task
        self.requests_per_queue: dict[tuple[str, str], int] = {}
        self.holder_keys: dict[bytes, tuple[str, str]] = {}  # holder key -> (tenant, queue)
        self.holders: dict[tuple[str, str], int] = {}
        self.queues: dict[tuple[str, str], QueueState] = {}
        self.buckets: dict[bytes, bytes] = {}  # rate bucket key -> encoded RateBucket
        self.bucket_full_at: SortedList = SortedList()  # (full_at_ms, bucket key)
        self._bucket_full: dict[bytes, int] = {}  # bucket key -> its full_at_ms in the list
        # Rate-limit reservations: key -> slot_ms (a bucket is a contiguous key range, in slot
        # order), and when each stops mattering (slot + per_ms), to forget it then.
        self.reservations: SortedDict = SortedDict()
        self.reservation_expiry: SortedList = SortedList()  # (expires_ms, reservation key)
        self._reservation_expires: dict[bytes, int] = {}
        self.rate_floor_ms = 0
        """No reservation goes before this (the stored ``RATE_FLOOR_KEY``; 0: none stored)."""
        self.on_timer_added: Callable[[], None] = lambda: None
        self.on_expiry_added: Callable[[], None] = lambda: None
        self.on_ready_added: Callable[[str], None] = lambda task_group: None
        self.corrupt: list[tuple[bytes, bytes]] = []
        """Rows the last :meth:`load` could not decode (left out of the mirrors; the shard
        quarantines them)."""
        self.loaded_at: tuple[int, int] | None = None
        """``(wall ms, monotonic ms)`` the last :meth:`load` re-based new deadlines on."""

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def clock_readings(self) -> tuple[int, int]:
        """``(wall ms, monotonic ms)`` read now (both the wall clock without a clock)."""
        if self.clock is None:
            return 0, 0
        return self.clock.now_ms(), self.clock.monotonic_ms()

    async def load(self, kv: KVStore, durable_seq: int | None = None) -> None:
        """Rebuild every mirror from the stored tables. A timer or lease expiry that was already
        indexed keeps its monotonic deadline; the others are re-based on the clock now.

        ``durable_seq`` (after a failed write): the last batch known to be durable; every
        later one failed, and the deadlines they replaced are restored first (see
        :mod:`silo.shard.deadlines`), so a row they deleted keeps the deadline it had."""
        callbacks = (self.on_timer_added, self.on_expiry_added, self.on_ready_added)
        clock, timer_deadlines, expiry_deadlines = (
            self.clock, self.timer_deadlines, self.expiry_deadlines
        )
        if durable_seq is not None:
            timer_deadlines.roll_back(durable_seq)
            expiry_deadlines.roll_back(durable_seq)
        self.clear()
        self.on_timer_added, self.on_expiry_added, self.on_ready_added = callbacks
        self.clock = clock
        self._loading = True
        try:
            await self._load_tables(kv)
        finally:
            self._loading = False
            wall, mono = self.clock_readings()
            self.loaded_at = (wall, mono)
            timer_deadlines.rebase(self.timers.keys(), wall, mono)
            expiry_deadlines.rebase(self.expiries.keys(), wall, mono)
            self.timer_deadlines, self.expiry_deadlines = timer_deadlines, expiry_deadlines
        if self.timers:
            self.on_timer_added()
        if self.expiries:
            self.on_expiry_added()

    async def _load_tables(self, kv: KVStore) -> None:
        for prefix in (
            _READY, _TIMER, _LEASE, _EXPIRY, _REQUEST, _HOLDER, _QUEUE, _BUCKET, _RESERVATION,
        ):
            end = keys.successor(prefix)
            start = prefix
            while True:
                rows = await kv.scan(start, end, limit=10_000)
                self._load_rows(rows)
                if len(rows) < 10_000:
                    break
                start = rows[-1][0] + b"\x00"
        self._load_rows(await kv.scan(COUNTER_PREFIX, keys.successor(COUNTER_PREFIX)))
        self._load_rows(await kv.scan(RATE_FLOOR_KEY, keys.successor(RATE_FLOOR_KEY)))

    def _load_rows(self, rows: list[tuple[bytes, bytes]]) -> None:
        """Apply loaded rows one by one: a row that cannot be decoded is set aside in
        :attr:`corrupt` (a damaged record must not keep the shard from opening)."""
        for row in rows:
            try:
                self.apply([row])
            except (CorruptRecord, ValueError):  # ValueError: a malformed key
                self.corrupt.append(row)

    def apply(
        self,
        ops: list[tuple[bytes, bytes | None]] | list[tuple[bytes, bytes]],
        clock_ref: tuple[int, int] | None = None,
        batch: int | None = None,
    ) -> None:
        """Apply the puts and deletes of one batch (or rows of a scan) to the mirrors.

        ``clock_ref`` is ``(wall ms, monotonic ms)`` as read by the operation that built the
        batch (default: read now); its timer and expiry rows are indexed on it. ``batch`` is
        the batch's sequence number in the store: the deadlines it replaces are kept until
        :meth:`forget_durable` says it is durable (a reload after a failed write restores them).
        """
        for k, v in ops:
            p = k[:1]
            if p == _READY:
                self._apply_ready(k, v)
            elif p == _TIMER:
                if v is None:
                    self.timers.pop(k, None)
                    self.timer_deadlines.discard(k, batch=batch)
                else:
                    self.timers[k] = Task.decode(k, v)
                    if not self._loading:
                        clock_ref = clock_ref or self.clock_readings()
                        if self._index(self.timer_deadlines, k, clock_ref, batch):
                            self.on_timer_added()
            elif p == _LEASE:
                _, (task_id,) = keys.parse(k)
                if v is None:
                    self.leases.pop(str(task_id), None)
                else:
                    self.leases[str(task_id)] = Lease.decode(k, v)
            elif p == _EXPIRY:
                if v is None:
                    self.expiries.pop(k, None)
                    self.expiry_deadlines.discard(k, batch=batch)
                else:
                    _, (_, task_id) = keys.parse(k)
                    self.expiries[k] = task_id
                    if not self._loading:
                        clock_ref = clock_ref or self.clock_readings()
                        if self._index(self.expiry_deadlines, k, clock_ref, batch):
                            self.on_expiry_added()
            elif p == _REQUEST:
                self._apply_request(k, v)
            elif p == _HOLDER:
                self._apply_holder(k, v)
            elif p == _QUEUE:
                _, (tenant, queue) = keys.parse(k)
                if v is None:
                    self.queues.pop((str(tenant), str(queue)), None)
                else:
                    self.queues[(str(tenant), str(queue))] = QueueState.decode(k, v)
            elif p == _BUCKET:
                self._apply_bucket(k, v)
            elif p == _RESERVATION:
                self._apply_reservation(k, v)
            elif p == _META and k.startswith(COUNTER_PREFIX):
                if v is None:
                    self.counters.pop(k, None)
                else:
                    self.counters[k] = decode_int(k, v)
            elif k == RATE_FLOOR_KEY:
                self.rate_floor_ms = 0 if v is None else decode_int(k, v)

    @staticmethod
    def _index(
        index: DeadlineIndex, k: bytes, clock_ref: tuple[int, int], batch: int | None
    ) -> bool:
        """Index ``k`` on ``clock_ref``; True when it is now the earliest deadline."""
        index.put(k, *clock_ref, batch=batch)
        return index.first_ms() == index.get(k)

    def forget_durable(self, durable_seq: int) -> None:
        """Batches up to ``durable_seq`` are durable: drop the deadlines they replaced."""
        self.timer_deadlines.forget_durable(durable_seq)
        self.expiry_deadlines.forget_durable(durable_seq)

    def _apply_bucket(self, k: bytes, v: bytes | None) -> None:
        old = self._bucket_full.pop(k, None)
        if old is not None:
            self.bucket_full_at.remove((old, k))
        if v is None:
            self.buckets.pop(k, None)
            return
        self.buckets[k] = v
        full_at = RateBucket.decode(k, v).full_at_ms
        if full_at is not None:
            self._bucket_full[k] = full_at
            self.bucket_full_at.add((full_at, k))

    def _apply_reservation(self, k: bytes, v: bytes | None) -> None:
        old = self._reservation_expires.pop(k, None)
        if old is not None:
            self.reservation_expiry.remove((old, k))
        if v is None:
            self.reservations.pop(k, None)
            return
        slot_ms = reservation_slot_ms(k)
        self.reservations[k] = slot_ms
        expires = slot_ms + RateReservation.decode(k, v).per_ms
        self._reservation_expires[k] = expires
        self.reservation_expiry.add((expires, k))

    def _apply_request(self, k: bytes, v: bytes | None) -> None:
        _, parts = keys.parse(k)
        q = (str(parts[0]), str(parts[1]))
        if v is None:
            if self.requests.pop(k, None) is not None:
                n = self.requests_per_queue[q] - 1
                if n:
                    self.requests_per_queue[q] = n
                else:
                    del self.requests_per_queue[q]
        else:
            if k not in self.requests:
                self.requests_per_queue[q] = self.requests_per_queue.get(q, 0) + 1
            self.requests[k] = Task.decode(k, v)

    def _apply_holder(self, k: bytes, v: bytes | None) -> None:
        if v is None:
            q = self.holder_keys.pop(k, None)
            if q is not None:
                n = self.holders[q] - 1
                if n:
                    self.holders[q] = n
                else:
                    del self.holders[q]
        elif k not in self.holder_keys:
            _, parts = keys.parse(k)
            q = (str(parts[0]), str(parts[1]))
            self.holder_keys[k] = q
            self.holders[q] = self.holders.get(q, 0) + 1

    def _apply_ready(self, k: bytes, v: bytes | None) -> None:
        if v is None:
            task = self.ready.pop(k, None)
            if task is not None:
                n = self.ready_per_group[task.task_group] - 1
                if n:
                    self.ready_per_group[task.task_group] = n
                else:
                    del self.ready_per_group[task.task_group]
        else:
            task = Task.decode(k, v)
            if k not in self.ready:
                self.ready_per_group[task.task_group] = (
                    self.ready_per_group.get(task.task_group, 0) + 1
                )
            self.ready[k] = task
            self.on_ready_added(task.task_group)

    def next_timer_deadline_ms(self) -> int | None:
        """Monotonic due time of the earliest timer (None: no timer)."""
        return self.timer_deadlines.first_ms()

    def next_expiry_deadline_ms(self) -> int | None:
        """Monotonic expiry of the earliest lease (None: no lease)."""
        return self.expiry_deadlines.first_ms()

    def due_timers(self, mono_now_ms: int, limit: int) -> list[Task]:
        """Timers due by the monotonic clock, earliest first, at most ``limit``."""
        return [self.timers[k] for k in self.timer_deadlines.due(mono_now_ms, limit)]

    def expired(self, mono_now_ms: int, limit: int) -> list[tuple[bytes, str]]:
        """``(expiry key, task id)`` of leases expired by the monotonic clock, earliest
        first, at most ``limit``."""
        return [(k, str(self.expiries[k])) for k in self.expiry_deadlines.due(mono_now_ms, limit)]

    def next_timer_due_ms(self) -> int | None:
        if not self.timers:
            return None
        return self.timers.peekitem(0)[1].due_ms

    def next_bucket_full_ms(self) -> int | None:
        """When the earliest rate bucket will have refilled (its row can then go)."""
        if not self.bucket_full_at:
            return None
        return self.bucket_full_at[0][0]

    def next_reservation_expiry_ms(self) -> int | None:
        """When the earliest rate reservation stops mattering (its row can then go). None
        while its slot is not before every timer: its job may still wait for it, and the
        promotion of that timer comes first (see :meth:`RateWindows.forget_expired`)."""
        if not self.reservation_expiry:
            return None
        expires_ms, k = self.reservation_expiry[0]
        first_timer = self.next_timer_due_ms()
        if first_timer is not None and self.reservations[k] >= first_timer:
            return None
        return int(expires_ms)

    def next_expiry_ms(self) -> int | None:
        if not self.expiries:
            return None
        _, (expiry, _) = keys.parse(self.expiries.peekitem(0)[0])
        return int(expiry)


def reservation_slot_ms(k: bytes) -> int:
    """The slot time of a reservation key."""
    _, parts = keys.parse(k)
    return int(parts[3])
