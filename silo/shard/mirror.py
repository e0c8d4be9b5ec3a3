"""In-memory mirrors of the shard's queue, timer, lease and counter tables.

A mirror is a cache of what is on disk: it is loaded by scanning the tables when the shard opens
and after a failed write, and is otherwise changed only by applying the exact operations of each
submitted batch. Because the mirrors follow the batch's key writes rather than the shard's
intentions, they cannot drift from the stored tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
from silo.shard.pages import GroupedPages, GroupPaging, decode_page, read_page
from silo.shard.store import ShardStore
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


_TIMERS_END = keys.successor(_TIMER)


@dataclass(frozen=True)
class TimerPaging:
    """How many timer rows the mirror holds (see :class:`ShardMirror`, "Timer pages").

    ``page_rows``: rows one page-in reads; fewer than this in memory (with more on disk) reads
    the next page. ``memory_rows``: past this many, the latest timers are paged out down to
    ``memory_rows - page_rows``. ``lookahead_ms``: every timer due (wall time) within this of
    now is in memory whenever an operation starts.
    """

    page_rows: int
    memory_rows: int
    lookahead_ms: int

    def __post_init__(self) -> None:
        if self.page_rows < 1 or self.memory_rows < 2 * self.page_rows or self.lookahead_ms < 0:
            raise ValueError(f"invalid timer paging {self}")


def _range(prefix: Prefix, *elements: str) -> tuple[bytes, bytes]:
    start, end = keys.prefix_range(prefix, *elements)
    assert end is not None, "a group's key range always ends (its prefix is not all 0xff)"
    return start, end


def _ready_group(k: bytes, task: Task | None) -> str:
    """The task group of a ready row."""
    return task.task_group if task is not None else str(keys.parse(k)[1][0])


def _ready_range(group: str) -> tuple[bytes, bytes]:
    return _range(Prefix.READY, group)


def _request_queue(k: bytes, task: Task | None) -> tuple[str, str]:
    """``(tenant, queue)`` of a parked request (its key names the queue; the task does not)."""
    _, parts = keys.parse(k)
    return str(parts[0]), str(parts[1])


def _request_range(q: tuple[str, str]) -> tuple[bytes, bytes]:
    return _range(Prefix.CONCURRENCY_REQUEST, *q)


PagedTimers = Callable[[bytes | None, bytes | None, int, int], None]
"""``(frontier before, frontier after, wall ms, monotonic ms)`` of a page-in or page-out."""


class ShardMirror:
    """Ready queue, timers, leases, lease expiries and counters, kept in memory.

    Timers and lease expiries are also indexed by deadline on the monotonic clock
    (:mod:`silo.shard.deadlines`): a batch's timer and expiry rows get the clock readings of the
    operation that wrote them (``clock_ref`` in :meth:`apply`), loaded rows are re-based on the
    readings taken when the load ends. Without a clock, monotonic deadlines equal the stored
    wall-clock ones.

    Timer pages (with ``paging``): the timer mirror holds only the timer rows up to
    :attr:`timer_frontier` (timer keys sort by wall due time), i.e. exactly the stored rows
    (pending batches included) with key <= frontier; the others are on disk only. A put beyond
    the frontier is not mirrored, a delete beyond it changes nothing in memory. Whenever an
    operation starts (:meth:`page_timers`, shard lock held) the mirror pages in until every
    timer due within ``lookahead_ms`` of the wall clock and at least ``page_rows`` rows are in
    memory (or none is left on disk), and pages the latest rows out when it holds more than
    ``memory_rows``; so a timer on disk only is never due by the wall clock at the start of an
    operation. A paged-in row is re-based like a row loaded at open: from its stored wall time
    on the clock readings of the page-in (DESIGN §4 "Deadlines"), except a row written by a
    batch not yet durable, which keeps the readings of its operation (as an unpaged mirror
    would have indexed it). Each page-in and page-out calls :attr:`on_timers_paged` with the
    frontier before and after and those readings. A reload after a failed write keeps the
    frontier (it reloads exactly the rows up to it, all of them indexed before).

    Group pages (:mod:`silo.shard.pages`): ready tasks per task group (with ``ready_paging``)
    and parked concurrency requests per queue (with ``request_paging``) are held the same way,
    each group in key order (priority, then due time): its first rows in memory, the others
    counted (:attr:`ready_per_group`, :attr:`requests_per_queue` count every stored row). So a
    lease finds a group's first tasks in memory, and a grant a queue's first requests (reading
    on in the middle of an operation when it grants more than a page). A reload after a failed
    write pages every group afresh (these rows carry no deadline to keep).
    """

    def __init__(self, clock: Clock | None = None, paging: TimerPaging | None = None,
                 ready_paging: GroupPaging | None = None,
                 request_paging: GroupPaging | None = None) -> None:
        self.clock = clock
        self.paging = paging
        self.corrupt: list[tuple[bytes, bytes]] = []
        """Rows the last :meth:`load` (or a page-in since) could not decode (left out of the
        mirrors; the shard quarantines them)."""
        self.ready_pages: GroupedPages[str] = GroupedPages(
            _READY, _ready_group, _ready_range, ready_paging, "ready-page-skips-row",
            self.corrupt,
        )
        self.request_pages: GroupedPages[tuple[str, str]] = GroupedPages(
            _REQUEST, _request_queue, _request_range, request_paging, "request-page-skips-row",
            self.corrupt,
        )
        self.ready_pages.on_added = self._ready_added
        self.ready_pages.mutation = self._mutation
        self.request_pages.mutation = self._mutation
        self.timer_frontier: bytes | None = None if paging is None else _TIMER
        """The last timer key held in memory (None: every timer row is; the bare prefix:
        none is, before the first load)."""
        self._beyond: dict[bytes, tuple[int | None, int, int]] = {}
        """Timer rows put beyond the frontier by batches maybe not yet durable: key -> (batch,
        wall ms, monotonic ms) of the operation that wrote it (dropped once durable)."""
        self.on_timers_paged: PagedTimers = lambda before, after, wall_ms, mono_ms: None
        self.timer_rows = 0
        """How many timer rows are stored (pending batches included), in memory or not."""
        self.mutation: Callable[[str], bool] = lambda name: False
        """Planted bugs for the simulator (``Faults.mutation``)."""
        self.timer_deadlines = DeadlineIndex(_first_int)
        """Timer key -> monotonic due time."""
        self.expiry_deadlines = DeadlineIndex(_first_int)
        """Lease-expiry key -> monotonic expiry."""
        self._loading = False
        self.ready: SortedDict = self.ready_pages.rows  # ready key -> Task (in memory)
        self.ready_per_group: dict[str, int] = self.ready_pages.stored
        """Task group -> how many ready rows it has stored (in memory or not)."""
        self.timers: SortedDict = SortedDict()  # timer key -> Task
        self.leases: dict[str, Lease] = {}
        self.expiries: SortedDict = SortedDict()  # expiry key -> task id
        self.counters: dict[bytes, int] = {}
        self.requests: SortedDict = self.request_pages.rows  # request key -> Task (in memory)
        self.requests_per_queue: dict[tuple[str, str], int] = self.request_pages.stored
        """(tenant, queue) -> how many parked requests it has stored (in memory or not)."""
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
        self.loaded_at: tuple[int, int] | None = None
        """``(wall ms, monotonic ms)`` the last :meth:`load` re-based new deadlines on."""

    def clear(self) -> None:
        """Forget every mirrored row (the clock, paging settings and timer frontier stay; the
        group frontiers go: a load pages every group afresh)."""
        clock, paging, frontier = self.clock, self.paging, self.timer_frontier
        paged, mutation = self.on_timers_paged, self.mutation
        self.__init__(  # type: ignore[misc]
            clock, paging, self.ready_pages.paging, self.request_pages.paging
        )
        self.timer_frontier, self.on_timers_paged, self.mutation = frontier, paged, mutation

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
        timer_deadlines, expiry_deadlines = self.timer_deadlines, self.expiry_deadlines
        if durable_seq is not None:
            timer_deadlines.roll_back(durable_seq)
            expiry_deadlines.roll_back(durable_seq)
        self.clear()
        self.on_timer_added, self.on_expiry_added, self.on_ready_added = callbacks
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
            if prefix == _TIMER and self.timer_frontier is not None:
                await self._load_timer_pages(kv)
                continue
            if prefix == _READY:
                await self.ready_pages.load(kv, end)
                continue
            if prefix == _REQUEST:
                await self.request_pages.load(kv, end)
                continue
            while True:
                rows = await kv.scan(start, end, limit=10_000)
                self._load_rows(rows)
                if len(rows) < 10_000:
                    break
                start = rows[-1][0] + b"\x00"
        self._load_rows(await kv.scan(COUNTER_PREFIX, keys.successor(COUNTER_PREFIX)))
        self._load_rows(await kv.scan(RATE_FLOOR_KEY, keys.successor(RATE_FLOOR_KEY)))

    async def _load_timer_pages(self, kv: KVStore) -> None:
        """Load the timer rows up to the frontier (after a failed write), or at open as many
        pages as :meth:`_wants_page` asks for on the wall clock now."""
        assert self.paging is not None and self.timer_frontier is not None
        page = self.paging.page_rows
        if self.timer_frontier != _TIMER:  # a reload: exactly the rows up to the frontier
            start, end = _TIMER, self.timer_frontier + b"\x00"
            while True:
                rows = await kv.scan(start, end, limit=10_000)
                self._load_rows(rows)
                if len(rows) < 10_000:
                    break
                start = rows[-1][0] + b"\x00"
        else:
            wall_ms = self.clock_readings()[0]
            while self._wants_page(wall_ms):
                start = self.timer_frontier + b"\x00"
                rows = await kv.scan(start, _TIMERS_END, limit=page)
                self.timer_frontier = rows[-1][0] if len(rows) >= page else None
                self._load_rows(rows)
        # The rows on disk only are counted, not kept.
        frontier = self.timer_frontier
        self.timer_rows = len(self.timers)
        if frontier is None:
            return
        self.timer_rows += await kv.count_keys(frontier + b"\x00", _TIMERS_END)

    def _ready_added(self, task_group: str) -> None:
        self.on_ready_added(task_group)

    def _mutation(self, name: str) -> bool:
        return self.mutation(name)

    async def page_groups(self, store: ShardStore) -> None:
        """Page ready tasks and parked requests in and out, group by group (see the class
        docstring). Call with the shard lock held, where an operation starts."""
        await self.ready_pages.page(store)
        await self.request_pages.page(store)

    def _wants_page(self, wall_ms: int) -> bool:
        """More timer rows are on disk and fewer than a page are in memory, or the frontier is
        due within the lookahead of ``wall_ms``."""
        frontier, paging = self.timer_frontier, self.paging
        if frontier is None or paging is None:
            return False
        if frontier == _TIMER or len(self.timers) < paging.page_rows:
            return True
        return _first_int(frontier) <= wall_ms + paging.lookahead_ms

    def timer_mirrored(self, k: bytes) -> bool:
        """Whether timer key ``k`` is within the frontier (its row, if stored, is in memory)."""
        return self.timer_frontier is None or k <= self.timer_frontier

    def timer_lookup(self, k: bytes) -> Task | None | bool:
        """The mirrored timer ``k``; None when there is surely none; False when ``k`` is beyond
        the frontier (read the store)."""
        if not self.timer_mirrored(k):
            return False
        return self.timers.get(k)

    async def page_timers(self, store: ShardStore) -> None:
        """Page timers in (and the latest ones out) as the class docstring says. Call with the
        shard lock held, where an operation starts; ``store`` gives the rows as of now (pending
        batches included) and which batches are durable."""
        if self.paging is None:
            return
        while self._wants_page(self.clock_readings()[0]):
            await self._page_in(store)
        self._page_out(store)

    async def _page_in(self, store: ShardStore) -> None:
        assert self.paging is not None and self.timer_frontier is not None
        before = self.timer_frontier
        after, rows, merged = await read_page(
            store, before + b"\x00", _TIMERS_END, self.paging.page_rows
        )
        deleted = [(k, seq) for k, seq, removed in merged if removed]
        written = {k: seq for k, seq, removed in merged if not removed}
        wall, mono = self.clock_readings()
        durable = store.durable_seq
        self.timer_frontier = after
        first = self.timer_deadlines.first_ms()
        corrupt = len(self.corrupt)
        for k, task in decode_page(rows, self.mutation("timer-page-skips-row"), self.corrupt):
            self.timers[k] = task
            own = self._beyond.get(k)
            seq = written.get(k)
            if seq is not None and seq > durable and own is not None and own[0] == seq:
                self.timer_deadlines.put(k, own[1], own[2])
            else:
                self.timer_deadlines.put(k, wall, mono)
        self.timer_rows -= len(self.corrupt) - corrupt  # as at a load: set aside, not counted
        for k, seq in deleted:
            if seq > durable:
                # Durable on disk, deleted by a batch still being written: indexed as paged in
                # and deleted by that batch, so a failed write restores it with this deadline.
                self.timer_deadlines.put(k, wall, mono)
                self.timer_deadlines.discard(k, batch=seq)
        for k in [k for k in self._beyond if after is None or k <= after]:
            del self._beyond[k]
        self.on_timers_paged(before, after, wall, mono)
        new_first = self.timer_deadlines.first_ms()
        if new_first is not None and (first is None or new_first < first):
            self.on_timer_added()

    def _page_out(self, store: ShardStore) -> None:
        """Drop the latest timers from memory while more than ``memory_rows`` are held (only
        rows due after the lookahead: the frontier stays beyond it)."""
        paging = self.paging
        assert paging is not None
        if len(self.timers) <= paging.memory_rows:
            return
        wall, mono = self.clock_readings()
        # The frontier (the last row kept) must be due after the lookahead.
        keep = max(
            paging.memory_rows - paging.page_rows,
            self.timers.bisect_left(keys.key(Prefix.TIMER, wall + paging.lookahead_ms + 1)) + 1,
        )
        if keep >= len(self.timers):
            return
        before = self.timer_frontier
        after = self.timers.peekitem(keep - 1)[0] if keep else _TIMER
        durable = store.durable_seq
        for k in list(self.timers.irange(after, inclusive=(False, True))):
            del self.timers[k]
            deadline = self.timer_deadlines.get(k)
            seq = store.pending_seq(k)
            if deadline is not None and seq is not None and seq > durable:
                # Written by a batch still being written: it keeps its deadline if paged in
                # again before that batch is durable.
                self._beyond[k] = (seq, _first_int(k), deadline)
            self.timer_deadlines.discard(k)
        self.timer_frontier = after
        self.on_timers_paged(before, after, wall, mono)

    def _load_rows(self, rows: list[tuple[bytes, bytes]]) -> None:
        """Apply loaded rows one by one: a row that cannot be decoded is set aside in
        :attr:`corrupt` (a damaged record must not keep the shard from opening)."""
        for row in rows:
            try:
                self.apply([row])
            except (CorruptRecord, ValueError):  # ValueError: a malformed key
                self.corrupt.append(row)

    def keys_beyond(self, ops: list[tuple[bytes, bytes | None]]) -> list[bytes]:
        """The timer, ready and request keys of ``ops`` beyond their frontier: :meth:`apply`
        needs to be told which of them are stored (``beyond_stored``) to keep the counts."""
        out: list[bytes] = []
        if self.timer_frontier is not None:
            out = [k for k, _ in ops if k[:1] == _TIMER and not self.timer_mirrored(k)]
        return out + self.ready_pages.keys_beyond(ops) + self.request_pages.keys_beyond(ops)

    def ready_lookup(self, k: bytes) -> Task | None | bool:
        """The mirrored ready task ``k``; None when there is surely none; False when ``k`` is
        beyond its group's frontier (read the store)."""
        return self.ready_pages.lookup(k)

    def request_lookup(self, k: bytes) -> Task | None | bool:
        """The mirrored parked request ``k``; None when there is surely none; False when ``k``
        is beyond its queue's frontier (read the store)."""
        return self.request_pages.lookup(k)

    def apply(
        self,
        ops: list[tuple[bytes, bytes | None]] | list[tuple[bytes, bytes]],
        clock_ref: tuple[int, int] | None = None,
        batch: int | None = None,
        beyond_stored: frozenset[bytes] | set[bytes] = frozenset(),
    ) -> None:
        """Apply the puts and deletes of one batch (or rows of a scan) to the mirrors.

        ``clock_ref`` is ``(wall ms, monotonic ms)`` as read by the operation that built the
        batch (default: read now); its timer and expiry rows are indexed on it. ``batch`` is
        the batch's sequence number in the store: the deadlines it replaces are kept until
        :meth:`forget_durable` says it is durable (a reload after a failed write restores them).
        ``beyond_stored``: which of :meth:`keys_beyond` are stored before the batch.
        """
        for k, v in ops:
            p = k[:1]
            if p == _READY:
                self.ready_pages.apply(k, v, beyond_stored)
            elif p == _TIMER:
                if not self.timer_mirrored(k):
                    if not self._loading:
                        stored = k in beyond_stored
                        self.timer_rows += (v is not None) - stored
                    self._apply_beyond(k, v, clock_ref, batch)
                elif v is None:
                    if self.timers.pop(k, None) is not None:
                        self.timer_rows -= 1
                    self.timer_deadlines.discard(k, batch=batch)
                else:
                    task = Task.decode(k, v)
                    if k not in self.timers:
                        self.timer_rows += 1
                    self.timers[k] = task
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
                self.request_pages.apply(k, v, beyond_stored)
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

    def _apply_beyond(
        self, k: bytes, v: bytes | None, clock_ref: tuple[int, int] | None, batch: int | None
    ) -> None:
        """A timer write beyond the frontier: nothing in memory but the readings of a put,
        until its batch is durable (see :meth:`_page_in`)."""
        if v is None or self._loading:
            self._beyond.pop(k, None)
            return
        wall, mono = clock_ref or self.clock_readings()
        self._beyond[k] = (batch, wall, mono)

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
        if self._beyond:
            for k in [k for k, (b, _, _) in self._beyond.items() if b is None or b <= durable_seq]:
                del self._beyond[k]

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
        """Wall due time of the earliest timer, or a lower bound of it (the frontier's, when
        none is in memory and some are on disk only). None: no timer."""
        if self.timers:
            return int(self.timers.peekitem(0)[1].due_ms)
        frontier = self.timer_frontier
        if frontier is None or self.timer_rows == 0:  # nothing on disk only either
            return None
        return 0 if frontier == _TIMER else _first_int(frontier)

    def next_page_wall_ms(self) -> int | None:
        """Wall time at which the frontier comes within the lookahead (the next page-in is
        due then; None: nothing on disk only)."""
        frontier, paging = self.timer_frontier, self.paging
        if frontier is None or paging is None:
            return None
        if frontier == _TIMER or len(self.timers) < paging.page_rows:
            return 0
        return _first_int(frontier) - paging.lookahead_ms

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
