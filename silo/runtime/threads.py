"""Running blocking code off the trio thread (the only place silo starts threads)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio


async def run_in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a worker thread; abandoning it on cancellation is allowed."""
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
