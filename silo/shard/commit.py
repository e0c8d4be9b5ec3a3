"""The commit protocol of one shard: how every operation takes the lock, builds its batch,
hands it to the group-commit writer and answers only once what it did (or saw) is durable.

Contract (DESIGN §3-§4):

- Mutations are serialized by the shard lock. Each starts a :class:`~silo.shard.txn.Txn` on the
  current state (durable state plus batches still being written); after a failed write the
  in-memory mirror is first rebuilt from disk.
- Before submitting, slots freed by the operation are granted (the ``regrant`` callback), and
  counter deltas become counter rows (a counter that reaches zero is deleted). The lock is
  released before waiting for durability, so that the writer can group several operations into
  one synced write.
- A refusal (ALREADY_EXISTS, NOT_FOUND, FAILED_PRECONDITION) decided on what the operation read
  is answered only once that is durable (the read barrier): the state may come from a batch
  still being written, and a caller must never be told "exists" (or "already cancelled") about a
  write that a crash can still undo.
- A failed write reaches the caller as UNAVAILABLE only once the mirror has been rebuilt, so no
  caller observes caches holding a write that failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from enum import Enum

import trio

from silo.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from silo.model import encode_int
from silo.runtime import Runtime
from silo.runtime.disk import DiskError
from silo.shard.mirror import ShardMirror
from silo.shard.store import ShardStore, Ticket
from silo.shard.txn import Txn

REFUSALS = (AlreadyExists, NotFound, FailedPrecondition)
"""Errors decided on what an operation read; answered only after the read barrier."""


class EmptyBatch(Enum):
    """What an operation waits for when its transaction wrote nothing."""

    READ_BARRIER = "read_barrier"
    """Wait until everything the operation may have read is durable."""
    NOTHING = "nothing"
    """Answer at once (background work and leases: nothing read is reported as a fact)."""
    IMPOSSIBLE = "impossible"
    """The operation always writes; an empty batch is a bug (asserted)."""


class _Commit:
    """A submitted batch as its operation sees it: :meth:`wait` returns once the batch is
    durable; if the write failed, the shard's in-memory state is rebuilt from disk before
    UNAVAILABLE reaches the caller."""

    __slots__ = ("_ticket", "_protocol", "_error")

    def __init__(
        self, ticket: Ticket | None, protocol: CommitProtocol, error: Unavailable | None = None
    ) -> None:
        self._ticket = ticket
        self._protocol = protocol
        self._error = error

    async def wait(self) -> None:
        try:
            if self._error is not None:
                raise self._error
            assert self._ticket is not None
            await self._ticket.wait()
        except Unavailable:
            await self._protocol.repair()
            raise


class CommitProtocol:
    """The lock, transaction start, submit and durability wait shared by every operation."""

    def __init__(
        self,
        runtime: Runtime,
        store: ShardStore,
        mirror: ShardMirror,
        shard_id: int,
        regrant: Callable[[Txn], Awaitable[None]],
    ) -> None:
        self._rt = runtime
        self._store = store
        self._mirror = mirror
        self._shard_id = shard_id
        self._regrant = regrant
        self.lock = trio.Lock()
        """The shard lock: held while an operation reads and builds its batch."""
        self.closing = False
        """True once shutdown has started: operations are refused from then on."""
        self.after_load: Callable[[Txn], Awaitable[None]] | None = None
        """Called (lock held, in the first transaction after a load) when the load set rows
        aside that it could not decode: the shard quarantines them."""

    # -- the one way to run an operation ----------------------------------------------------

    @asynccontextmanager
    async def operation(
        self,
        *,
        empty: EmptyBatch = EmptyBatch.READ_BARRIER,
        refusal_barrier: bool = True,
        prelude: Callable[[Txn], Awaitable[object]] | None = None,
    ) -> AsyncIterator[Txn]:
        """Run one mutating operation: ``async with commit.operation() as txn: ...``.

        Takes the lock, begins the transaction (repairing after a failed write), runs the body,
        grants freed slots and submits; after releasing the lock waits until the batch is
        durable (or, with an empty batch, as ``empty`` says). With ``refusal_barrier`` a
        refusal raised by the body waits on the read barrier before it propagates.

        ``prelude`` runs first in a batch of its own, submitted without waiting: the body's
        transaction then sees its writes (leasing promotes due timers this way).
        """
        try:
            async with self.lock:
                if prelude is not None:
                    first = await self.begin()
                    await prelude(first)
                    await self.finish(first)
                txn = await self.begin()
                yield txn
                commit = await self.finish(txn)
        except REFUSALS:
            if refusal_barrier:
                await self.read_barrier()
            raise
        if commit is not None:
            await commit.wait()
        elif empty is EmptyBatch.READ_BARRIER:
            await self.read_barrier()
        else:
            assert empty is EmptyBatch.NOTHING, "this operation always writes"

    @asynccontextmanager
    async def read(self, *, barrier: bool = True) -> AsyncIterator[Txn]:
        """Run one read under the lock (no repair, nothing submitted).

        With ``barrier`` the shard must be open, and the answer (a refusal included) waits
        until everything the read may have seen is durable. Without it the read is answered at
        once, even while closing (a follow-up read of rows already known to be durable).
        """
        if not barrier:
            async with self.lock:
                yield Txn(self._store, 0)
            return
        try:
            async with self.lock:
                self.check_open()
                yield Txn(self._store, self._rt.clock.now_ms())
        except REFUSALS:
            await self.read_barrier()
            raise
        await self.read_barrier()

    # -- steps ------------------------------------------------------------------------------

    def check_open(self) -> None:
        if self.closing:
            raise Unavailable(f"shard {self._shard_id} is closing")

    async def load(self) -> None:
        """Rebuild the in-memory mirror from the store (after a failed write: the batches
        after the last durable one all failed, see :meth:`ShardMirror.load`)."""
        await self._mirror.load(
            self._store.kv, self._store.durable_seq if self._store.broken else None
        )

    async def begin(self) -> Txn:
        """Called with the lock held: repair after a failed write, page timers in or out
        (:meth:`ShardMirror.page_timers`), then start a transaction.

        A disk error while reloading is UNAVAILABLE (the next operation retries the repair).
        """
        self.check_open()
        if self._store.broken:
            try:
                await self.load()
            except DiskError as exc:
                raise Unavailable(
                    f"shard {self._shard_id}: reloading after a failed write: {exc}"
                ) from exc
            self._store.repaired()
        try:
            await self._mirror.page_timers(self._store)
            await self._mirror.page_groups(self._store)
        except DiskError as exc:
            raise Unavailable(
                f"shard {self._shard_id}: paging timers, ready tasks or requests in: {exc}"
            ) from exc
        txn = self.new_txn()
        if self._mirror.corrupt and self.after_load is not None:
            await self.after_load(txn)
        return txn

    def new_txn(self) -> Txn:
        """A transaction on the clock readings of now (wall and monotonic, read together)."""
        return Txn(self._store, self._rt.clock.now_ms(), self._rt.clock.monotonic_ms())

    async def finish(self, txn: Txn) -> _Commit | None:
        """Grant freed slots, then hand the transaction's batch to the writer and update the
        mirrors (lock held). None when the transaction wrote nothing."""
        await self._regrant(txn)
        for counter, delta in txn.counter_deltas.items():
            if delta:
                value = self._mirror.counters.get(counter, 0) + delta
                # A counter at zero keeps no row (it reads as zero either way).
                txn.ops[counter] = encode_int(value) if value else None
        if not txn.ops:
            return None
        ops = list(txn.ops.items())
        beyond = self._mirror.keys_beyond(ops)
        stored: set[bytes] = set()
        if beyond:  # rows on disk only (paged out): whether they exist, to keep the counts
            try:
                found = await self._store.get_many(beyond)
            except DiskError as exc:
                return _Commit(None, self, Unavailable(f"shard {self._shard_id}: {exc}"))
            stored = {k for k, v in zip(beyond, found, strict=True) if v is not None}
        try:
            ticket = self._store.submit(
                ops, txn.events, ack_before_durable=self._rt.faults.mutation("ack-before-durable")
            )
        except Unavailable as exc:
            # An earlier write failed while this operation was reading: it fails too, and
            # (like any failed write) only once the in-memory state has been rebuilt.
            return _Commit(None, self, exc)
        self._mirror.apply(
            ops, None if txn.mono is None else (txn.now, txn.mono), ticket.seq, stored
        )
        self._mirror.forget_durable(self._store.durable_seq)
        return _Commit(ticket, self)

    async def repair(self) -> None:
        """After a failed write: rebuild the in-memory state from disk, unless already done.

        Called by the operation that sees the failure before it raises UNAVAILABLE.
        """
        async with self.lock:
            if self._store.broken and not self.closing:
                try:
                    await self.load()
                except DiskError:
                    return  # the store itself is gone (e.g. a crash); begin retries
                self._store.repaired()

    async def read_barrier(self) -> None:
        """Wait until everything a read may have seen is durable."""
        try:
            await self._store.wait_durable(self._store.last_submitted_seq)
        except Unavailable:
            await self.repair()
            raise

    async def shutdown(self) -> None:
        """Stop taking operations and make everything written so far durable."""
        self.closing = True
        async with self.lock:
            self._store.closed = True
            await self._store.flush()
