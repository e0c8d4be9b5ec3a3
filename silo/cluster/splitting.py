"""Shard splits, the effects (DESIGN §6 "Split"): pause, close, clone, commit, open, clean up.

:class:`Splitter` runs one split at a time on the node that serves the parent, recording every
phase (:class:`~silo.cluster.split.SplitRecord`) through a :class:`SplitCoordination` before
acting on it, so that :meth:`Splitter.recover` can finish or undo whatever a crash interrupted:

- REQUESTED: the record exists; nothing else changed.
- PAUSED: requests for the parent get UNAVAILABLE (clients retry); the parent is then closed,
  which flushes every acknowledged write.
- CLONED: the parent's store is cloned into both children (hard links for LevelDB's table
  files) and each child gets its split marker (:mod:`silo.shard.cleanup`).
- COMMITTED: the shard-map compare-and-swap replaced the parent by its children. This is the
  commit point: before it, recovery undoes the split (clones destroyed, parent reopened intact);
  from it on, recovery finishes it. A crash between the swap and the record's update is told
  apart by the map itself (:func:`~silo.cluster.split.map_has_children`).
- CHILDREN_OPEN: both children serve their tenants; the parent's directory is deleted.
- CLEANUP_DONE: both children finished their cleanup (marker ``done``).

With coordination ``none`` the map file and a records file in the data directory are the
coordination (:class:`LocalSplitCoordination`). With coordination ``etcd``
(:class:`~silo.cluster.etcd_splits.EtcdSplitCoordination`) the node that owns the parent splits
it while holding off its reconcile loop (:meth:`~silo.cluster.reconcile.Reconciler.exclusive`);
the commit txn also takes both children's ownership keys, the children open on this node, and
then the parent's key is released. Whatever a crash interrupts, the loop finishes or undoes when
it next opens the parent or a child (:meth:`Splitter.prepare_open`); from then on the children
are ordinary shards that placement may move, and each child's cleanup, wherever it finishes,
is noted in the record (CLEANUP_DONE once both are).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Protocol

import trio

from silo.cluster.shard_map import ShardMap, tenant_hash
from silo.cluster.split import (
    SplitPhase,
    SplitRecord,
    decode_records,
    default_split_hash,
    encode_records,
    map_has_children,
    plan_split,
    split_map,
    tenant_position,
)
from silo.errors import Aborted, FailedPrecondition, InvalidArgument, SiloError, Unavailable
from silo.keys import parse
from silo.runtime import Runtime
from silo.shard.cleanup import SplitMarker, write_marker
from silo.shard.mirror import COUNTER_PREFIX

if TYPE_CHECKING:
    from silo.node import SiloNode

log = logging.getLogger("silo.cluster.splitting")

MAX_FINISHED_RECORDS = 64
"""Finished splits kept for ``split-status`` (the oldest finished are dropped first); records of
committed splits also keep the parent -> children lineage that forwards old shard ids."""


LINEAGE_WALK_MAX = 10_000
"""Most shards one lineage walk visits."""

class SplitCoordination(Protocol):
    """Where the shard map and split records live (the commit point of a split)."""

    async def read_map(self) -> ShardMap: ...

    async def commit_map(self, expected: ShardMap, new: ShardMap,
                         record: SplitRecord) -> ShardMap:
        """Install ``new`` (``record``'s committed map) if the map in force is still
        ``expected``; returns the map in force afterwards (the caller checks whether it holds
        the children)."""
        ...

    async def records(self) -> dict[int, SplitRecord]: ...

    async def reserved_ids(self) -> int:
        """The highest shard id any split has reserved for its children (0: none); a split
        plans its children above it (:func:`~silo.cluster.split.child_ids`)."""
        ...

    async def save_record(self, record: SplitRecord) -> None:
        """Durably store ``record`` (replacing the parent's previous one). A REQUESTED record
        also raises the reservation to its children, in the same atomic write, and fails with
        ABORTED when another split reserved ids since :meth:`reserved_ids` was read (its
        children could be the same)."""
        ...


class LocalSplitCoordination:
    """Coordination ``none``: ``DATA/shard_map`` and ``DATA/splits`` (atomic file replaces)."""

    def __init__(self, runtime: Runtime, data_dir: str) -> None:
        self._disk = runtime.disk
        self.map_path = f"{data_dir}/shard_map"
        self.records_path = f"{data_dir}/splits"

    async def read_map(self) -> ShardMap:
        raw = await self._disk.read_file(self.map_path)
        if raw is None:
            raise FailedPrecondition("no shard map in the data directory")
        return ShardMap.decode(raw)

    async def commit_map(self, expected: ShardMap, new: ShardMap,
                         record: SplitRecord) -> ShardMap:
        current = await self.read_map()
        if current != expected:
            return current
        await self._disk.write_file(self.map_path, new.encode())
        return new

    async def _read(self) -> tuple[dict[int, SplitRecord], int]:
        raw = await self._disk.read_file(self.records_path)
        return ({}, 0) if raw is None else decode_records(raw)

    async def records(self) -> dict[int, SplitRecord]:
        return (await self._read())[0]

    async def reserved_ids(self) -> int:
        return (await self._read())[1]

    async def save_record(self, record: SplitRecord) -> None:
        # One node and one split at a time (the splitter's lock): nothing races the read.
        records, reserved_to = await self._read()
        records[record.parent] = record
        if record.phase == SplitPhase.REQUESTED:
            reserved_to = max(reserved_to, record.left, record.right)
        finished = sorted((r for r in records.values() if r.phase.finished),
                          key=lambda r: (r.changed_at_ms, r.parent))
        for old in finished[: max(0, len(finished) - MAX_FINISHED_RECORDS)]:
            if old.phase == SplitPhase.ABORTED:
                del records[old.parent]
        await self._disk.write_file(self.records_path, encode_records(records, reserved_to))


@dataclass(frozen=True)
class ChildCleanup:
    shard_id: int
    stage: str
    deleted: int
    examined: int
    open: bool


@dataclass(frozen=True)
class SplitStatus:
    record: SplitRecord
    children: tuple[ChildCleanup, ...]


class Splitter:
    """Splits shards of one node (one split at a time) and recovers interrupted ones."""

    def __init__(self, node: SiloNode, coordination: SplitCoordination) -> None:
        self.node = node
        self.runtime = node.runtime
        self.coordination = coordination
        self._lock = trio.Lock()  # splits and record updates, one at a time
        self._splitting = False  # a split holds (or waits for) the lock
        self.lineage: dict[int, tuple[int, int]] = {}
        """Committed splits: parent id -> (left, right) (requests naming an old id are
        forwarded to the child that owns the tenant now)."""
        self.records: dict[int, SplitRecord] = {}
        self.on_phase: Callable[[SplitRecord], Awaitable[None] | None] = lambda record: None
        """Called after each phase is recorded (metrics; the simulator injects crashes)."""
        self.phase_counts: dict[str, int] = {}

    # -- records ----------------------------------------------------------------------------

    async def _save(self, record: SplitRecord) -> SplitRecord:
        await self.coordination.save_record(record)
        self.records[record.parent] = record
        if record.phase.committed:
            self.lineage[record.parent] = (record.left, record.right)
        self.phase_counts[record.phase.label] = self.phase_counts.get(record.phase.label, 0) + 1
        fields = {"parent": record.parent, "phase": record.phase.label,
                  "left": record.left, "right": record.right,
                  "split_hash": record.split_hash, "start": record.parent_start,
                  "end": record.parent_end, "map_version": record.map_version}
        if record.phase == SplitPhase.COMMITTED:
            fields["ranges"] = [[s.shard_id, s.start, s.end]
                                for s in self.node.shard_map.shards]
        self.runtime.events("split_phase", fields)
        out = self.on_phase(record)
        if out is not None:
            await out
        return record

    async def _advance(self, record: SplitRecord, phase: SplitPhase,
                       reason: str = "") -> SplitRecord:
        return await self._save(record.advance(phase, self.runtime.clock.now_ms(), reason))

    # -- the split --------------------------------------------------------------------------

    def default_point(self, parent: int) -> int:
        """The median tenant hash of the parent's jobs, from its per-tenant counters."""
        shard = self.node.shard(parent)
        rng = self.node.shard_map.get(parent)
        assert rng is not None
        by_string = self.runtime.faults.mutation("split-at-tenant-string")
        weights: dict[int, int] = {}
        for ck, n in shard.counters().items():
            if not ck.startswith(COUNTER_PREFIX):
                continue
            _, parts = parse(ck)
            if len(parts) == 4 and parts[1] == "status" and isinstance(parts[2], str):
                h = tenant_position(parts[2], by_string=by_string)
                weights[h] = weights.get(h, 0) + n
        return default_split_hash(rng, sorted(weights.items()))

    async def split(self, parent: int, at_hash: int | None = None) -> SplitRecord:
        """Split ``parent`` at ``at_hash`` (default: :meth:`default_point`); returns the record
        once both children serve (cleanup goes on in the background). INVALID_ARGUMENT for a
        hash outside the range or an unknown shard; FAILED_PRECONDITION while another split
        runs or when the parent is not served here."""
        if self._splitting:
            raise FailedPrecondition("another split is in progress on this node")
        self._splitting = True
        try:
            return await self._split_locked(parent, at_hash)
        finally:
            self._splitting = False

    async def _split_locked(self, parent: int, at_hash: int | None) -> SplitRecord:
        # A record update (a cleanup noted) may hold the lock for a moment: wait for it.
        async with self._lock:
            reconciler = self.node.reconciler
            if reconciler is None:
                return await self._split(parent, at_hash)
            async with reconciler.exclusive():
                # Cluster: the loop opens, closes, acquires and releases nothing meanwhile.
                self.node.shard_map = await self.coordination.read_map()
                await self.load()  # the records as etcd has them (their revisions too)
                try:
                    return await self._split(parent, at_hash)
                finally:
                    # Whatever the outcome, the loop takes it from here (it reopens an
                    # interrupted parent, or opens committed children, finishing the record).
                    self.node.resume(parent)

    async def _split(self, parent: int, at_hash: int | None) -> SplitRecord:
        if self.node.shard_map.get(parent) is None:
            raise InvalidArgument(f"shard {parent} is not in the shard map")
        if parent not in self.node.shards:
            raise FailedPrecondition(f"shard {parent} is not served by this node")
        h = self.default_point(parent) if at_hash is None else at_hash
        reserved_to = await self.coordination.reserved_ids()
        if self.runtime.faults.mutation("split-ignores-reserved-ids"):
            reserved_to = 0
        record = plan_split(self.node.shard_map, parent, h, self.runtime.clock.now_ms(),
                            reserved_to)
        record = await self._save(record)
        return await self._run(record)

    async def request(self, parent: int, at_hash: int | None = None) -> SplitRecord:
        """:meth:`split` in the node's own task group, so that a caller that gives up (an RPC
        deadline) never leaves a split half done; waits for its outcome."""
        outcome: list[SplitRecord | Exception] = []
        done = trio.Event()

        async def run() -> None:
            try:
                outcome.append(await self.split(parent, at_hash))
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                outcome.append(exc)
            finally:
                done.set()

        self.node.spawn(run)
        if self.node.closing:
            raise Unavailable("the node is shutting down")
        await done.wait()
        result = outcome[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def _run(self, record: SplitRecord) -> SplitRecord:
        node = self.node
        skip_pause = self.runtime.faults.mutation("skip-split-pause")
        try:
            if not skip_pause:
                node.pause(record.parent, "paused for a split")
            record = await self._advance(record, SplitPhase.PAUSED)
            if not skip_pause:
                await node.close_shard(record.parent)
            await self._clone(record)
            record = await self._advance(record, SplitPhase.CLONED)
            expected = node.shard_map
            new = split_map(expected, record)
            installed = await self.coordination.commit_map(expected, new, record)
        except Exception as exc:
            # Not on cancellation (the node is stopping or its process died): the record
            # stays where it is and the next open finishes or undoes the split.
            now = await self.coordination.read_map()
            if map_has_children(now, record):
                raise  # the swap took effect after all: the next open finishes the split
            await self._undo(record, f"{type(exc).__name__}: {exc}")
            raise Aborted(f"split of shard {record.parent} undone: {exc}") from exc
        if not map_has_children(installed, record):
            await self._undo(record, "the shard map changed meanwhile")
            raise Aborted(f"split of shard {record.parent} undone: the shard map changed")
        node.shard_map = installed
        record = await self._advance(record, SplitPhase.COMMITTED)
        return await self._open_children(record)

    async def _clone(self, record: SplitRecord) -> None:
        disk = self.runtime.disk
        src = self.node.shard_path(record.parent)
        for child in record.children:
            dst = self.node.shard_path(child.shard_id)
            await disk.destroy(dst)
            await disk.clone(src, dst)
            kv = await disk.open(dst)
            try:
                await write_marker(kv, SplitMarker(record.parent, child.start, child.end))
            finally:
                await kv.close()

    async def _undo(self, record: SplitRecord, reason: str) -> None:
        """Before the commit: discard the clones, serve the parent again, record ABORTED."""
        log.warning("split of shard %d undone: %s", record.parent, reason)
        for child in record.children:
            await self.runtime.disk.destroy(self.node.shard_path(child.shard_id))
        if (record.parent not in self.node.shards and not self.node.closing
                and not self.node.clustered):
            await self.node.open_shard(record.parent)  # in a cluster, the reconcile loop does
        self.node.resume(record.parent)
        await self._advance(record, SplitPhase.ABORTED, reason)

    async def _open_children(self, record: SplitRecord) -> SplitRecord:
        """Open the children of a committed split that are still shards of the map (a child
        split again since is not: its own split's children serve its range, and opening it
        would create an empty store answering for tenants it no longer holds), close and
        delete the parent, and see whether the cleanup is done."""
        async with trio.open_nursery() as nursery:  # both children load at once
            for child in record.children:
                if (child.shard_id not in self.node.shards
                        and self.node.shard_map.get(child.shard_id) is not None):
                    nursery.start_soon(partial(self.node.open_shard, child.shard_id,
                                               recover=False))
        # Closed since the pause; only the planted bug skip-split-pause still serves it here.
        await self.node.close_shard(record.parent)
        self.node.resume(record.parent)
        if record.phase == SplitPhase.COMMITTED:
            record = await self._advance(record, SplitPhase.CHILDREN_OPEN)
        await self.runtime.disk.destroy(self.node.shard_path(record.parent))
        reconciler = self.node.reconciler
        if reconciler is not None:
            # The children are owned (the commit took their keys) and open: give the parent up.
            # If this fails, the reconcile loop releases it (a key for a shard not in the map).
            try:
                await reconciler.coordinator.release(record.parent)
            except SiloError as exc:
                log.warning("split of shard %d: releasing the parent failed: %s",
                            record.parent, exc)
        self.check_cleanup(record.parent)
        return self.records[record.parent]

    # -- cleanup completion -----------------------------------------------------------------

    def on_cleanup_done(self, shard_id: int) -> None:
        """A child finished its cleanup: record CLEANUP_DONE once both have."""
        if self.node.clustered:
            self.node.spawn(self._note_cleaned, shard_id)
            return
        for parent, record in sorted(self.records.items()):
            if record.phase == SplitPhase.CHILDREN_OPEN and shard_id in (record.left,
                                                                          record.right):
                self.node.spawn(self._finish_cleanup, parent)

    def check_cleanup(self, parent: int) -> None:
        if self.node.clustered:
            record = self.records.get(parent)
            for child in () if record is None else (record.left, record.right):
                shard = self.node.shards.get(child)
                marker = None if shard is None else shard.split_marker()
                if marker is not None and marker.done:
                    self.node.spawn(self._note_cleaned, child)
            return
        self.node.spawn(self._finish_cleanup, parent)

    async def _note_cleaned(self, child: int) -> None:
        """Cluster: note in the record that ``child``'s cleanup finished (the other child may
        be served by another node); CLEANUP_DONE once both are noted. Retried a few times on a
        conflicting write or an unreachable etcd; a child that opens with its cleanup done
        notes it again."""
        for _attempt in range(5):
            try:
                async with self._lock:
                    await self.load()
                    for _parent, record in sorted(self.records.items()):
                        if (record.phase != SplitPhase.CHILDREN_OPEN
                                or child not in (record.left, record.right)):
                            continue
                        if child not in record.cleaned:
                            record = record.with_cleaned(child)
                            await self.coordination.save_record(record)
                            self.records[record.parent] = record
                        if set(record.cleaned) == {record.left, record.right}:
                            await self._advance(record, SplitPhase.CLEANUP_DONE)
                            if record.parent in self._children_of_open_splits():
                                # The parent was a child of an earlier split: its range is
                                # clean now, so that split's record can say so.
                                self.node.spawn(self._note_cleaned, record.parent)
                return
            except SiloError as exc:
                log.info("noting the cleanup of shard %d failed (%s); retrying", child, exc)
                await trio.sleep(0.5)

    async def prepare_open(self, shard_id: int) -> None:
        """Cluster: before the reconcile loop opens ``shard_id`` (holding its ownership key),
        finish or undo what a crash left of a split touching it:

        - ``shard_id`` is the parent of a split that never committed (the map still holds the
          parent): discard the clones, record ABORTED; the parent opens intact;
        - ``shard_id`` is a child of a committed split (the map holds the children): record
          COMMITTED if the crash came between the commit and the record, delete the parent's
          directory (closed before it was cloned; nobody serves it), record CHILDREN_OPEN.

        Runs under the loop's lock, like every split (:meth:`split` holds it throughout), so it
        never meets a split in progress on this node; a split elsewhere cannot commit without
        owning the parent (the commit txn checks)."""
        await self.load()
        touching = [r for _, r in sorted(self.records.items()) if not r.phase.finished
                    and shard_id in (r.parent, r.left, r.right)]
        if not touching:
            return
        current = await self.coordination.read_map()
        for record in touching:
            parent = record.parent
            has_children = map_has_children(current, record)
            if parent == shard_id and not has_children and not record.phase.committed:
                for child in record.children:
                    await self.runtime.disk.destroy(self.node.shard_path(child.shard_id))
                await self._advance(record, SplitPhase.ABORTED,
                                    "interrupted before the commit (undone by the parent's "
                                    "next owner)")
            elif shard_id in (record.left, record.right) and has_children:
                if not record.phase.committed:
                    if record.phase != SplitPhase.CLONED:
                        raise FailedPrecondition(
                            f"split of shard {parent}: the map holds its children but the "
                            f"record is only {record.phase.label}")
                    record = await self._advance(record, SplitPhase.COMMITTED)
                if record.phase == SplitPhase.COMMITTED:
                    await self.runtime.disk.destroy(self.node.shard_path(parent))
                    await self._advance(record, SplitPhase.CHILDREN_OPEN)

    def after_open(self, shard_id: int) -> None:
        """Cluster: a shard opened; if it is a split child whose cleanup already finished,
        make sure the record says so."""
        shard = self.node.shards.get(shard_id)
        marker = None if shard is None else shard.split_marker()
        if marker is not None and marker.done:
            self.node.spawn(self._note_cleaned, shard_id)

    def _children_of_open_splits(self) -> set[int]:
        return {c for _, r in sorted(self.records.items())
                if r.phase == SplitPhase.CHILDREN_OPEN for c in (r.left, r.right)}

    def _child_cleaned(self, record: SplitRecord, child: int) -> bool:
        """Whether ``child`` of ``record`` holds no out-of-range row any more: noted in the
        record, or its open shard's marker says done, or it was split in turn and that split's
        cleanup finished (each grandchild sweeps everything outside its own range, which lies
        inside the child's)."""
        if child in record.cleaned:
            return True
        shard = self.node.shards.get(child)
        marker = None if shard is None else shard.split_marker()
        if marker is not None:
            return marker.done
        later = self.records.get(child)
        return later is not None and later.phase == SplitPhase.CLEANUP_DONE

    async def _finish_cleanup(self, parent: int) -> None:
        async with self._lock:
            record = self.records.get(parent)
            if record is None or record.phase != SplitPhase.CHILDREN_OPEN:
                return
            if not all(self._child_cleaned(record, c) for c in (record.left, record.right)):
                return
            await self._advance(record, SplitPhase.CLEANUP_DONE)
        self.on_cleanup_done(parent)  # the parent may be a child of an earlier split

    # -- recovery ---------------------------------------------------------------------------

    async def load(self) -> None:
        self.records = await self.coordination.records()
        self.lineage = {p: (r.left, r.right) for p, r in sorted(self.records.items())
                        if r.phase.committed}

    async def recover_before_open(self) -> list[SplitRecord]:
        """Before the node opens its shards: undo every split interrupted before its commit
        (clones destroyed; the parent, still in the map, opens as usual) and note the
        committed ones (their children are in the map and open as usual). Returns the
        committed ones still to finish (:meth:`recover_after_open`)."""
        await self.load()
        todo: list[SplitRecord] = []
        for _parent, record in sorted(self.records.items()):
            if record.phase.finished:
                continue
            if not record.phase.committed:
                if map_has_children(self.node.shard_map, record):
                    # The swap happened; the crash came before the record said so.
                    if record.phase != SplitPhase.CLONED:
                        raise FailedPrecondition(
                            f"split of shard {record.parent}: the map holds its children but "
                            f"the record is only {record.phase.label}")
                    record = await self._advance(record, SplitPhase.COMMITTED)
                else:
                    for child in record.children:
                        await self.runtime.disk.destroy(self.node.shard_path(child.shard_id))
                    await self._advance(record, SplitPhase.ABORTED,
                                        "interrupted before the commit (node restarted)")
                    continue
            todo.append(record)
        return todo

    async def recover_after_open(self, todo: list[SplitRecord]) -> None:
        """Once the map's shards (children included) are open: finish the committed splits."""
        for record in todo:
            if self.runtime.faults.mutation("reopen-split-parent"):
                await self.node.open_shard(record.parent, recover=False)
            await self._open_children(self.records[record.parent])
        for parent, record in sorted(self.records.items()):
            if record.phase == SplitPhase.CHILDREN_OPEN:
                self.check_cleanup(parent)

    # -- status -----------------------------------------------------------------------------

    def status(self, parent: int | None = None) -> list[SplitStatus]:
        out = []
        for p, record in sorted(self.records.items()):
            if parent is not None and p != parent:
                continue
            children = []
            for child in (record.left, record.right):
                shard = self.node.shards.get(child)
                marker = None if shard is None else shard.split_marker()
                if marker is None:
                    finished = (record.phase == SplitPhase.CLEANUP_DONE
                                or child in record.cleaned)
                    stage = "done" if finished else (
                        "not started" if not record.phase.committed else "closed")
                    children.append(ChildCleanup(child, stage, 0, 0, shard is not None))
                else:
                    children.append(ChildCleanup(child, marker.stage, marker.deleted,
                                                 marker.examined, True))
            out.append(SplitStatus(record, tuple(children)))
        return out

    def forward(self, shard_id: int, tenant: str) -> int:
        """The shard serving ``tenant`` now, for a request that named ``shard_id`` (an old,
        split parent): the tenant's current shard when it descends from ``shard_id``."""
        current = self.node.shard_map.shard_for_hash(tenant_hash(tenant)).shard_id
        return current if self.descends(current, shard_id) else shard_id

    def descends(self, child: int, ancestor: int) -> bool:
        seen = 0
        frontier = [ancestor]
        while frontier and seen < 10_000:
            seen += 1
            s = frontier.pop()
            if s == child:
                return True
            frontier.extend(self.lineage.get(s, ()))
        return False

    async def refresh_lineage(self) -> None:
        """Learn committed splits recorded by any node (cluster: old ids are forwarded)."""
        try:
            records = await self.coordination.records()
        except SiloError as exc:
            log.info("reading the split records failed: %s", exc)
            return
        for parent, record in sorted(records.items()):
            if record.phase.committed:
                self.lineage[parent] = (record.left, record.right)

    def _lineage_of(self, shard_id: int) -> list[int]:
        """``shard_id`` and every shard descending from it by recorded splits (bounded to
        ``LINEAGE_WALK_MAX`` shards, so a corrupt lineage cannot loop forever)."""
        out: list[int] = []
        frontier = [shard_id]
        while frontier and len(out) < LINEAGE_WALK_MAX:
            s = frontier.pop()
            out.append(s)
            frontier.extend(self.lineage.get(s, ()))
        return out

    def leaves(self, shard_id: int) -> list[int]:
        """The shards ``shard_id`` split into, down to those not split (itself if never
        split), in id order."""
        return sorted(s for s in self._lineage_of(shard_id) if s not in self.lineage)

    def descendants(self, shard_id: int) -> list[int]:
        """Open shards descending from ``shard_id`` (itself when open), in id order."""
        return sorted(s for s in self._lineage_of(shard_id) if s in self.node.shards)

__all__ = [
    "ChildCleanup",
    "LocalSplitCoordination",
    "SplitCoordination",
    "SplitStatus",
    "Splitter",
]
