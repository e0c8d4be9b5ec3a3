"""Split cleanup: a child shard deletes the rows of tenants outside its range (DESIGN §6).

A child starts as a clone of its parent, so it holds every row of the parent. Its split marker
(shard meta key ``META "split"``, a :class:`SplitMarker`) names its range and how far cleanup
has come, in three stages:

1. ``live``: the tables mirrored in memory (:data:`~silo.cluster.split.LIVE_TABLES`: queues,
   timers, leases, limits) still hold other tenants' rows. :func:`clean_live_tables` deletes them
   on open, before the shard loads or serves, so a child never leases, reaps, promotes or grants
   work it does not own. It is idempotent (a crash in the middle re-runs it on the next open);
   its cost is that of loading those tables, which the open pays anyway.
2. ``history``: the per-job tables (:data:`~silo.cluster.split.HISTORY_TABLES`) are swept in the
   background by :class:`SplitCleanup` while the child serves its own tenants (no request reaches
   another tenant's rows: routing sends them to the sibling). Each batch deletes at most
   ``batch_keys`` rows and moves the checkpoint in the same atomic write, so a crash or a close
   loses nothing and the next open resumes where the last durable batch ended. A close stops
   the sweep cleanly without marking it done.
3. ``done``: the counters have been recounted from the data and replaced, in the same batch that
   marks the marker done. A compaction of the swept key range follows (real runtime).

A shard without a marker is not a split child and runs no cleanup. Only rows whose tenant routes
outside the range are deleted (:func:`silo.cluster.split.key_owner` says, per table, who a row
belongs to; rows it cannot attribute are kept).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import msgpack
import trio

from silo import keys
from silo.cluster.shard_map import ShardRange
from silo.cluster.split import LIVE_TABLES, NeedsLease, key_owner, out_of_range
from silo.errors import Unavailable
from silo.keys import Prefix, key
from silo.model import JobState, encode_int
from silo.runtime import Runtime
from silo.runtime.disk import KVStore, WriteBatch
from silo.shard.commit import CommitProtocol, EmptyBatch
from silo.shard.mirror import COUNTER_PREFIX, ShardMirror
from silo.shard.tables import JOBS_TERMINAL, JOBS_TOTAL, status_counter

log = logging.getLogger("silo.shard.cleanup")

SPLIT_MARKER = key(Prefix.META, "split")
BATCH_KEYS = 500
"""Default of the most rows one cleanup batch examines (and so at most deletes)."""
LIVE_BATCH_KEYS = 5000
"""Rows per batch of stage 1 at least: it runs before the shard serves, so nothing waits
behind its batches, and fewer synced writes shorten the split."""
MAX_BATCH_KEYS = 100_000
RECOUNT_PAGE = 5000
RETRY_S = 0.2
ERROR_RETRY_S = 2.0
_LIVE = frozenset(int(p) for p in LIVE_TABLES)
_SWEEP_END = bytes((Prefix.META,))
"""The sweep covers every table below shard meta (counters are recounted instead)."""


@dataclass(frozen=True, slots=True)
class SplitMarker:
    """A split child's range and cleanup progress (stored under :data:`SPLIT_MARKER`)."""

    parent: int
    start: int
    end: int
    stage: str = "live"
    """``live`` -> ``history`` -> ``done`` (see the module docstring)."""
    checkpoint: bytes = b""
    """During ``history``: every row below this key has been examined."""
    deleted: int = 0
    """Rows deleted so far (both stages)."""
    examined: int = 0
    done_at_ms: int = 0

    def range_of(self, shard_id: int) -> ShardRange:
        return ShardRange(shard_id, self.start, self.end)

    @property
    def done(self) -> bool:
        return self.stage == "done"

    def encode(self) -> bytes:
        return msgpack.packb([1, self.parent, self.start, self.end - 1, self.stage,
                              self.checkpoint, self.deleted, self.examined, self.done_at_ms],
                             use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> SplitMarker:
        try:
            fmt, parent, start, last, stage, checkpoint, deleted, examined, done_at = (
                msgpack.unpackb(data, raw=False))
            if fmt != 1 or stage not in ("live", "history", "done"):
                raise ValueError(f"unknown split marker {fmt}/{stage}")
            return cls(int(parent), int(start), int(last) + 1, str(stage), bytes(checkpoint),
                       int(deleted), int(examined), int(done_at))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"unreadable split marker: {exc}") from exc


async def read_marker(kv: KVStore) -> SplitMarker | None:
    raw = await kv.get(SPLIT_MARKER)
    return None if raw is None else SplitMarker.decode(raw)


async def write_marker(kv: KVStore, marker: SplitMarker) -> None:
    batch = WriteBatch()
    batch.put(SPLIT_MARKER, marker.encode())
    await kv.write(batch, sync=True)


class RangeTest:
    """Whether a tenant's rows go, for one child range (planted bugs come from ``faults``)."""

    def __init__(self, rng: ShardRange, runtime: Runtime) -> None:
        self.range = rng
        self._by_string = runtime.faults.mutation("split-at-tenant-string")
        self._exclusive_start = runtime.faults.mutation("cleanup-deletes-in-range")

    def goes(self, tenant: str) -> bool:
        return out_of_range(self.range, tenant, by_string=self._by_string,
                            exclusive_start=self._exclusive_start)


async def clean_live_tables(
    kv: KVStore, shard_id: int, marker: SplitMarker, runtime: Runtime, *,
    batch_keys: int = BATCH_KEYS,
) -> SplitMarker:
    """Stage 1, directly on the store before the shard loads: delete the out-of-range rows of
    the mirrored tables, then move the marker to ``history``. Idempotent."""
    test = RangeTest(marker.range_of(shard_id), runtime)
    deleted = 0
    for prefix in LIVE_TABLES:
        start, end = keys.prefix_range(prefix)
        cursor = start
        while True:
            rows = await kv.scan(cursor, end, limit=batch_keys)
            batch = WriteBatch()
            tenants: set[str] = set()
            for k, v in rows:
                owner = key_owner(k, v)
                if isinstance(owner, NeedsLease):
                    lease_key = key(Prefix.LEASE, owner.task_id)
                    raw = await kv.get(lease_key)
                    owner = None if raw is None else key_owner(lease_key, raw)
                    if owner is not None and test.goes(owner):
                        batch.delete(lease_key)
                if owner is not None and test.goes(owner):
                    batch.delete(k)
                    tenants.add(owner)
            if len(batch):
                await kv.write(batch, sync=True)
                deleted += len(batch)
                runtime.events("split_cleanup", _event(shard_id, marker, "live", tenants,
                                                       len(batch)))
            if len(rows) < batch_keys:
                break
            cursor = rows[-1][0] + b"\x00"
    first = bytes((Prefix.JOB,))
    new = replace(marker, stage="history", checkpoint=first, deleted=marker.deleted + deleted)
    await write_marker(kv, new)
    return new


def _event(shard_id: int, marker: SplitMarker, stage: str, tenants: set[str],
           n: int) -> dict[str, Any]:
    return {"shard": shard_id, "parent": marker.parent, "start": marker.start,
            "end": marker.end, "stage": stage, "tenants": sorted(tenants), "keys": n}


def next_sweep_start(cursor: bytes) -> bytes:
    """The first key at or after ``cursor`` outside the live tables (swept in stage 1)."""
    while cursor and cursor[0] in _LIVE:
        cursor = bytes((cursor[0] + 1,))
    return cursor


class SplitCleanup:
    """Stages 2 and 3 for one open child shard, through the shard's own commit path (so every
    batch is serialised with the shard's operations, and a close refuses the next one)."""

    def __init__(
        self, runtime: Runtime, commit: CommitProtocol, mirror: ShardMirror, kv: KVStore,
        shard_id: int, marker: SplitMarker, *, batch_keys: int = BATCH_KEYS,
        pause_s: float = 0.0,
    ) -> None:
        if not 1 <= batch_keys <= MAX_BATCH_KEYS:
            raise ValueError(f"cleanup 'batch_keys' {batch_keys} is outside 1..{MAX_BATCH_KEYS}")
        self._rt = runtime
        self._commit = commit
        self._mirror = mirror
        self._kv = kv
        self._shard_id = shard_id
        self.marker = marker
        self._test = RangeTest(marker.range_of(shard_id), runtime)
        self._batch_keys = batch_keys
        self._pause_s = pause_s
        self.batches = 0
        self.on_done: Callable[[int, SplitMarker], None] = lambda shard_id, marker: None

    async def run(self) -> None:
        """Sweep until done; returns early (not done) when the shard closes."""
        while not self.marker.done:
            if self._commit.closing:
                return
            try:
                if self.marker.checkpoint >= _SWEEP_END:
                    await self._finish()
                else:
                    await self._batch()
            except Unavailable:
                if self._commit.closing:
                    return
                await trio.sleep(RETRY_S)
                continue
            except Exception as exc:  # noqa: BLE001 - a cleanup round must not kill the node
                if self._commit.closing:
                    return
                log.warning("shard %d: split cleanup batch failed (retrying): %s",
                            self._shard_id, exc)
                await trio.sleep(ERROR_RETRY_S)
                continue
            self.batches += 1
            await trio.sleep(self._pause_s)
        self.on_done(self._shard_id, self.marker)
        if self.marker.done:
            await self._compact()

    async def _batch(self) -> None:
        start = next_sweep_start(self.marker.checkpoint)
        if start >= _SWEEP_END:
            new = replace(self.marker, checkpoint=_SWEEP_END)
            async with self._commit.operation(empty=EmptyBatch.NOTHING) as txn:
                txn.put(SPLIT_MARKER, new.encode())
            self.marker = new
            return
        end = bytes((start[0] + 1,))
        tenants: set[str] = set()
        async with self._commit.operation(empty=EmptyBatch.NOTHING) as txn:
            rows = await txn.scan(start, end, limit=self._batch_keys)
            n = 0
            for k, v in rows:
                owner = key_owner(k, v)
                if isinstance(owner, str) and self._test.goes(owner):
                    txn.delete(k)
                    tenants.add(owner)
                    n += 1
            checkpoint = end if len(rows) < self._batch_keys else rows[-1][0] + b"\x00"
            new = replace(self.marker, checkpoint=checkpoint, deleted=self.marker.deleted + n,
                          examined=self.marker.examined + len(rows))
            txn.put(SPLIT_MARKER, new.encode())
            if n:
                txn.emit("split_cleanup", **_event(self._shard_id, self.marker, "history",
                                                   tenants, n))
        self.marker = new

    async def _finish(self) -> None:
        """Stage 3: recount the counters from the status table and replace them, marking the
        marker done, in one batch."""
        async with self._commit.operation(empty=EmptyBatch.NOTHING) as txn:
            counts: dict[bytes, int] = {}
            start, end = keys.prefix_range(Prefix.STATUS)
            cursor = start
            while True:
                rows = await txn.scan(cursor, end, limit=RECOUNT_PAGE)
                for k, v in rows:
                    _, (tenant, _job) = keys.parse(k)
                    state = JobState.decode(k, v)
                    for ck in (JOBS_TOTAL, status_counter(str(tenant), state.status)) + (
                            (JOBS_TERMINAL,) if state.status.terminal else ()):
                        counts[ck] = counts.get(ck, 0) + 1
                if len(rows) < RECOUNT_PAGE:
                    break
                cursor = rows[-1][0] + b"\x00"
            for ck in sorted(self._mirror.counters):
                if ck.startswith(COUNTER_PREFIX) and ck not in counts:
                    txn.delete(ck)
            for ck, n in sorted(counts.items()):
                if self._mirror.counters.get(ck) != n:
                    txn.put(ck, encode_int(n))
            new = replace(self.marker, stage="done", checkpoint=_SWEEP_END,
                          done_at_ms=txn.now)
            txn.put(SPLIT_MARKER, new.encode())
            txn.emit("split_cleanup_done", shard=self._shard_id, parent=self.marker.parent,
                     deleted=new.deleted)
        self.marker = new

    async def _compact(self) -> None:
        try:
            await self._kv.compact_range(bytes((Prefix.JOB,)), _SWEEP_END)
        except Exception as exc:  # noqa: BLE001 - compaction is an optimisation
            log.warning("shard %d: compaction after split cleanup failed: %s",
                        self._shard_id, exc)


__all__ = [
    "BATCH_KEYS",
    "LIVE_BATCH_KEYS",
    "SPLIT_MARKER",
    "RangeTest",
    "SplitCleanup",
    "SplitMarker",
    "clean_live_tables",
    "next_sweep_start",
    "read_marker",
    "write_marker",
]
