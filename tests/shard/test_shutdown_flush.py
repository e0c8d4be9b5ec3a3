"""Closing a shard writes every queued batch even when its writer task was cancelled first."""

from __future__ import annotations

import trio

from silo.runtime.disk import WriteBatch
from silo.runtime.faults import Faults
from silo.shard.store import ShardStore


class SlowStore:
    """A KV store whose writes wait until released; records what was written, in order."""

    def __init__(self) -> None:
        self.written: list[list[tuple[bytes, bytes | None]]] = []
        self.release = trio.Event()

    async def write(self, batch: WriteBatch, *, sync: bool = True) -> None:
        await trio.lowlevel.checkpoint()
        with trio.CancelScope(shield=True):
            await self.release.wait()
        self.written.append(list(batch.ops))


async def test_flush_writes_what_a_cancelled_writer_left_behind() -> None:
    kv = SlowStore()
    store = ShardStore(kv, Faults(), lambda kind, fields: None)  # type: ignore[arg-type]
    first = store.submit([(b"a", b"1")], [])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run_writer)
        await trio.testing.wait_all_tasks_blocked()
        # The writer is inside the first write; a second batch queues behind it.
        second = store.submit([(b"b", b"2")], [])
        nursery.cancel_scope.cancel()
        kv.release.set()
    assert first.done and not second.done
    store.closed = True
    with trio.fail_after(5):
        await store.flush()
    await second.wait()
    assert kv.written == [[(b"a", b"1")], [(b"b", b"2")]]
