"""Wall-clock seam.

Sleeping and timeouts use trio directly: trio's clock is itself injectable (the simulator runs
under ``trio.testing.MockClock``). Wall time, which is stored in job records, comes only from a
:class:`Clock`.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Source of wall time in milliseconds since the Unix epoch."""

    def now_ms(self) -> int:
        """Current wall time in whole milliseconds. May jump (backwards too) in the simulator."""
        ...


class SystemClock:
    """The real wall clock."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)
