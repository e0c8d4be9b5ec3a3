"""LoopThread: one asyncio event loop on a daemon thread, for blocking callers.

:class:`silo.client.BlockingSiloClient` runs its asyncio client here, so blocking code
(Django and Flask views, scripts, several threads at once) calls silo without an event loop of
its own: each call submits a coroutine to the loop and waits for its result. All coroutines run
on the one loop thread, so the client's state is only ever touched there.

The thread starts on the first call (a process that forks before using the client, like a
pre-forking web server, starts its own thread in each child) and stops on :meth:`close`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")

_JOIN_TIMEOUT_S = 10.0
"""How long :meth:`LoopThread.close` waits for the final coroutine and the thread."""


class LoopThread:
    """An asyncio loop on its own daemon thread; thread-safe."""

    def __init__(self, name: str = "silo-client-loop",
                 loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:
        self._name = name
        # asyncio.SelectorEventLoop, not asyncio.new_event_loop(): a loop policy installed by
        # other libraries (trio-asyncio's, in a process that also runs trio code) must not
        # decide what loop blocking callers get.
        self._loop_factory = loop_factory or asyncio.SelectorEventLoop
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError("the client is closed")
            if self._loop is None:
                loop = self._loop_factory()
                ready = threading.Event()
                thread = threading.Thread(target=self._serve, args=(loop, ready), name=self._name,
                                          daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run the coroutine ``make()`` on the loop and return its result (or raise its error).
        If the waiting thread is interrupted (KeyboardInterrupt), the coroutine is cancelled.
        Calling this from the loop thread itself (which would deadlock) raises RuntimeError."""
        loop = self._started()
        if threading.current_thread() is self._thread:
            raise RuntimeError("a blocking client call from its own loop thread would deadlock")
        future = asyncio.run_coroutine_threadsafe(make(), loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise RuntimeError("the call was cancelled: the client was closed") from None
        except BaseException:
            future.cancel()
            raise

    def close(self, final: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
        """Run ``final()`` on the loop (e.g. closing channels), then stop the loop and join its
        thread. Idempotent; later :meth:`run` calls raise RuntimeError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if final is not None:
                asyncio.run_coroutine_threadsafe(final(), loop).result(_JOIN_TIMEOUT_S)
        finally:
            # Calls still running (another thread's) end now, their callers told why.
            asyncio.run_coroutine_threadsafe(_cancel_others(), loop).result(_JOIN_TIMEOUT_S)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_JOIN_TIMEOUT_S)


async def _cancel_others() -> None:
    """Cancel every task on the running loop but this one, and wait for them to end."""
    me = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not me]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
