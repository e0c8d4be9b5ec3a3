"""The shard's background loops: promote due timers and reap expired leases.

Each loop sleeps until its next due time (or a wake-up when an earlier entry is added), and
re-checks at least every :data:`MAX_LOOP_SLEEP_S`, so a wall-clock jump is noticed. A failed
write (UNAVAILABLE) backs a loop off briefly; the operation itself repairs the shard.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio

from silo.errors import Unavailable
from silo.runtime import Runtime
from silo.shard.mirror import ShardMirror

MAX_LOOP_SLEEP_S = 1.0
"""Background loops re-check at least this often, so a wall-clock jump is noticed."""

RETRY_AFTER_UNAVAILABLE_S = 0.1


class ShardLoops:
    """The timer and reaper loops of one shard; wake-ups come from the mirror's callbacks."""

    def __init__(
        self,
        runtime: Runtime,
        mirror: ShardMirror,
        promote_due: Callable[[], Awaitable[int]],
        reap_expired: Callable[[], Awaitable[int]],
    ) -> None:
        self._rt = runtime
        self._mirror = mirror
        self._promote_due = promote_due
        self._reap_expired = reap_expired
        self._timer_wakeup = trio.Event()
        self._reaper_wakeup = trio.Event()

    def wake_timer(self) -> None:
        """An earlier timer may have been added: re-check the timer index now."""
        self._timer_wakeup.set()

    def wake_reaper(self) -> None:
        """An earlier lease expiry may have been added: re-check the expiry index now."""
        self._reaper_wakeup.set()

    async def _sleep_until(self, due_ms: int | None, wakeup: trio.Event) -> None:
        if due_ms is None:
            delay = math.inf
        else:
            delay = max(0.0, (due_ms - self._rt.clock.now_ms()) / 1000)
        if self._rt.faults.buggify("shard.loops.wake_early"):
            delay = min(delay, 0.001)  # a spurious wake-up: the loop re-checks and sleeps again
        with trio.move_on_after(min(delay, MAX_LOOP_SLEEP_S)):
            await wakeup.wait()

    async def timer_loop(self) -> None:
        while True:
            self._timer_wakeup = trio.Event()
            due = self._mirror.next_timer_due_ms()
            if due is not None and due <= self._rt.clock.now_ms():
                try:
                    await self._promote_due()
                except Unavailable:
                    await trio.sleep(RETRY_AFTER_UNAVAILABLE_S)
                continue
            await self._sleep_until(due, self._timer_wakeup)

    async def reaper_loop(self) -> None:
        while True:
            self._reaper_wakeup = trio.Event()
            due = self._mirror.next_expiry_ms()
            if self._rt.faults.mutation("no-reaper"):
                due = None  # planted bug: expired leases never wake the reaper
            if due is not None and due <= self._rt.clock.now_ms():
                try:
                    await self._reap_expired()
                except Unavailable:
                    await trio.sleep(RETRY_AFTER_UNAVAILABLE_S)
                continue
            await self._sleep_until(due, self._reaper_wakeup)
