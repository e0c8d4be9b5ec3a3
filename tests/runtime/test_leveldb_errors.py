"""The LevelDB adapter reports plyvel read failures as DiskError (the error type the shard
handles), never as plyvel's own exceptions."""

from __future__ import annotations

import plyvel
import pytest

from silo.runtime.disk import DiskError
from silo.runtime.leveldb import LevelDBSnapshot, LevelDBStore


class FailingReader:
    """Stands in for a plyvel DB or snapshot whose every read hits a corrupt block."""

    closed = False

    def get(self, key: bytes) -> bytes | None:
        raise plyvel.CorruptionError(b"Corruption: block checksum mismatch")

    def iterator(self, **kwargs: object):  # noqa: ANN201
        raise plyvel.IOError(b"IO error: read failed")


@pytest.mark.parametrize("read", ["get", "get_many", "scan", "reverse_scan"])
async def test_plyvel_read_errors_surface_as_disk_error(read: str) -> None:
    store = LevelDBStore(FailingReader(), "unused")  # type: ignore[arg-type]
    snapshot = LevelDBSnapshot(FailingReader())
    calls = {
        "get": lambda: store.get(b"k"),
        "get_many": lambda: store.get_many([b"k", b"l"]),
        "scan": lambda: store.scan(b"", None, limit=10),
        "reverse_scan": lambda: store.scan(b"", None, reverse=True),
    }
    with pytest.raises(DiskError):
        await calls[read]()
    if read in ("get", "scan"):
        with pytest.raises(DiskError):
            await (snapshot.get(b"k") if read == "get" else snapshot.scan(b"", None))

