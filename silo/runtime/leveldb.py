"""The real :class:`~silo.runtime.disk.Disk`: LevelDB through plyvel.

Writes (with their fsync), opens, file operations and large reads run in a worker thread so the
trio thread never waits on them. Point reads of up to ``INLINE_READ_KEYS_MAX`` keys and scans
bounded to ``INLINE_SCAN_ROWS_MAX`` rows run on the calling thread: a LevelDB get served from the
memtable or block cache takes about a microsecond, while a hop to a worker thread and back costs
about 190 µs here (measured), which dominated every enqueue and lease. A read that misses the
cache stalls the trio thread for one block read.

Likewise a write of at most ``INLINE_WRITE_OPS_MAX`` operations made while no other write is in
progress is written and synced on the calling thread (the group-commit writer with one small
batch, i.e. a lightly loaded shard): the two thread wakeups of a hop cost more than the sync.
Under load the writer's groups grow past the limit and go to a worker thread again, so the
trio thread keeps serving calls while a large group syncs.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from typing import TypeVar

import plyvel
import trio

from silo.runtime.disk import DiskError, WriteBatch

T = TypeVar("T")

_LIMITER = trio.CapacityLimiter(8)

INLINE_READ_KEYS_MAX = 1024
"""Point reads of at most this many keys run on the calling thread."""
INLINE_SCAN_ROWS_MAX = 256
"""Scans with a ``limit`` of at most this many rows run on the calling thread."""
INLINE_WRITE_OPS_MAX = 16
"""Writes of at most this many operations run (and sync) on the calling thread when no other
write is in progress: a sequential caller's single enqueue, not a group of many."""


def _read(fn: Callable[..., T], *args: object) -> T:
    """Run a plyvel read; a failure (corruption, I/O error) surfaces as :class:`DiskError`."""
    try:
        return fn(*args)
    except plyvel.Error as exc:
        raise DiskError(f"read failed: {exc}") from exc


def _get_many_sync(reader, keys: list[bytes]) -> list[bytes | None]:  # noqa: ANN001
    get = reader.get
    return [get(k) for k in keys]


def _scan_sync(
    reader, start: bytes, end: bytes | None, reverse: bool, limit: int | None
) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    if limit is not None and limit <= 0:
        return out
    if reverse:
        # plyvel (<= 1.5.1) drops the first item of a reverse iterator when that key equals
        # ``start`` (its bound check is ``start >= key`` instead of ``start > key``), so reverse
        # scans leave the lower bound to us: stop at the first key below ``start``.
        it = reader.iterator(stop=end, reverse=True)
    else:
        it = reader.iterator(start=start, stop=end)
    try:
        for kv in it:
            if reverse and kv[0] < start:
                break
            out.append(kv)
            if limit is not None and len(out) >= limit:
                break
    finally:
        it.close()
    return out


def _count_sync(reader, start: bytes, end: bytes | None) -> int:
    it = reader.iterator(start=start, stop=end, include_value=False)
    try:
        return sum(1 for _ in it)
    finally:
        it.close()


class LevelDBSnapshot:
    def __init__(self, snap) -> None:
        self._snap = snap

    async def get(self, key: bytes) -> bytes | None:
        return await trio.to_thread.run_sync(_read, self._snap.get, key, limiter=_LIMITER)

    async def scan(
        self, start: bytes, end: bytes | None, *, reverse: bool = False, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        return await trio.to_thread.run_sync(
            _read, _scan_sync, self._snap, start, end, reverse, limit, limiter=_LIMITER
        )

    def close(self) -> None:
        self._snap.close()


class LevelDBStore:
    """An open LevelDB database."""

    def __init__(self, db: plyvel.DB, path: str) -> None:
        self._db = db
        self.path = path
        self._write_lock = threading.Lock()

    async def get(self, key: bytes) -> bytes | None:
        return _read(self._db.get, key)

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        if len(keys) <= INLINE_READ_KEYS_MAX:
            return _read(_get_many_sync, self._db, keys)
        return await trio.to_thread.run_sync(
            _read, _get_many_sync, self._db, keys, limiter=_LIMITER
        )

    async def scan(
        self, start: bytes, end: bytes | None, *, reverse: bool = False, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        if limit is not None and limit <= INLINE_SCAN_ROWS_MAX:
            return _read(_scan_sync, self._db, start, end, reverse, limit)
        return await trio.to_thread.run_sync(
            _read, _scan_sync, self._db, start, end, reverse, limit, limiter=_LIMITER
        )

    async def count_keys(self, start: bytes, end: bytes | None) -> int:
        return await trio.to_thread.run_sync(
            _read, _count_sync, self._db, start, end, limiter=_LIMITER
        )

    def _write_sync(self, ops: list[tuple[bytes, bytes | None]], sync: bool) -> None:
        try:
            with self._write_lock:
                wb = self._db.write_batch(sync=sync)
                for key, value in ops:
                    if value is None:
                        wb.delete(key)
                    else:
                        wb.put(key, value)
                wb.write()
        except plyvel.Error as exc:  # pragma: no cover - depends on a failing disk
            raise DiskError(str(exc)) from exc

    async def write(self, batch: WriteBatch, *, sync: bool = True) -> None:
        ops = list(batch.ops)
        if len(ops) <= INLINE_WRITE_OPS_MAX and not self._write_lock.locked():
            # A small write while no other write runs: write and sync on the calling thread,
            # sparing the two thread wakeups (there and back) that cost more than the sync
            # itself on a busy machine.
            self._write_sync(ops, sync)
            return
        await trio.to_thread.run_sync(self._write_sync, ops, sync, limiter=_LIMITER)

    def snapshot(self) -> LevelDBSnapshot:
        return LevelDBSnapshot(self._db.snapshot())

    async def compact_range(self, start: bytes | None, end: bytes | None) -> None:
        def _compact() -> None:
            try:
                self._db.compact_range(start=start, stop=end)
            except plyvel.Error as exc:  # pragma: no cover - depends on a failing disk
                raise DiskError(f"compaction failed: {exc}") from exc

        await trio.to_thread.run_sync(_compact, limiter=_LIMITER)

    async def close(self) -> None:
        """Close the database; shielded, so a cancelled caller still releases the LOCK."""
        if not self._db.closed:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._db.close, limiter=_LIMITER)


TABLE_SUFFIXES = (".ldb", ".sst")
"""LevelDB's table files: written once, never modified, deleted when compacted away."""


def clone_leveldb_dir(src_path: str, dst_path: str) -> dict[str, int]:
    """Clone a closed LevelDB directory (see :meth:`LevelDBDisk.clone`); returns how many
    files were ``linked`` and ``copied``."""
    if not os.path.isdir(src_path):
        raise DiskError(f"cannot clone {src_path}: no such store")
    if os.path.exists(dst_path):
        shutil.rmtree(dst_path)
    tmp = dst_path + ".clone-tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    counts = {"linked": 0, "copied": 0}
    try:
        for name in sorted(os.listdir(src_path)):
            src = os.path.join(src_path, name)
            dst = os.path.join(tmp, name)
            if name == "LOCK" or not os.path.isfile(src):
                continue
            if name.endswith(TABLE_SUFFIXES):
                try:
                    os.link(src, dst)
                    counts["linked"] += 1
                    continue
                except OSError:
                    pass
            shutil.copy2(src, dst)
            with open(dst, "rb+") as f:
                os.fsync(f.fileno())
            counts["copied"] += 1
        _fsync_dir(tmp)
        os.replace(tmp, dst_path)
        _fsync_dir(os.path.dirname(os.path.abspath(dst_path)))
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DiskError(f"cannot clone {src_path} to {dst_path}: {exc}") from exc
    return counts


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LevelDBDisk:
    """Stores are LevelDB directories on the local file system."""

    async def open(self, path: str) -> LevelDBStore:
        def _open() -> plyvel.DB:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            try:
                return plyvel.DB(path, create_if_missing=True)
            except plyvel.Error as exc:
                raise DiskError(f"cannot open {path}: {exc}") from exc

        db = await trio.to_thread.run_sync(_open, limiter=_LIMITER)
        return LevelDBStore(db, path)

    async def clone(self, src_path: str, dst_path: str) -> None:
        """Hard links for LevelDB's immutable table files (``.ldb``, ``.sst``), copies for the
        rest (log, MANIFEST, CURRENT, ...; the LOCK file is not carried over); the copy is
        fsynced, then its directory. Falls back to copying a table file when the file system
        cannot link it (another device)."""
        await trio.to_thread.run_sync(clone_leveldb_dir, src_path, dst_path, limiter=_LIMITER)

    async def destroy(self, path: str) -> None:
        await trio.to_thread.run_sync(
            lambda: shutil.rmtree(path, ignore_errors=True), limiter=_LIMITER
        )

    async def exists(self, path: str) -> bool:
        return await trio.to_thread.run_sync(os.path.exists, path, limiter=_LIMITER)

    async def makedirs(self, path: str) -> None:
        await trio.to_thread.run_sync(
            lambda: os.makedirs(path, exist_ok=True), limiter=_LIMITER
        )

    async def read_file(self, path: str) -> bytes | None:
        def _read() -> bytes | None:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return None

        return await trio.to_thread.run_sync(_read, limiter=_LIMITER)

    async def write_file(self, path: str, data: bytes) -> None:
        def _write() -> None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            # The rename is durable only once the directory entry is on disk.
            dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

        await trio.to_thread.run_sync(_write, limiter=_LIMITER)
