"""The few event-loop operations the client core needs, and trio's implementation of them.

:class:`silo.client.core.ClientCore` is written once, as async code that awaits only its
channels and an :class:`AsyncBackend`, so the same coroutines run on trio (:data:`TRIO_BACKEND`,
for :class:`~silo.client.SiloClient`) and on asyncio
(:data:`silo.transport.asyncio_grpc.ASYNCIO_BACKEND`, for
:class:`~silo.client.AsyncioSiloClient`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar

import trio

T = TypeVar("T")


class AsyncBackend(Protocol):
    """Sleep, lock, timeout and shielding on one kind of event loop."""

    name: str

    async def sleep(self, seconds: float) -> None: ...

    def lock(self) -> AbstractAsyncContextManager[object]:
        """A new mutex (``async with lock:``)."""
        ...

    async def within(self, seconds: float | None, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()``; after ``seconds`` (None: never) it is cancelled and the loop's own
        timeout error raised (``trio.TooSlowError`` on trio, ``TimeoutError`` on asyncio)."""
        ...

    async def shielded(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` to its end even if the caller is cancelled meanwhile."""
        ...


class TrioBackend:
    """trio's implementation of :class:`AsyncBackend`."""

    name = "trio"

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    def lock(self) -> AbstractAsyncContextManager[object]:
        return trio.Lock()

    async def within(self, seconds: float | None, fn: Callable[[], Awaitable[T]]) -> T:
        if seconds is None:
            return await fn()
        with trio.fail_after(seconds):
            return await fn()

    async def shielded(self, fn: Callable[[], Awaitable[T]]) -> T:
        with trio.CancelScope(shield=True):
            return await fn()


TRIO_BACKEND = TrioBackend()
