"""Clock seam: wall time and monotonic time.

Sleeping and timeouts use trio directly: trio's clock is itself injectable (the simulator runs
under ``trio.testing.MockClock``). Wall time, which is stored in job records, and monotonic time,
on which in-memory deadlines are kept (DESIGN §4 "Deadlines"), come only from a :class:`Clock`.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import trio


class Clock(Protocol):
    """Source of wall time and of monotonic time, both in milliseconds."""

    def now_ms(self) -> int:
        """Current wall time in whole milliseconds since the Unix epoch. May step (backwards
        too): NTP, a VM resume, the simulator."""
        ...

    def monotonic_ms(self) -> int:
        """Milliseconds on a clock that never steps (only differences are meaningful)."""
        ...


def trio_monotonic_ms() -> int:
    """trio's clock in whole milliseconds (monotonic in production; the simulator's virtual
    time under a mock clock). Only valid inside ``trio.run``."""
    return math.floor(trio.current_time() * 1000 + 1e-6)


class SystemClock:
    """The real wall clock; monotonic time is trio's clock."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def monotonic_ms(self) -> int:
        return trio_monotonic_ms()


class WallAsMonotonic:
    """A clock whose monotonic reading is the wall clock: the shard deadlines of old, which a
    wall-clock step moves. Only the simulator's ``wall-clock-deadlines`` mutation uses it."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def now_ms(self) -> int:
        return self._clock.now_ms()

    def monotonic_ms(self) -> int:
        return self._clock.now_ms()
