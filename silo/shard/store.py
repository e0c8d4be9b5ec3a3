"""The shard's view of its store: pending-write overlay and the group-commit writer.

A mutation computes its batch under the shard lock and hands it to :meth:`ShardStore.submit`,
which makes the batch visible to later reads at once (through the overlay) and queues it for the
writer. The writer takes every queued batch, writes them as one synced write, and only then
completes their tickets, so a caller that awaits its ticket replies only after its batch is
durable. Groups are written in submission order, so a completed ticket implies every earlier
batch is durable too.

If a write fails, that group and every batch queued behind it fail (they were computed on top of
it), the overlay is dropped, and the store is marked broken; the shard rebuilds its in-memory
state from disk before the next mutation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from silo.errors import Unavailable
from silo.runtime.disk import DiskError, KVStore, WriteBatch
from silo.runtime.faults import Faults
from silo.shard.poison import log_poison

Event = tuple[str, dict[str, Any]]


class Ticket:
    """Completion of one submitted batch: ``await ticket.wait()`` returns once it is durable."""

    __slots__ = ("seq", "_done", "_error")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self._done = trio.Event()
        self._error: Exception | None = None

    def _complete(self, error: Exception | None = None) -> None:
        self._error = error
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> None:
        await self._done.wait()
        if self._error is not None:
            raise self._error


@dataclass
class _Pending:
    ticket: Ticket
    ops: list[tuple[bytes, bytes | None]]
    events: list[Event]
    on_durable: list[Callable[[], None]] = field(default_factory=list)


def merge_scan(
    base: list[tuple[bytes, bytes]],
    overlay: dict[bytes, bytes | None],
    start: bytes,
    end: bytes | None,
    reverse: bool,
    limit: int | None,
    base_limit: int | None = None,
) -> list[tuple[bytes, bytes]]:
    """Merge scan results from a base layer with newer overlay writes (``None`` = deleted).

    ``base`` is the base layer's scan of the same range, in the same direction, fetched with
    ``base_limit`` (``None``: the whole range). When the base returned ``base_limit`` rows it
    may have been cut off, and the result stops at its last key (keys past it are unknown);
    otherwise the base is the whole range and every overlay write in the range counts. The
    result has ``min(limit, rows in range)`` rows whenever ``base_limit >= limit`` plus the
    overlay's entries in the range.
    """
    in_range = {
        k: v for k, v in overlay.items() if k >= start and (end is None or k < end)
    }
    truncated = base_limit is not None and len(base) >= base_limit
    if not in_range:
        return base if limit is None else base[:limit]
    merged: dict[bytes, bytes] = {k: v for k, v in base if k not in in_range}
    for k, v in in_range.items():
        if v is not None:
            merged[k] = v
    keys = sorted(merged, reverse=reverse)
    if truncated and base:
        last = base[-1][0]
        keys = [k for k in keys if (k >= last if reverse else k <= last)]
    if limit is not None:
        keys = keys[:limit]
    return [(k, merged[k]) for k in keys]


SCAN_ATTEMPTS = 4
"""Limited scans retried with a larger base limit before falling back to a full scan."""


class ShardStore:
    """An open :class:`KVStore` plus the overlay of batches not yet durable."""

    def __init__(self, kv: KVStore, faults: Faults, emit: Callable[[str, dict[str, Any]], None]):
        self._kv = kv
        self._faults = faults
        self._emit = emit
        self._overlay: dict[bytes, tuple[int, bytes | None]] = {}
        self._queue: list[_Pending] = []
        self._wakeup = trio.Event()
        self._seq = 0
        self._durable_seq = 0
        self._durable_changed = trio.Event()
        self._writing = False
        self.broken = False
        self.closed = False
        self.synced_writes = 0
        self.groups_committed = 0
        self.batches_committed = 0
        self.poison_items = 0
        """Unexpected errors the writer survived (a group that could not be written, an event
        sink that raised)."""
        self.shard_id = 0
        """For log lines only."""

    @property
    def kv(self) -> KVStore:
        return self._kv

    # -- reads ------------------------------------------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        hit = self._overlay.get(key)
        if hit is not None:
            return hit[1]
        return await self._kv.get(key)

    async def get_many(self, ks: list[bytes]) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(ks)
        missing: list[int] = []
        for i, k in enumerate(ks):
            hit = self._overlay.get(k)
            if hit is not None:
                out[i] = hit[1]
            else:
                missing.append(i)
        if missing:
            values = await self._kv.get_many([ks[i] for i in missing])
            for i, v in zip(missing, values, strict=True):
                # A batch submitted while the read ran is newer than what the disk returned.
                hit = self._overlay.get(ks[i])
                out[i] = hit[1] if hit is not None else v
        return out

    async def scan(
        self, start: bytes, end: bytes | None, *, reverse: bool = False, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        """The rows of ``[start, end)`` as of now (durable rows plus pending batches), in key
        order (descending when ``reverse``): exactly ``min(limit, rows in range)`` of them."""
        overlay: dict[bytes, bytes | None] = {}
        for attempt in range(SCAN_ATTEMPTS + 1):
            # The overlay may change while the base scan runs; newer entries win, and keys
            # written (or made durable) meanwhile stay in the local copy, which still holds
            # their newest value.
            overlay.update({k: v for k, (_, v) in self._overlay.items()})
            extra = sum(1 for k in overlay if k >= start and (end is None or k < end))
            base_limit = None if limit is None or attempt == SCAN_ATTEMPTS else limit + extra
            base = await self._kv.scan(start, end, reverse=reverse, limit=base_limit)
            overlay.update({k: v for k, (_, v) in self._overlay.items()})
            rows = merge_scan(base, overlay, start, end, reverse, limit, base_limit)
            if base_limit is None or len(base) < base_limit or len(rows) >= (limit or 0):
                return rows
        raise AssertionError("unreachable: the last attempt scans the whole range")

    def pending(self, start: bytes, end: bytes) -> dict[bytes, tuple[int, bytes | None]]:
        """The writes in ``[start, end)`` of batches not yet durable: key -> (batch sequence
        number, value or None for a delete), newest per key."""
        return {k: hit for k, hit in self._overlay.items() if start <= k < end}

    def pending_seq(self, k: bytes) -> int | None:
        """The batch not yet durable that last wrote ``k`` (None: none did)."""
        hit = self._overlay.get(k)
        return None if hit is None else hit[0]

    # -- writes -----------------------------------------------------------------------------

    def submit(
        self,
        ops: list[tuple[bytes, bytes | None]],
        events: list[Event],
        *,
        ack_before_durable: bool = False,
    ) -> Ticket:
        """Queue a batch; it is visible to reads at once and durable when its ticket completes."""
        if self.broken or self.closed:
            raise Unavailable("shard store is not accepting writes")
        self._seq += 1
        ticket = Ticket(self._seq)
        for k, v in ops:
            self._overlay[k] = (self._seq, v)
        self._queue.append(_Pending(ticket, ops, events))
        self._wakeup.set()
        if ack_before_durable:
            # Planted bug for the simulator: the caller is answered before the write.
            ticket._complete()
        return ticket

    @property
    def last_submitted_seq(self) -> int:
        return self._seq

    @property
    def durable_seq(self) -> int:
        """The last batch known to be durable (every earlier one is too). While the store is
        :attr:`broken`, every later batch failed."""
        return self._durable_seq

    async def wait_durable(self, seq: int) -> None:
        """Return once every batch up to ``seq`` is durable (or raise if the store broke)."""
        while self._durable_seq < seq:
            if self.broken:
                raise Unavailable("shard store write failed")
            if self.closed and not self._queue:
                raise Unavailable("shard closed")
            await self._durable_changed.wait()

    def _signal_durable(self) -> None:
        self._durable_changed.set()
        self._durable_changed = trio.Event()

    async def run_writer(self) -> None:
        """Write queued batches in groups, in submission order, until cancelled. This is the
        only task that writes to the store."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            if self._faults.buggify("shard.writer.delay"):
                await trio.sleep(0.005)  # nothing taken yet: more batches join the group
            while self._queue:
                self._writing = True
                try:
                    await self._write_group()
                finally:
                    self._writing = False
                    self._signal_durable()

    async def _write_group(self) -> None:
        group, self._queue = self._queue, []
        if len(group) > 1 and self._faults.buggify("shard.commit.split_group"):
            group, self._queue = group[: len(group) // 2], group[len(group) // 2 :]
        batch = WriteBatch()
        for pending in group:
            batch.ops.extend(pending.ops)
        try:
            if self._faults.fire("shard.write.error"):
                raise DiskError("injected shard write error")
            await self._kv.write(batch, sync=True)
        except DiskError as exc:
            self._fail_all(group, exc)
            return
        except Exception as exc:
            # Not a disk error: a poison batch. It fails like a failed write (nothing of the
            # group is durable, the shard rebuilds from disk) and the writer carries on.
            self.poison_items += 1
            log_poison(self.shard_id, "write group", exc)
            self._fail_all(group, exc)
            return
        except BaseException:
            # Cancelled before the write began (a started write always runs to completion):
            # the group goes back to the head of the queue, so whoever flushes still writes it.
            self._queue[:0] = group
            raise
        self.synced_writes += 1
        self.groups_committed += 1
        self.batches_committed += len(group)
        top = group[-1].ticket.seq
        for k in {k for p in group for k, _ in p.ops}:
            hit = self._overlay.get(k)
            if hit is not None and hit[0] <= top:
                del self._overlay[k]
        self._durable_seq = top
        for pending in group:
            for kind, fields in pending.events:
                try:
                    self._emit(kind, fields)
                except Exception as exc:
                    self.poison_items += 1
                    log_poison(self.shard_id, f"event sink on {kind}", exc)
            if not pending.ticket.done:
                pending.ticket._complete()
        self._signal_durable()

    def _fail_all(self, group: list[_Pending], exc: Exception) -> None:
        self.broken = True
        error = Unavailable(f"storage write failed, nothing was changed: {exc}")
        queued, self._queue = self._queue, []
        self._overlay.clear()
        for pending in group + queued:
            if not pending.ticket.done:
                pending.ticket._complete(error)
        self._signal_durable()

    def repaired(self) -> None:
        """Called by the shard once it has rebuilt its state from disk after a failed write."""
        self.broken = False
        self._durable_seq = self._seq

    async def flush(self) -> None:
        """Write everything queued so far (used on close, once nothing more is submitted).

        Waits for a write the writer task has in progress, then writes the rest itself: the
        writer may already be cancelled (a node shut down from outside), and must not be
        relied on to drain the queue.
        """
        while self._writing and not self.broken:
            await self._durable_changed.wait()
        while self._queue and not self.broken:
            self._writing = True
            try:
                await self._write_group()
            finally:
                self._writing = False
                self._signal_durable()
