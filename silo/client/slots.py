"""Worker slots: a dedicated ``trio.CapacityLimiter`` of ``max_concurrent_tasks`` tokens.

A task holds one :class:`Slot` from the lease that brought it until its handler has *really*
stopped. A handler that is abandoned (timed out, or cancelled past its grace) while its body
still runs (a thread, or an asyncio task that ignores cancellation) keeps its slot until the body
returns: the worker then leases fewer tasks instead of leasing tasks it cannot run. The threads of
sync handlers draw on the same tokens (see :meth:`Slot.thread_limiter`), never on trio's
process-wide default thread limiter, so stuck handlers of one worker cannot starve any other.

Invariants: every slot is released exactly once; ``stuck`` counts the abandoned bodies still
running, at most ``size``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger("silo.worker")


class SlotPool:
    """``size`` slots. ``on_stuck(n)`` is called whenever the number of stuck slots changes."""

    def __init__(self, size: int, on_stuck: Callable[[int], None] | None = None) -> None:
        self.size = size
        self._limiter = trio.CapacityLimiter(size)
        self._on_stuck = on_stuck
        self.stuck = 0
        """Slots held by abandoned handlers whose body is still running."""

    async def acquire(self) -> Slot:
        slot = Slot(self)
        await self._limiter.acquire_on_behalf_of(slot)
        return slot

    def acquire_nowait(self) -> Slot:
        """A free slot; raises ``trio.WouldBlock`` when there is none."""
        slot = Slot(self)
        self._limiter.acquire_on_behalf_of_nowait(slot)
        return slot

    @property
    def available(self) -> int:
        return int(self._limiter.available_tokens)

    def _release(self, slot: Slot) -> None:
        self._limiter.release_on_behalf_of(slot)

    def _stuck_changed(self, delta: int) -> None:
        self.stuck += delta
        if delta > 0 and self.stuck >= self.size:
            log.warning(
                "all %d slots are held by abandoned handlers that are still running; this "
                "worker leases no task until one of them returns", self.size,
            )
        if self._on_stuck is not None:
            self._on_stuck(self.stuck)


class Slot:
    """One token of a :class:`SlotPool`, held by one task."""

    __slots__ = ("_pool", "_held", "_body_running", "_abandoned")

    def __init__(self, pool: SlotPool) -> None:
        self._pool = pool
        self._held = True
        self._body_running = False
        self._abandoned = False

    def finish(self) -> None:
        """The task is done with its handler (returned, failed or abandoned). The slot is
        released now, or, when the handler's body still runs, once it returns."""
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
