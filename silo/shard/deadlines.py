"""In-memory deadlines on the monotonic clock (DESIGN §4 "Deadlines").

Stored deadlines (lease expiries, timer due times) are wall-clock milliseconds. A wall clock can
step (NTP, a VM resume, an operator), so the shard never compares a stored deadline with the
wall clock to decide that a lease has expired or a timer is due: each stored deadline gets a
deadline on the runtime's monotonic clock, computed from a pair of readings taken together,

    monotonic deadline = mono_ref + (wall deadline - wall_ref),

where the pair is the one of the operation that wrote the deadline (so "lease_ms from now" means
lease_ms of monotonic time from now) or, for rows loaded from disk when the shard opens, the pair
read at load time (re-basing). A wall-clock step after that moves no deadline.

A batch changes the index when it is submitted, before it is durable. If its write fails, the
shard reloads its tables from disk, and the rows the failed batches deleted are back: they must
get back the deadline they had, not one re-based on the wall clock of the reload (after a wall
step since, a backward step would delay a due timer, a forward one reap a live lease early). So
the index keeps, per batch not yet known to be durable, what that batch replaced
(:meth:`forget_durable` drops it, :meth:`roll_back` restores it before the reload re-bases).

:class:`DeadlineIndex` follows the rows of one table (keyed by the row key, which embeds the wall
deadline) and orders them by monotonic deadline; ties keep key order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from sortedcontainers import SortedList


class DeadlineIndex:
    """Row key -> monotonic deadline, ordered by deadline.

    Invariant: the index holds exactly the keys of its table that the shard's mirror holds
    (the shard calls :meth:`put` / :meth:`discard` for the same batch operations the mirror
    applies, and :meth:`roll_back` then :meth:`rebase` after every load). Its undo log holds
    only changes of batches submitted and not yet known to be durable.
    """

    def __init__(self, wall_deadline_of: Callable[[bytes], int]) -> None:
        self._wall_of = wall_deadline_of
        self._by_key: dict[bytes, int] = {}
        self._order: SortedList = SortedList()  # (monotonic deadline, key)
        self._undo: deque[tuple[int, bytes, int | None]] = deque()
        """(batch sequence number, key, its deadline before that batch), in batch order."""

    def __len__(self) -> int:
        return len(self._by_key)

    def put(self, k: bytes, wall_ref_ms: int, mono_ref_ms: int, *,
            batch: int | None = None) -> None:
        """Index row ``k`` written by an operation whose clock readings were
        ``(wall_ref_ms, mono_ref_ms)``; ``batch``: the sequence number of the batch that wrote
        it (None: not undoable, e.g. while loading)."""
        self.set(k, mono_ref_ms + (self._wall_of(k) - wall_ref_ms), batch=batch)

    def set(self, k: bytes, mono_deadline_ms: int, *, batch: int | None = None) -> None:
        """Give row ``k`` this monotonic deadline (e.g. a heartbeat that extends a lease
        without changing its stored expiry)."""
        self.discard(k, batch=batch)
        self._by_key[k] = mono_deadline_ms
        self._order.add((mono_deadline_ms, k))

    def discard(self, k: bytes, *, batch: int | None = None) -> None:
        old = self._by_key.pop(k, None)
        if batch is not None:
            self._undo.append((batch, k, old))
        if old is not None:
            self._order.remove((old, k))

    def forget_durable(self, durable_seq: int) -> None:
        """Batches up to ``durable_seq`` are durable: their changes can no longer be undone."""
        undo = self._undo
        while undo and undo[0][0] <= durable_seq:
            undo.popleft()

    def roll_back(self, durable_seq: int) -> None:
        """Every batch after ``durable_seq`` failed (a failed write fails all batches queued
        behind it): restore the deadlines they replaced, newest change first, so that the
        index is that of the durable rows again."""
        undo = self._undo
        while undo:
            batch, k, old = undo.pop()
            if batch <= durable_seq:
                continue  # durable (entries are mostly, not strictly, in batch order)
            known = self._by_key.pop(k, None)
            if known is not None:
                self._order.remove((known, k))
            if old is not None:
                self._by_key[k] = old
                self._order.add((old, k))
        undo.clear()

    def get(self, k: bytes) -> int | None:
        return self._by_key.get(k)

    def rebase(self, ks: Iterable[bytes], wall_now_ms: int, mono_now_ms: int) -> None:
        """After a load: index exactly ``ks``. A key already indexed keeps its deadline (its
        row did not change); a new one is re-based on the readings ``(wall_now_ms,
        mono_now_ms)`` taken at load time. Forgets the undo log."""
        old = self._by_key
        self._by_key = {}
        self._order = SortedList()
        self._undo.clear()
        for k in ks:
            known = old.get(k)
            if known is None:
                self.put(k, wall_now_ms, mono_now_ms)
            else:
                self.set(k, known)

    def first_ms(self) -> int | None:
        """The earliest monotonic deadline (None: the index is empty)."""
        return self._order[0][0] if self._order else None

    def due(self, mono_now_ms: int, limit: int) -> list[bytes]:
        """Keys whose deadline is at or before ``mono_now_ms``, earliest first, at most
        ``limit``."""
        out: list[bytes] = []
        for deadline, k in self._order:
            if deadline > mono_now_ms or len(out) >= limit:
                break
            out.append(k)
        return out
