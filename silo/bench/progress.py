"""Progress lines for long benchmark phases: at most one line per interval per phase."""

from __future__ import annotations

import time
from collections.abc import Callable

PROGRESS_INTERVAL_S = 5.0


class Progress:
    """Reports ``label: done/total`` through ``say`` when ``tick`` is called at least
    ``every_s`` after the last report (``tick`` itself is cheap enough for every job)."""

    Say = Callable[[str], None]

    def __init__(self, say: Say, label: str, total: int,
                 every_s: float = PROGRESS_INTERVAL_S) -> None:
        self._say = say
        self._label = label
        self._total = total
        self._every_s = every_s
        self._last = time.monotonic()

    def tick(self, done: int) -> None:
        now = time.monotonic()
        if now - self._last >= self._every_s:
            self._last = now
            self._say(f"    {self._label}: {done:,}/{self._total:,}")
