"""Running blocking code off the trio thread (the only place silo starts threads)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio


async def run_in_thread(fn: Callable[..., Any], *args: Any, limiter: Any = None) -> Any:
    """Run ``fn(*args)`` in a worker thread; abandoning it on cancellation is allowed.

    ``limiter`` is a :class:`trio.CapacityLimiter` (or an object with its
    ``acquire_on_behalf_of`` / ``release_on_behalf_of`` methods); trio releases it only when the
    thread has really finished, also when the caller abandoned it. ``None``: trio's default.
    """
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True, limiter=limiter)
