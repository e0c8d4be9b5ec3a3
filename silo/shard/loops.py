"""The shard's background loops: promote due timers (and forget refilled rate buckets) and reap
expired leases.

Each loop sleeps until its next due time on the monotonic clock (DESIGN §4 "Deadlines": a
wall-clock step moves no deadline), or a wake-up when an earlier entry is added, and re-checks
at least every :data:`MAX_LOOP_SLEEP_S`. A failed write (UNAVAILABLE) backs a loop off briefly;
the operation itself repairs the shard. A loop never dies (DESIGN §4 "No poison"): a round that
raises anything else is logged and counted (``on_error``), and the loop backs off, doubling up
to :data:`ERROR_BACKOFF_MAX_S`; one bad item is handled inside the round, so only a failure of
the whole round (e.g. a disk read error) gets here.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio

from silo.errors import Unavailable
from silo.runtime import Runtime
from silo.shard.mirror import ShardMirror

MAX_LOOP_SLEEP_S = 1.0
"""No background loop sleeps longer than this before it re-checks its deadlines."""

RETRY_AFTER_UNAVAILABLE_S = 0.1
ERROR_BACKOFF_MAX_S = 5.0


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
        self.on_error: Callable[[str, Exception], None] = lambda what, exc: None
        """Told of every unexpected error a round raised (the shard logs and counts it)."""

    def wake_timer(self) -> None:
        """An earlier timer may have been added: re-check the timer index now."""
        self._timer_wakeup.set()

    def wake_reaper(self) -> None:
        """An earlier lease expiry may have been added: re-check the expiry index now."""
        self._reaper_wakeup.set()

    async def _sleep_until(self, due_ms: int | None, wakeup: trio.Event) -> None:
        """Sleep until the monotonic time ``due_ms`` (None: until woken)."""
        if due_ms is None:
            delay = math.inf
        else:
            delay = max(0.0, (due_ms - self._rt.clock.monotonic_ms()) / 1000)
        if self._rt.faults.buggify("shard.loops.wake_early"):
            delay = min(delay, 0.001)  # a spurious wake-up: the loop re-checks and sleeps again
        with trio.move_on_after(min(delay, MAX_LOOP_SLEEP_S)):
            await wakeup.wait()

    async def _round(
        self, what: str, round_: Callable[[], Awaitable[int]], backoff_s: float
    ) -> float:
        """Run one round; returns the back-off used after it (0 after a round that worked)."""
        try:
            await round_()
            return 0.0
        except Unavailable:
            delay = RETRY_AFTER_UNAVAILABLE_S
        except Exception as exc:
            self.on_error(what, exc)
            delay = min(max(backoff_s * 2, RETRY_AFTER_UNAVAILABLE_S), ERROR_BACKOFF_MAX_S)
        await trio.sleep(delay)
        return delay

    def _next_round_ms(self) -> int | None:
        """Monotonic time of the timer loop's next round: the earliest timer, or the moment
        the first rate reservation stops mattering or the first old rate bucket is full again
        (wall times, taken relative to now)."""
        due = self._mirror.next_timer_deadline_ms()
        for wall_ms in (
            self._mirror.next_reservation_expiry_ms(), self._mirror.next_bucket_full_ms(),
            self._mirror.next_page_wall_ms(),
        ):
            if wall_ms is not None:
                at = self._rt.clock.monotonic_ms() + max(0, wall_ms - self._rt.clock.now_ms())
                due = at if due is None else min(due, at)
        return due

    async def timer_loop(self) -> None:
        backoff = 0.0
        while True:
            self._timer_wakeup = trio.Event()
            # Due timers (monotonic), and rate reservations past their period and old rate
            # buckets that have refilled (wall time, as slots are counted; rows deleted).
            due = self._next_round_ms()
            if due is not None and due <= self._rt.clock.monotonic_ms():
                backoff = await self._round("timer round", self._promote_due, backoff)
                continue
            await self._sleep_until(due, self._timer_wakeup)

    async def reaper_loop(self) -> None:
        backoff = 0.0
        while True:
            self._reaper_wakeup = trio.Event()
            due = self._mirror.next_expiry_deadline_ms()
            if self._rt.faults.mutation("no-reaper"):
                due = None  # planted bug: expired leases never wake the reaper
            if due is not None and due <= self._rt.clock.monotonic_ms():
                backoff = await self._round("reaper round", self._reap_expired, backoff)
                continue
            await self._sleep_until(due, self._reaper_wakeup)
