"""Txn: the writes of one shard operation, readable by the operation before it commits."""

from __future__ import annotations

from typing import Any

from silo.shard.store import Event, ShardStore, merge_scan


class Txn:
    """The writes of one operation, readable by the operation itself before it commits."""

    def __init__(self, store: ShardStore, now_ms: int) -> None:
        self.store = store
        self.now = now_ms
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
        base = await self.store.scan(start, end, limit=None if limit is None else limit + extra)
        return merge_scan(base, self.ops, start, end, False, limit)

    def put(self, k: bytes, v: bytes) -> None:
        self.ops[k] = v

    def delete(self, k: bytes) -> None:
        self.ops[k] = None

    def bump(self, counter: bytes, delta: int) -> None:
        self.counter_deltas[counter] = self.counter_deltas.get(counter, 0) + delta

    def emit(self, kind: str, **fields: Any) -> None:
        self.events.append((kind, fields))


