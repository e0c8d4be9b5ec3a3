"""Worker slots: ``size`` run slots and ``size + prefetch`` lease credits.

A leased task holds one :class:`Slot` from the lease call that brought it until its handler has
*really* stopped. The slot first holds only a lease *credit* (a token of a dedicated limiter of
``size + prefetch`` tokens with ``trio.CapacityLimiter``'s semantics): the worker leases at most
as many tasks as it has free credits, so at most ``size + prefetch`` tasks are held at once, of
which at most ``prefetch`` wait unstarted beyond the free run slots. :meth:`SlotPool.try_start`
then gives it one of the ``size`` *run* slots: at most ``size`` handlers run at once. Whenever a
run slot frees ``on_run_free()`` is called synchronously, so the worker can start its next
waiting task at once, without a round trip to the server and in the order it chooses (lease
order).

A handler that is abandoned (timed out, or cancelled past its grace) while its body still runs
(a thread, or an asyncio task that ignores cancellation) keeps its run slot and its credit until
the body returns: the worker then leases fewer tasks instead of leasing tasks it cannot run. The
threads of sync handlers run on the slot (see :meth:`Slot.thread_limiter`), never on trio's
process-wide default thread limiter, so stuck handlers of one worker cannot starve any other.

Invariants: every credit and every run slot is released exactly once; ``running <= size``;
``stuck`` counts the abandoned bodies still running, at most ``size``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger("silo.worker")


class SlotPool:
    """``size`` run slots and ``size + prefetch`` lease credits. ``on_stuck(n)`` is called
    whenever the number of stuck slots changes, ``on_run_free()`` whenever a run slot frees."""

    def __init__(self, size: int, on_stuck: Callable[[int], None] | None = None, *,
                 prefetch: int = 0, on_run_free: Callable[[], None] | None = None) -> None:
        self.size = size
        self.prefetch = prefetch
        self._credits = _Credits(size + prefetch)
        self._on_stuck = on_stuck
        self._on_run_free = on_run_free
        self.running = 0
        """Run slots taken (handlers started and not yet really stopped)."""
        self.stuck = 0
        """Slots held by abandoned handlers whose body is still running."""
        self._not_all_stuck = trio.Event()
        self._not_all_stuck.set()

    @property
    def credits(self) -> int:
        """Tasks the worker may hold at once (``size + prefetch``)."""
        return self.size + self.prefetch

    async def wait_not_all_stuck(self) -> None:
        """Wait while every run slot is held by a stuck handler (nothing leased could run)."""
        while self.stuck >= self.size:
            await self._not_all_stuck.wait()

    async def acquire(self) -> Slot:
        """A slot holding a lease credit (waits for one)."""
        await self._credits.acquire()
        return Slot(self)

    def acquire_nowait(self) -> Slot:
        """A slot holding a lease credit; raises ``trio.WouldBlock`` when there is none."""
        if not self._credits.acquire_nowait(1):
            raise trio.WouldBlock
        return Slot(self)

    def acquire_up_to(self, n: int) -> list[Slot]:
        """Up to ``n`` slots holding a lease credit each, as many as are free now (the same as
        calling :meth:`acquire_nowait` until it raises or ``n`` are taken)."""
        return [Slot(self) for _ in range(self._credits.acquire_nowait(n))]

    @property
    def available(self) -> int:
        """Free lease credits."""
        return self._credits.available

    def try_start(self, slot: Slot) -> bool:
        """Give ``slot`` a run slot if one is free; whether it has one now."""
        if slot._running:
            return True
        if not slot._held or self.running >= self.size:
            return False
        self.running += 1
        slot._running = True
        return True

    def finish_all(self, slots: list[Slot]) -> None:
        """:meth:`Slot.finish` on each of ``slots`` in order. The credits of slots that never
        started are returned together (waking waiting tasks exactly as one by one would)."""
        unused = 0
        for slot in slots:
            if (slot._held and not slot._running and not slot._body_running
                    and not slot._abandoned):
                slot._held = False
                unused += 1
            else:
                if unused:
                    self._credits.release(unused)
                    unused = 0
                slot.finish()
        if unused:
            self._credits.release(unused)

    def _release(self, slot: Slot) -> None:
        self._credits.release()
        if slot._running:
            slot._running = False
            self.running -= 1
            if self._on_run_free is not None:
                self._on_run_free()

    def _stuck_changed(self, delta: int) -> None:
        self.stuck += delta
        if self.stuck >= self.size:
            self._not_all_stuck = trio.Event()
        else:
            self._not_all_stuck.set()
        if delta > 0 and self.stuck >= self.size:
            log.warning(
                "all %d slots are held by abandoned handlers that are still running; this "
                "worker leases no task until one of them returns", self.size,
            )
        if self._on_stuck is not None:
            self._on_stuck(self.stuck)


class _Credits:
    """A counting ``trio.CapacityLimiter`` without borrower identities: the same fairness (no
    token is taken past a waiting task), the same checkpoints and the same wake-up order, so a
    task sees exactly what it saw with ``trio.CapacityLimiter``. Slots keep their own
    "held" flag, so each token is released exactly once (:meth:`Slot.finish`); without a set of
    borrowers, taking and returning many tokens is cheap."""

    __slots__ = ("_total", "_borrowed", "_lot")

    def __init__(self, total: int) -> None:
        self._total = total
        self._borrowed = 0
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def available(self) -> int:
        return self._total - self._borrowed

    def acquire_nowait(self, n: int) -> int:
        """Take up to ``n`` free tokens unless a task waits for one; how many were taken."""
        if self._lot or n <= 0:
            return 0
        k = min(n, self._total - self._borrowed)
        if k <= 0:
            return 0
        self._borrowed += k
        return k

    async def acquire(self) -> None:
        """Take one token, waiting (first come, first served) while none is free."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._lot and self._borrowed < self._total:
            self._borrowed += 1
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        # The releaser counts the token for the task it wakes; a task cancelled while
        # parked was not woken and holds nothing.
        await self._lot.park()

    def release(self, n: int = 1) -> None:
        """Return ``n`` tokens one after the other; after each, wake as many waiting tasks as
        tokens are then free."""
        if self._borrowed < n:
            raise RuntimeError("no lease credit is held")
        if not self._lot:
            self._borrowed -= n  # nobody to wake: the same as one by one
            return
        for _ in range(n):
            self._borrowed -= 1
            if self._lot:
                for _woken in self._lot.unpark(count=self._total - self._borrowed):
                    self._borrowed += 1


class Slot:
    """One lease credit of a :class:`SlotPool`, and once started one run slot, held by one
    task."""

    __slots__ = ("_pool", "_held", "_running", "_body_running", "_abandoned")

    def __init__(self, pool: SlotPool) -> None:
        self._pool = pool
        self._held = True
        self._running = False
        self._body_running = False
        self._abandoned = False

    @property
    def started(self) -> bool:
        """Whether the slot holds a run slot."""
        return self._running

    def finish(self) -> None:
        """The task is done with its handler (returned, failed, abandoned, or never started).
        The slot is released now, or, when the handler's body still runs, once it returns."""
        if not self._held or self._abandoned:
            return
        if self._body_running:
            self._abandoned = True
            self._pool._stuck_changed(+1)
            return
        self._held = False
        self._pool._release(self)

    def body_started(self) -> None:
        """The handler's body (a thread or an asyncio task) is running outside trio's control."""
        self._body_running = True

    def body_ended(self) -> None:
        """The handler's body has returned or raised (called on the trio thread)."""
        self._body_running = False
        if self._abandoned:
            self._abandoned = False
            self._pool._stuck_changed(-1)
            self._held = False
            self._pool._release(self)

    def thread_limiter(self) -> _ThreadLimiter:
        """A limiter for ``trio.to_thread.run_sync`` that runs the thread on this slot."""
        return _ThreadLimiter(self)


class _ThreadLimiter:
    """The ``CapacityLimiter`` protocol over one held slot: acquiring marks the thread as
    started (the token is already held), and trio's release, which comes only when the thread
    has really finished, marks it ended."""

    __slots__ = ("_slot",)

    def __init__(self, slot: Slot) -> None:
        self._slot = slot

    async def acquire_on_behalf_of(self, borrower: Any) -> None:
        self._slot.body_started()

    def release_on_behalf_of(self, borrower: Any) -> None:
        self._slot.body_ended()
