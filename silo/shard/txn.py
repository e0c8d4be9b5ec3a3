"""Txn: the writes of one shard operation, readable by the operation before it commits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from silo.shard.store import Event, ShardStore, merge_scan


@dataclass(frozen=True)
class Savepoint:
    """What :meth:`Txn.rollback` needs to undo everything recorded after :meth:`Txn.savepoint`."""

    journal_len: int
    events_len: int
    regrant_len: int
    counter_deltas: dict[bytes, int]
    holder_deltas: dict[tuple[str, str], int]
    new_requests: dict[bytes, Any]
    request_floor: dict[tuple[str, str], bytes]
    rate_deltas: dict[tuple[str, str, str], Any]


class Txn:
    """The writes of one operation, readable by the operation itself before it commits."""

    def __init__(self, store: ShardStore, now_ms: int, mono_ms: int | None = None) -> None:
        self.store = store
        self.now = now_ms
        """Wall time of the operation (stored times are wall-clock ms)."""
        self.mono = mono_ms
        """Monotonic time read with :attr:`now`: in-memory deadlines are kept on it (None: a
        read-only transaction)."""
        self.ops: dict[bytes, bytes | None] = {}
        self.events: list[Event] = []
        self.counter_deltas: dict[bytes, int] = {}
        self.holder_deltas: dict[tuple[str, str], int] = {}
        self.regrant: list[tuple[str, str]] = []
        self.new_requests: dict[bytes, Any] = {}
        self.request_floor: dict[tuple[str, str], bytes] = {}
        self.rate_deltas: dict[tuple[str, str, str], Any] = {}
        """Per rate bucket: this transaction's changes to its reservations (see
        :class:`silo.shard.reservations.RateWindows`)."""
        """Per queue: the largest stored request this transaction has granted."""
        """Concurrency requests parked by this transaction (not yet in the mirror)."""
        """Queues whose waiting requests may now be granted (checked before commit)."""
        self._cache: dict[bytes, bytes | None] = {}
        self._journal: list[tuple[bytes, bool, bytes | None]] | None = None
        """While a savepoint is open: (key, had an op, previous op) per put/delete."""

    def savepoint(self) -> Savepoint:
        """Mark the current writes so that one item of a batch operation can be undone alone
        (:meth:`rollback`) when it fails, leaving the other items' writes in place."""
        if self._journal is None:
            self._journal = []
        return Savepoint(
            len(self._journal), len(self.events), len(self.regrant), dict(self.counter_deltas),
            dict(self.holder_deltas), dict(self.new_requests), dict(self.request_floor),
            {b: d.copy() for b, d in self.rate_deltas.items()},
        )

    def rollback(self, sp: Savepoint) -> None:
        """Undo every write, event, counter change and grant note made since ``sp``."""
        assert self._journal is not None
        while len(self._journal) > sp.journal_len:
            k, had, old = self._journal.pop()
            if had:
                self.ops[k] = old
            else:
                self.ops.pop(k, None)
        del self.events[sp.events_len :]
        del self.regrant[sp.regrant_len :]
        self.counter_deltas = dict(sp.counter_deltas)
        self.holder_deltas = dict(sp.holder_deltas)
        self.new_requests = dict(sp.new_requests)
        self.request_floor = dict(sp.request_floor)
        self.rate_deltas = {b: d.copy() for b, d in sp.rate_deltas.items()}

    def _record(self, k: bytes) -> None:
        if self._journal is not None:
            self._journal.append((k, k in self.ops, self.ops.get(k)))

    async def get(self, k: bytes) -> bytes | None:
        if k in self.ops:
            return self.ops[k]
        if k in self._cache:
            return self._cache[k]
        return await self.store.get(k)

    async def prefetch(self, ks: list[bytes]) -> None:
        """Read ``ks`` in one go so that later :meth:`get` calls need no I/O.

        Only valid while the shard lock is held: nothing else writes in between.
        """
        todo = [k for k in ks if k not in self.ops and k not in self._cache]
        if todo:
            for k, v in zip(todo, await self.store.get_many(todo), strict=True):
                self._cache[k] = v

    async def scan(
        self, start: bytes, end: bytes | None, *, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        extra = sum(1 for k in self.ops if k >= start and (end is None or k < end))
        base_limit = None if limit is None else limit + extra
        base = await self.store.scan(start, end, limit=base_limit)
        return merge_scan(base, self.ops, start, end, False, limit, base_limit)

    def put(self, k: bytes, v: bytes) -> None:
        self._record(k)
        self.ops[k] = v

    def delete(self, k: bytes) -> None:
        self._record(k)
        self.ops[k] = None

    def bump(self, counter: bytes, delta: int) -> None:
        self.counter_deltas[counter] = self.counter_deltas.get(counter, 0) + delta

    def emit(self, kind: str, **fields: Any) -> None:
        self.events.append((kind, fields))


