"""Split coordination on etcd (coordination ``etcd``): the shard map and split records of
:class:`~silo.cluster.coordinator.Coordinator`, behind :class:`~silo.cluster.splitting.
SplitCoordination`.

- The commit point is :meth:`Coordinator.commit_split`, one txn: the map is still the one the
  split was planned on, the splitting node still owns the parent, nobody owns either child ->
  the new map is installed *and* both children's ownership keys name the splitting node. So
  the children are in the map exactly when they have an owner: no other node can take and open
  a child before the splitting node does, and a crash before the commit leaves no child key
  behind (there is nothing to release when the split is undone).
- Records live at ``{prefix}/splits/{parent}`` and are written by compare-and-swap on their mod
  revision: several nodes may finish one split (the children can be served by different nodes
  once placement moves them), and a write from a stale reading fails with ABORTED instead of
  going back a phase. A retried write is recognised by value (:meth:`Coordinator.put_split`).
- Finished (aborted) records beyond :data:`~silo.cluster.splitting.MAX_FINISHED_RECORDS` are
  deleted, oldest first; committed ones stay (they carry the parent -> children lineage).
- Child ids are reserved at ``{prefix}/split_ids`` by the txn that writes a split's REQUESTED
  record (compare-and-swap on the reservation's mod revision), so two nodes splitting different
  parents at once never clone into the same child directory.
"""

from __future__ import annotations

import msgpack

from silo.cluster.coordinator import Coordinator
from silo.cluster.layout import VersionedShardMap
from silo.cluster.shard_map import ShardMap
from silo.cluster.split import SplitPhase, SplitRecord
from silo.errors import Aborted, FailedPrecondition


def encode_record(record: SplitRecord) -> bytes:
    return msgpack.packb(record.encode())


def decode_record(raw: bytes) -> SplitRecord:
    try:
        row = msgpack.unpackb(raw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"unreadable split record: {exc}") from exc
    return SplitRecord.decode(row)


class EtcdSplitCoordination:
    """:class:`~silo.cluster.splitting.SplitCoordination` over a cluster coordinator."""

    def __init__(self, coordinator: Coordinator, max_finished: int = 64) -> None:
        self.coordinator = coordinator
        self.max_finished = max_finished
        self._revisions: dict[int, int] = {}
        """Mod revision of each record as last read or written (0: none)."""
        self._map: VersionedShardMap | None = None
        self._ids_revision = 0
        """Mod revision of the child id reservation as last read (0: none)."""

    async def read_map(self) -> ShardMap:
        current = await self.coordinator.read_shard_map()
        if current.map is None:
            raise FailedPrecondition("the cluster has no shard map yet")
        self._map = current
        return current.map

    async def commit_map(self, expected: ShardMap, new: ShardMap,
                         record: SplitRecord) -> ShardMap:
        current = await self.coordinator.read_shard_map()
        if current.map != expected:
            if current.map is None:
                raise FailedPrecondition("the cluster has no shard map")
            return current.map
        _, now = await self.coordinator.commit_split(current, new, record.parent,
                                                     (record.left, record.right))
        if now.map is None:
            raise FailedPrecondition("the cluster's shard map disappeared")
        self._map = now
        return now.map

    async def records(self) -> dict[int, SplitRecord]:
        out: dict[int, SplitRecord] = {}
        revisions: dict[int, int] = {}
        for parent, (raw, revision) in (await self.coordinator.splits()).items():
            try:
                record = decode_record(raw)
            except ValueError:
                continue  # never written by this version: left alone
            if record.parent != parent:
                continue
            out[parent] = record
            revisions[parent] = revision
        self._revisions = revisions
        return out

    async def reserved_ids(self) -> int:
        reserved_to, self._ids_revision = await self.coordinator.reserved_split_ids()
        return reserved_to

    async def save_record(self, record: SplitRecord) -> None:
        """Write ``record`` if its key is unchanged since this node last read or wrote it;
        ABORTED otherwise (another node moved the split on: re-read and decide again). A
        REQUESTED record raises the child id reservation in the same txn, if unchanged since
        :meth:`reserved_ids` read it (ABORTED otherwise: another split took ids meanwhile)."""
        expected = self._revisions.get(record.parent, 0)
        reserve = None
        if record.phase == SplitPhase.REQUESTED:
            reserve = (max(record.left, record.right), self._ids_revision)
        if not await self.coordinator.put_split(record.parent, encode_record(record),
                                                expected, reserve):
            self._revisions.pop(record.parent, None)
            raise Aborted(f"the split record of shard {record.parent} or the child id "
                          "reservation changed meanwhile")
        current = await self.coordinator.splits()
        entry = current.get(record.parent)
        if entry is not None:
            self._revisions[record.parent] = entry[1]
        if record.phase.finished:
            await self._prune(current)

    async def _prune(self, current: dict[int, tuple[bytes, int]]) -> None:
        aborted: list[tuple[int, int, int]] = []
        finished = 0
        for parent, (raw, revision) in sorted(current.items()):
            try:
                r = decode_record(raw)
            except ValueError:
                continue
            if r.phase.finished:
                finished += 1
                if r.phase == SplitPhase.ABORTED:
                    aborted.append((r.changed_at_ms, parent, revision))
        for _, parent, revision in sorted(aborted)[: max(0, finished - self.max_finished)]:
            await self.coordinator.delete_split(parent, revision)
            self._revisions.pop(parent, None)


__all__ = ["EtcdSplitCoordination", "decode_record", "encode_record"]
