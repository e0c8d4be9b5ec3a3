"""Simulated clocks: monotonic time is trio's MockClock time; a host's wall clock is that plus a
fixed epoch plus a per-host offset, which clock steps change without touching monotonic time."""

from __future__ import annotations

from silo.runtime.clock import trio_monotonic_ms

EPOCH_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z: simulated wall time at trio time 0 (before any clock jump)."""


class SimClock:
    """A host's clock (:class:`silo.runtime.Clock`). ``offset_ms`` changes on wall-clock steps."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return EPOCH_MS + trio_monotonic_ms() + self.offset_ms

    def monotonic_ms(self) -> int:
        return trio_monotonic_ms()

    def step_wall_ms(self, delta_ms: int) -> None:
        """Step the wall clock by ``delta_ms`` (either sign); monotonic time does not move."""
        self.offset_ms += delta_ms

