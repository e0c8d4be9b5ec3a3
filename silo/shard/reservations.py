"""Rate-limit reservations of one shard: a sliding window per bucket (DESIGN §5).

A bucket (tenant, name, key) is the set of its reservation rows, one per token granted, keyed
``(tenant, name, key, slot_ms, job_id, attempt)``: the time the token is (or was) granted and the
attempt that holds it. A job with limit ``L`` per ``P`` ms reserves at

    slot = max(now, latest slot, L-th latest slot + P, floor)

so slots never decrease and any ``L + 1`` consecutive slots span at least ``P`` ms: no window of
``P`` ms (``[t, t + P)``) of stored slots ever holds more than ``L`` of them. A row is kept until
the wall clock reaches ``slot + P``, then deleted (:meth:`RateWindows.forget_expired`), and the
deletion raises the shard's *floor* (the stored row ``RATE_FLOOR_KEY``, in the same batch) to at
least ``slot + P``. While the wall clock only moves forward the floor is never above ``now``; it
is what keeps the window once the wall clock steps back: a later reservation at the stepped-back
``now`` would otherwise fall within ``P`` of deleted slots (slots are stored wall times, so the
window is judged on them, across restarts and moves between nodes whose clocks differ; the
timer that waits for a slot follows the monotonic clock, DESIGN §4). So a backward step of
``S`` ms delays the shard's next reservations by at most ``S``, and never lets a window hold
more than ``L``. The floor is one row per shard, not per bucket, so an idle bucket still keeps no
row. (Jobs naming one bucket are expected to agree on its limit; each reservation is checked
against the limit of the job making it.)

Why the floor is enough: take ``L + 1`` consecutive slots ``s_0 <= ... <= s_L`` of a bucket.
When ``s_L`` was reserved, either every row from ``s_0`` on was still kept, and the ``L``-th
latest slot was ``s_0`` (``s_L >= s_0 + P``), or one of them, ``s_i >= s_0``, was deleted, and
then ``s_L >= floor >= s_i + P >= s_0 + P``. Slots never decrease: ``s_L`` is at least the
latest kept slot, and at least the floor, which exceeds every deleted slot.

Giving a token back (:meth:`RateWindows.give_back`): the cancelled attempt's slot goes to the
attempt holding the bucket's latest reservation, which the caller moves into it; the bucket's
slots then lose their latest one. A subset of a valid set of slots is valid, so the window
holds, and the next reservation is placed one token earlier. When the cancelled attempt holds the
latest slot itself, that slot just goes.

Within one transaction, changes are kept per bucket in a :class:`_BucketDelta` over the committed
rows of the mirror: reservations appended at the end (slots never decrease) and committed
reservations dropped from the end; a move into a freed slot changes who holds a slot, not the
slots. Every query is O(log n) in the bucket's rows plus the transaction's own changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sortedcontainers import SortedList

from silo import keys
from silo.model import RateLimit, RateReservation, decode_int, encode_int
from silo.shard.tables import RATE_FLOOR_KEY, reservation_key, reservation_range
from silo.shard.txn import Txn

if TYPE_CHECKING:
    from silo.shard.mirror import ShardMirror


@dataclass(frozen=True, slots=True)
class Reservation:
    """One reservation row: the token of ``(job_id, attempt)`` at ``slot_ms``."""

    slot_ms: int
    job_id: str
    attempt: int


@dataclass
class _BucketDelta:
    """One transaction's changes to one bucket (see the module docstring)."""

    lo: int
    """Index of the bucket's first committed row in the mirror."""
    committed: int
    """Committed rows of the bucket still counted (those not dropped from the end)."""
    appended: list[int] = field(default_factory=list)
    """Slots reserved by this transaction, in order."""
    added_keys: SortedList = field(default_factory=SortedList)
    """Reservation keys written (and not deleted) by this transaction."""

    def copy(self) -> _BucketDelta:
        """An independent copy (a savepoint keeps one to roll back to)."""
        return _BucketDelta(self.lo, self.committed, list(self.appended),
                            SortedList(self.added_keys))


def _parse(k: bytes) -> Reservation:
    _, parts = keys.parse(k)
    return Reservation(int(parts[3]), str(parts[4]), int(parts[5]))


class RateWindows:
    """The reservation index of one shard's rate buckets, read and written on a transaction."""

    def __init__(self, mirror: ShardMirror) -> None:
        self._mirror = mirror

    def _delta(self, txn: Txn, tenant: str, limit: RateLimit) -> _BucketDelta:
        b = (tenant, limit.name, limit.key)
        d = txn.rate_deltas.get(b)
        if d is None:
            start, end = reservation_range(*b)
            rows = self._mirror.reservations
            lo = rows.bisect_left(start)
            hi = len(rows) if end is None else rows.bisect_left(end)
            d = txn.rate_deltas[b] = _BucketDelta(lo, hi - lo)
        return d

    def _slot_at(self, d: _BucketDelta, i: int) -> int:
        """The ``i``-th slot (from 0, in order) of the bucket as this transaction sees it."""
        if i < d.committed:
            return int(self._mirror.reservations.peekitem(d.lo + i)[1])
        return d.appended[i - d.committed]

    def next_slot_ms(self, txn: Txn, tenant: str, limit: RateLimit) -> int:
        """The earliest time the bucket can grant one more token (see the module docstring)."""
        d = self._delta(txn, tenant, limit)
        n = d.committed + len(d.appended)
        slot = txn.now
        if n:
            slot = max(slot, self._slot_at(d, n - 1))
        if n >= limit.limit:
            slot = max(slot, self._slot_at(d, n - limit.limit) + limit.per_ms)
        return max(slot, self.floor_ms(txn))

    def floor_ms(self, txn: Txn) -> int:
        """The shard's rate floor as ``txn`` sees it (see the module docstring)."""
        raw = txn.ops.get(RATE_FLOOR_KEY)
        if raw is not None:
            return decode_int(RATE_FLOOR_KEY, raw)
        return self._mirror.rate_floor_ms

    def reserve(self, txn: Txn, tenant: str, limit: RateLimit, job_id: str, attempt: int) -> int:
        """Reserve the next token for the attempt; returns its slot (``<= now``: at once)."""
        d = self._delta(txn, tenant, limit)
        slot = self.next_slot_ms(txn, tenant, limit)
        k = reservation_key(tenant, limit.name, limit.key, slot, job_id, attempt)
        txn.put(k, RateReservation(limit.limit, limit.per_ms).encode())
        d.appended.append(slot)
        d.added_keys.add(k)
        return slot

    def _alive(self, txn: Txn, k: bytes) -> bool:
        if k in txn.ops:
            return txn.ops[k] is not None
        return k in self._mirror.reservations

    def latest(self, txn: Txn, tenant: str, limit: RateLimit) -> Reservation | None:
        """The bucket's latest reservation (None: it keeps none)."""
        d = self._delta(txn, tenant, limit)
        best: bytes | None = d.added_keys[-1] if d.added_keys else None
        start, end = reservation_range(tenant, limit.name, limit.key)
        # Skips only rows this transaction deleted: bounded by its own writes.
        for k in self._mirror.reservations.irange(start, end, inclusive=(True, False),
                                                  reverse=True):
            if self._alive(txn, k):
                if best is None or k > best:
                    best = k
                break
        return None if best is None else _parse(best)

    def holds(self, txn: Txn, tenant: str, limit: RateLimit, r: Reservation) -> bool:
        """Whether the bucket keeps reservation ``r``."""
        return self._alive(
            txn, reservation_key(tenant, limit.name, limit.key, r.slot_ms, r.job_id, r.attempt)
        )

    def _delete(self, txn: Txn, d: _BucketDelta, k: bytes) -> None:
        txn.delete(k)
        if k in d.added_keys:
            d.added_keys.remove(k)

    def _drop_latest_slot(self, d: _BucketDelta) -> None:
        if d.appended:
            d.appended.pop()
        else:
            d.committed -= 1

    def give_back(
        self, txn: Txn, tenant: str, limit: RateLimit, freed: Reservation,
        latest: Reservation, latest_limit: RateLimit,
    ) -> None:
        """Give back ``freed`` (a reservation whose attempt no longer waits for it): unless it
        is the bucket's ``latest`` (see :meth:`latest`, whose attempt carries
        ``latest_limit``), the latest attempt takes its slot (the caller moves its timer
        there). The bucket loses its latest slot either way."""
        d = self._delta(txn, tenant, limit)
        b = (limit.name, limit.key)
        self._delete(txn, d, reservation_key(tenant, *b, freed.slot_ms, freed.job_id,
                                             freed.attempt))
        if latest != freed:
            self._delete(txn, d, reservation_key(tenant, *b, latest.slot_ms, latest.job_id,
                                                 latest.attempt))
            moved = reservation_key(tenant, *b, freed.slot_ms, latest.job_id, latest.attempt)
            txn.put(moved, RateReservation(latest_limit.limit, latest_limit.per_ms).encode())
            d.added_keys.add(moved)
        self._drop_latest_slot(d)

    def forget_expired(self, txn: Txn, max_rows: int) -> int:
        """Delete up to ``max_rows`` reservations that no longer constrain any reservation
        (``slot + per_ms <= now``); returns how many. A row whose slot is not before every
        timer is kept: its attempt may still wait for it (a promotion running late)."""
        first_timer = self._mirror.next_timer_due_ms()
        n = 0
        floor = self.floor_ms(txn)
        for i, (expires_ms, k) in enumerate(self._mirror.reservation_expiry):
            if expires_ms > txn.now or i >= max_rows:
                break
            if k in txn.ops:
                continue
            if first_timer is not None and self._mirror.reservations[k] >= first_timer:
                continue
            txn.delete(k)
            floor = max(floor, expires_ms)
            n += 1
        if floor > self.floor_ms(txn):
            txn.put(RATE_FLOOR_KEY, encode_int(floor))
        return n
