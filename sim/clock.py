"""Simulated wall clocks: trio's MockClock time plus a fixed epoch plus a per-host offset."""

from __future__ import annotations

import math

import trio

EPOCH_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z: simulated wall time at trio time 0 (before any clock jump)."""


class SimClock:
    """A host's wall clock (:class:`silo.runtime.Clock`). ``offset_ms`` changes on clock jumps."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return EPOCH_MS + math.floor(trio.current_time() * 1000 + 1e-6) + self.offset_ms

    def jump(self, delta_ms: int) -> None:
        self.offset_ms += delta_ms
