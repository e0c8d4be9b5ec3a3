"""The simulator's :class:`~silo.runtime.disk.Disk`: in-memory stores that crash like LevelDB.

:class:`MemoryDisk` satisfies the same contract as :class:`silo.runtime.leveldb.LevelDBDisk` (see
:mod:`silo.runtime.disk`; one conformance suite runs against both) and adds the crash model of
DESIGN §2, driven only by the ``random.Random`` handed in at construction:

- Every store keeps two images: the *visible* one (what reads see) and the *durable* one (what a
  crash leaves). Unsynced writes that have been applied sit, in order, in a per-store log between
  the two.
- ``write(batch, sync=True)`` is durable when it returns. Like LevelDB's write-ahead log, a synced
  write also makes every earlier unsynced write of that store durable.
- ``write(batch, sync=False)`` is visible at once; across a crash the unsynced log survives only
  as an in-order prefix whose length the rng picks.
- With ``write_latency > 0`` each write spends that long *in flight* (not yet visible) before it is
  applied. Writes to one store are serialised in FIFO order, as LevelDB's writer queue does, so at
  most one write per store is in flight. If the disk crashes meanwhile, the in-flight batch is
  treated as the next entry of the unsynced log: it survives whole or not at all, and only if
  every earlier unsynced write survives too. The writer then gets :class:`DiskError`.
- :meth:`MemoryDisk.crash` loses everything that is not durable, makes every store handle (and its
  snapshots) opened before the crash unusable (``DiskError("store closed by crash")``), and leaves
  the disk ready to be opened again, as a restarted process would find it.
- A clean :meth:`MemoryStore.close` makes everything written so far durable.
- Files written with ``write_file`` and directories made with ``makedirs`` are always durable.
- :meth:`MemoryDisk.host_view` makes the disk a shared data root: each host gets a view with its
  own crash rng, faults and latency over the same stores; a store is open at most once across
  the views (LevelDB's LOCK), and a view's crash loses only its own stores' unsynced writes.
- When ``faults.fire("disk.write.error")`` is true at the start of a store write, the write raises
  :class:`DiskError` and changes nothing.

Every async operation starts with a trio checkpoint (a cancelled caller gets ``Cancelled`` and
nothing happens), mirroring the real adapter, where each call is a hop to a worker thread. Once an
operation has started it is not cancellable: a write in flight completes (or is resolved by a
crash), and ``close`` always closes. No threads, no wall time, no module-level randomness.

Paths are plain strings normalised with :func:`posixpath.normpath`; a path *exists* when a store,
file or directory is at it or anywhere beneath it.
"""

from __future__ import annotations

import posixpath
import random
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

import trio
from sortedcontainers import SortedDict, SortedSet

from silo.runtime.disk import DiskError, WriteBatch
from silo.runtime.faults import Faults

Ops = list[tuple[bytes, bytes | None]]

_CRASHED = "store closed by crash"


def _norm(path: str) -> str:
    if not isinstance(path, str):
        raise TypeError(f"path must be str, got {type(path).__name__}")
    return posixpath.normpath(path)


def _check_key(key: object) -> None:
    if not isinstance(key, bytes):
        raise TypeError(f"key must be bytes, got {type(key).__name__}")


def _validated_ops(batch: WriteBatch) -> Ops:
    """A private copy of the batch's operations, type-checked like plyvel does."""
    ops: Ops = list(batch.ops)
    for key, value in ops:
        _check_key(key)
        if value is not None and not isinstance(value, bytes):
            raise TypeError(f"value must be bytes, got {type(value).__name__}")
    return ops


def _apply(image: SortedDict, ops: Iterable[tuple[bytes, bytes | None]]) -> None:
    for key, value in ops:
        if value is None:
            image.pop(key, None)
        else:
            image[key] = value


def _scan(
    image: SortedDict, start: bytes, end: bytes | None, reverse: bool, limit: int | None
) -> list[tuple[bytes, bytes]]:
    _check_key(start)
    if end is not None:
        _check_key(end)
    if limit is not None and limit <= 0:
        return []
    keys: Iterator[bytes] = image.irange(start, end, inclusive=(True, False), reverse=reverse)
    if limit is not None:
        keys = islice(keys, limit)
    return [(key, image[key]) for key in keys]


def _subtree(keys: SortedDict | SortedSet, path: str) -> list[str]:
    """Keys equal to ``path`` or beneath it (``path + "/..."``), in sorted order."""
    out = [path] if path in keys else []
    if path == "/":
        out.extend(k for k in keys.irange("/", None) if k != "/")
    else:
        # Every string starting with "p/" lies in ["p/", "p0"): "0" is the character after "/".
        out.extend(keys.irange(path + "/", path + "0", inclusive=(True, False)))
    return out


class _InFlight:
    """The one write of a store that has started but not yet been applied."""

    __slots__ = ("ops", "sync", "scope")

    def __init__(self, ops: Ops, sync: bool, scope: trio.CancelScope) -> None:
        self.ops = ops
        self.sync = sync
        self.scope = scope


class MemorySnapshot:
    """A frozen view of a :class:`MemoryStore`.

    Shares the store's visible image copy-on-write, so taking one is O(1). Reads raise
    :class:`DiskError` once the snapshot or its store is closed, or the disk crashed.
    """

    def __init__(self, store: MemoryStore, image: SortedDict) -> None:
        self._store = store
        self._image = image
        self._closed = False

    def _check_usable(self) -> None:
        self._store._check_usable()
        if self._closed:
            raise DiskError("snapshot is closed")

    async def get(self, key: bytes) -> bytes | None:
        await trio.lowlevel.checkpoint()
        self._check_usable()
        _check_key(key)
        value: bytes | None = self._image.get(key)
        return value

    async def scan(
        self, start: bytes, end: bytes | None, *, reverse: bool = False, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        await trio.lowlevel.checkpoint()
        self._check_usable()
        return _scan(self._image, start, end, reverse, limit)

    def close(self) -> None:
        """Release the snapshot (idempotent)."""
        self._closed = True


class MemoryStore:
    """One open in-memory store; obtained from :meth:`MemoryDisk.open`.

    After a clean :meth:`close` every call raises ``DiskError("store is closed")`` (``close``
    itself is idempotent); after :meth:`MemoryDisk.crash` every call, ``close`` included, raises
    ``DiskError("store closed by crash")``.
    """

    def __init__(self, disk: MemoryDisk, path: str, durable: SortedDict) -> None:
        self._disk = disk
        self.path = path
        self._durable = durable  # the disk's durable image of this path, updated in place
        self._visible: SortedDict = durable.copy()
        self._visible_shared = False  # a snapshot holds self._visible: copy before mutating
        self._log: list[Ops] = []  # applied but unsynced batches, oldest first
        self._inflight: _InFlight | None = None
        self._write_lock = trio.Lock()
        self._state = "open"  # "open" | "closed" | "crashed"

    # -- state -------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._state == "crashed":
            raise DiskError(_CRASHED)
        if self._state == "closed":
            raise DiskError(f"store is closed: {self.path}")

    @property
    def closed(self) -> bool:
        """True after a clean close or a crash."""
        return self._state != "open"

    # -- reads -------------------------------------------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        await trio.lowlevel.checkpoint()
        self._check_usable()
        _check_key(key)
        value: bytes | None = self._visible.get(key)
        return value

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        await trio.lowlevel.checkpoint()
        self._check_usable()
        for key in keys:
            _check_key(key)
        return [self._visible.get(key) for key in keys]

    async def scan(
        self, start: bytes, end: bytes | None, *, reverse: bool = False, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        await trio.lowlevel.checkpoint()
        self._check_usable()
        return _scan(self._visible, start, end, reverse, limit)

    async def count_keys(self, start: bytes, end: bytes | None) -> int:
        await trio.lowlevel.checkpoint()
        self._check_usable()
        _check_key(start)
        if end is not None:
            _check_key(end)
        return sum(1 for _ in self._visible.irange(start, end, inclusive=(True, False)))

    async def compact_range(self, start: bytes | None, end: bytes | None) -> None:
        """Nothing to reclaim in memory: a checkpoint, then the usual checks."""
        await trio.lowlevel.checkpoint()
        self._check_usable()

    def snapshot(self) -> MemorySnapshot:
        self._check_usable()
        self._visible_shared = True
        return MemorySnapshot(self, self._visible)

    # -- writes ------------------------------------------------------------------------------

    async def write(self, batch: WriteBatch, *, sync: bool = True) -> None:
        """Apply ``batch`` atomically; durable on return when ``sync``.

        Raises :class:`DiskError` (changing nothing) on an injected write error, on a closed or
        crashed store, and when the disk crashes while this write is in flight (the crash then
        decided whether the batch survives).

        ``MemoryDisk.before_write``, when set, is called (synchronously) first: the simulator
        uses it to crash or stop the host at the very moment a write begins.
        """
        hook = self._disk.before_write
        if hook is not None:
            hook(self.path)
        await trio.lowlevel.checkpoint()
        if self._disk.faults.buggify("disk.write.delay"):
            await trio.sleep(max(self._disk.write_latency, 0.001) * 20)  # nothing happened yet
        self._check_usable()
        ops = _validated_ops(batch)
        if self._disk.faults.fire("disk.write.error"):
            raise DiskError(f"injected write error on {self.path}")
        latency = self._disk.write_latency
        if latency <= 0:
            self._apply_write(ops, sync)
            return
        async with self._write_lock:  # cancellable while queued: nothing has happened yet
            self._check_usable()
            with trio.CancelScope(shield=True) as scope:  # only a crash cuts the flight short
                self._inflight = _InFlight(ops, sync, scope)
                try:
                    await trio.sleep(latency)
                finally:
                    if self._inflight is not None and self._inflight.scope is scope:
                        self._inflight = None
            self._check_usable()
            self._apply_write(ops, sync)

    def _apply_write(self, ops: Ops, sync: bool) -> None:
        if self._visible_shared:
            self._visible = self._visible.copy()
            self._visible_shared = False
        _apply(self._visible, ops)
        if sync:
            for pending in self._log:
                _apply(self._durable, pending)
            self._log.clear()
            _apply(self._durable, ops)
        else:
            self._log.append(ops)

    async def close(self) -> None:
        """Close cleanly: waits for queued writes, then makes everything durable.

        Not cancellable (a cancelled caller still closes the store). Idempotent after a clean
        close; raises ``DiskError("store closed by crash")`` after a crash.
        """
        if self._state == "closed":
            return
        self._check_usable()
        with trio.CancelScope(shield=True):
            async with self._write_lock:
                if self._state == "closed":
                    return
                self._check_usable()
                for pending in self._log:
                    _apply(self._durable, pending)
                self._log.clear()
                self._state = "closed"
                self._visible = SortedDict()
                self._visible_shared = False
                self._disk._release(self)

    # -- crash -------------------------------------------------------------------------------

    def _crash(self, rng: random.Random) -> tuple[int, int]:
        """Resolve non-durable state as a crash would; returns ``(kept, pending)`` batch counts."""
        pending = list(self._log)
        if self._inflight is not None:
            pending.append(self._inflight.ops)
            self._inflight.scope.cancel()
            self._inflight = None
        kept = rng.randint(0, len(pending)) if pending else 0
        for ops in pending[:kept]:
            _apply(self._durable, ops)
        self._log.clear()
        self._visible = SortedDict()
        self._visible_shared = False
        self._state = "crashed"
        return kept, len(pending)


class MemoryDisk:
    """An in-memory :class:`~silo.runtime.disk.Disk` with a seeded LevelDB-like crash model.

    ``rng`` decides every crash outcome (seed it from the scenario); ``faults`` supplies
    ``disk.write.error``; ``write_latency`` (seconds of trio time) is how long each store write
    stays in flight before it is applied (0: applied immediately, never in flight).
    """

    def __init__(
        self, rng: random.Random, faults: Faults | None = None, *, write_latency: float = 0.0
    ) -> None:
        self._rng = rng
        self.faults = faults if faults is not None else Faults()
        self.write_latency = write_latency
        self._images: SortedDict = SortedDict()  # path -> durable SortedDict image
        self._files: SortedDict = SortedDict()  # path -> bytes
        self._dirs: SortedSet = SortedSet()
        self._open: dict[str, MemoryStore] = {}  # insertion order: deterministic crash order
        self._locks: dict[str, MemoryStore] = self._open
        """Every store open on the shared root, by any host's view (LevelDB's LOCK file): the
        same dict as ``_open`` for a disk of its own, shared by the views of :meth:`host_view`."""
        self.crashes = 0
        self.on_open: Callable[[str], None] | None = None
        """Called with the path when this disk opens a store, before the lock check (the
        simulator's ownership checks)."""
        self.on_opened: Callable[[str], None] | None = None
        """Called with the path once this disk has opened a store."""
        self.on_close: Callable[[str], None] | None = None
        """Called with the path once a store this disk opened is closed or crashed."""
        self.before_write: Callable[[str], None] | None = None
        """Called with the store path at the start of every store write (simulation hook)."""

    # -- helpers -----------------------------------------------------------------------------

    def _release(self, store: MemoryStore) -> None:
        if self._open.get(store.path) is store:
            del self._open[store.path]
        if self._locks.get(store.path) is store:
            del self._locks[store.path]
        if self.on_close is not None:
            self.on_close(store.path)

    def host_view(
        self, rng: random.Random, faults: Faults | None = None, *, write_latency: float = 0.0
    ) -> MemoryDisk:
        """One host's view of this disk as a shared data root (DESIGN §6: storage follows the
        shard; any node opens a shard's directory from the shared root).

        Every view reads and writes the same stores, files and directories, and one store is
        open at most once across all views (LevelDB's LOCK: a second open fails). Each view
        has its own crash rng, faults, write latency and hooks, and :meth:`crash` of a view
        loses only the unsynced writes of the stores that view opened: the other hosts' stores
        stay open and keep what they wrote."""
        view = MemoryDisk(rng, faults, write_latency=write_latency)
        view._images = self._images
        view._files = self._files
        view._dirs = self._dirs
        view._locks = self._locks
        return view

    def _has_children(self, path: str) -> bool:
        return any(
            k != path
            for keys in (self._images, self._files, self._dirs)
            for k in _subtree(keys, path)
        )

    def _is_dir(self, path: str) -> bool:
        return path in self._images or path in self._dirs or self._has_children(path)

    def _check_no_file_ancestor(self, path: str) -> None:
        parent = posixpath.dirname(path)
        while parent and parent not in (".", "/"):
            if parent in self._files:
                raise DiskError(f"not a directory: {parent}")
            parent = posixpath.dirname(parent)

    def _open_under(self, path: str) -> list[str]:
        return [p for p in self._locks if p == path or p.startswith(path.rstrip("/") + "/")]

    # -- Disk protocol -----------------------------------------------------------------------

    async def open(self, path: str) -> MemoryStore:
        """Open (creating if missing) the store at ``path``.

        Raises :class:`DiskError` if it is already open (LevelDB's lock) or a file is in the way.
        """
        await trio.lowlevel.checkpoint()
        p = _norm(path)
        if self.on_open is not None:
            self.on_open(p)
        if p in self._locks:
            raise DiskError(f"cannot open {p}: lock already held")
        if p in self._files:
            raise DiskError(f"cannot open {p}: is a file")
        self._check_no_file_ancestor(p)
        image = self._images.get(p)
        if image is None:
            image = self._images[p] = SortedDict()
        store = MemoryStore(self, p, image)
        self._open[p] = store
        self._locks[p] = store
        if self.on_opened is not None:
            self.on_opened(p)
        return store

    async def clone(self, src_path: str, dst_path: str) -> None:
        """Replace ``dst_path`` with a copy of the *durable* state at and beneath ``src_path``.

        Unsynced writes of an open source are not copied. Raises :class:`DiskError` when there is
        no store at ``src_path``, when the paths overlap, or when a store under ``dst_path`` is
        open.
        """
        await trio.lowlevel.checkpoint()
        src, dst = _norm(src_path), _norm(dst_path)
        if src not in self._images:
            raise DiskError(f"cannot clone {src}: no such store")
        if src == dst or dst.startswith(src + "/") or src.startswith(dst + "/"):
            raise DiskError(f"cannot clone {src} onto overlapping {dst}")
        if self._open_under(dst):
            raise DiskError(f"cannot clone onto {dst}: a store there is open")
        self._check_no_file_ancestor(dst)
        self._remove_subtree(dst)
        for p in _subtree(self._images, src):
            self._images[dst + p[len(src) :]] = self._images[p].copy()
        for p in _subtree(self._files, src):
            self._files[dst + p[len(src) :]] = self._files[p]
        for p in _subtree(self._dirs, src):
            self._dirs.add(dst + p[len(src) :])

    def _remove_subtree(self, path: str) -> None:
        for keys in (self._images, self._files):
            for p in _subtree(keys, path):
                del keys[p]
        for p in _subtree(self._dirs, path):
            self._dirs.discard(p)

    async def destroy(self, path: str) -> None:
        """Remove the store, files and directories at and beneath ``path`` (no error if absent).

        Raises :class:`DiskError` if a store there is open.
        """
        await trio.lowlevel.checkpoint()
        p = _norm(path)
        if self._open_under(p):
            raise DiskError(f"cannot destroy {p}: a store there is open")
        self._remove_subtree(p)

    async def exists(self, path: str) -> bool:
        await trio.lowlevel.checkpoint()
        p = _norm(path)
        return p in (".", "/") or p in self._files or self._is_dir(p)

    async def makedirs(self, path: str) -> None:
        """Create a directory (and implicitly its parents); fine if it exists."""
        await trio.lowlevel.checkpoint()
        p = _norm(path)
        if p in self._files:
            raise DiskError(f"cannot makedirs {p}: is a file")
        self._check_no_file_ancestor(p)
        if p not in (".", "/"):
            self._dirs.add(p)

    async def read_file(self, path: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        p = _norm(path)
        data: bytes | None = self._files.get(p)
        if data is None and self._is_dir(p):
            raise DiskError(f"cannot read {p}: is a directory")
        return data

    async def write_file(self, path: str, data: bytes) -> None:
        """Atomically replace a small file; durable on return (never lost by a crash)."""
        await trio.lowlevel.checkpoint()
        p = _norm(path)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        if self._is_dir(p):
            raise DiskError(f"cannot write {p}: is a directory")
        self._check_no_file_ancestor(p)
        self._files[p] = bytes(data)

    # -- simulation controls -----------------------------------------------------------------

    def crash(self) -> dict[str, tuple[int, int]]:
        """Crash the host that owns this disk; synchronous, at the current instant.

        Every open store loses what is not durable: of its unsynced writes (plus the write in
        flight, if any, as the last entry) an in-order prefix chosen by the rng survives. Every
        handle opened before the crash, and its snapshots, then raises
        ``DiskError("store closed by crash")``; a writer in flight wakes up with that error. The
        paths can be opened again at once. Returns ``{path: (batches kept, batches pending)}``
        for each store that was open, in the order they were opened.
        """
        report: dict[str, tuple[int, int]] = {}
        crashed = list(self._open.items())
        for path, store in crashed:
            report[path] = store._crash(self._rng)
            if self._locks.get(path) is store:
                del self._locks[path]
        self._open.clear()
        self.crashes += 1
        if self.on_close is not None:
            for path, _ in crashed:
                self.on_close(path)
        return report

    def durable_file(self, path: str) -> bytes | None:
        """The contents of a file written with ``write_file`` (files are always durable)."""
        data: bytes | None = self._files.get(_norm(path))
        return data

    def durable_items(self, path: str) -> list[tuple[bytes, bytes]]:
        """The durable contents of the store at ``path`` (what a crash now would leave)."""
        image = self._images.get(_norm(path))
        if image is None:
            raise DiskError(f"no such store: {path}")
        return list(image.items())

    def durable_get(self, path: str, key: bytes) -> bytes | None:
        """The durable value of ``key`` in the store at ``path`` (None when absent or no store).

        Used by the simulator's checkers to probe what a crash now would leave, without I/O.
        """
        image = self._images.get(_norm(path))
        if image is None:
            return None
        value: bytes | None = image.get(key)
        return value

    def durable_scan(
        self, path: str, start: bytes, end: bytes | None
    ) -> list[tuple[bytes, bytes]]:
        """Durable pairs with ``start <= key < end`` of the store at ``path`` ([] if none)."""
        image = self._images.get(_norm(path))
        if image is None:
            return []
        return _scan(image, start, end, False, None)

    def store_paths(self) -> list[str]:
        """Paths of every store the disk holds (open or not), sorted."""
        return list(self._images)

    def open_paths(self) -> list[str]:
        """Paths of the stores currently open, in the order they were opened."""
        return list(self._open)
