"""Storage seam: ordered key-value stores opened by path.

The contract both implementations (LevelDB via plyvel, and the simulator's in-memory store)
satisfy, checked by one conformance suite:

- keys and values are ``bytes``; keys are ordered bytewise;
- ``scan(start, end)`` returns pairs with ``start <= key < end`` (``end=None``: no upper bound),
  in ascending order, or descending with ``reverse=True``, at most ``limit`` of them;
- ``write(batch)`` applies every put and delete of the batch or none of them; with ``sync=True``
  the batch is durable when the call returns;
- a failed write raises :class:`DiskError` and leaves the store exactly as it was;
- a :class:`Snapshot` sees the store as it was when taken, whatever is written afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class DiskError(Exception):
    """An I/O error from the store. The failed operation changed nothing."""


class WriteBatch:
    """An ordered list of puts and deletes applied atomically. Later operations on a key win."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[tuple[bytes, bytes | None]] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append((key, value))

    def delete(self, key: bytes) -> None:
        self.ops.append((key, None))

    def extend(self, other: WriteBatch) -> None:
        self.ops.extend(other.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[tuple[bytes, bytes | None]]:
        return iter(self.ops)


class Snapshot(Protocol):
    """A frozen, consistent view of a store."""

    async def get(self, key: bytes) -> bytes | None: ...

    async def scan(
        self, start: bytes, end: bytes | None, *, reverse: bool = False, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]: ...

    def close(self) -> None: ...


class KVStore(Protocol):
    """One open ordered store."""

    async def get(self, key: bytes) -> bytes | None: ...

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """Values of several keys (None where absent), read in one go."""
        ...

    async def scan(
        self, start: bytes, end: bytes | None, *, reverse: bool = False, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]: ...

    async def count_keys(self, start: bytes, end: bytes | None) -> int:
        """How many keys ``[start, end)`` holds (values are not read)."""
        ...

    async def write(self, batch: WriteBatch, *, sync: bool = True) -> None: ...

    def snapshot(self) -> Snapshot: ...

    async def compact_range(self, start: bytes | None, end: bytes | None) -> None:
        """Ask the store to compact ``[start, end)`` (None: unbounded), reclaiming the space of
        deleted rows. Changes no contents; may be a no-op."""
        ...

    async def close(self) -> None: ...


class Disk(Protocol):
    """Opens, copies and removes stores by path."""

    async def open(self, path: str) -> KVStore:
        """Open (creating if missing) the store at ``path``."""
        ...

    async def clone(self, src_path: str, dst_path: str) -> None:
        """Copy the durable contents of a closed store to a new path (replacing whatever is
        there). LevelDB's immutable table files may be shared with the source (hard links):
        neither store ever modifies them in place."""
        ...

    async def destroy(self, path: str) -> None:
        """Remove the store at ``path`` and everything in it (no error if absent)."""
        ...

    async def exists(self, path: str) -> bool: ...

    async def makedirs(self, path: str) -> None: ...

    async def read_file(self, path: str) -> bytes | None:
        """Contents of a small metadata file, or None when absent."""
        ...

    async def write_file(self, path: str, data: bytes) -> None:
        """Atomically replace a small metadata file (durable on return)."""
        ...
