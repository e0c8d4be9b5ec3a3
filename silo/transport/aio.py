"""The asyncio event loop that grpclib needs, hosted on trio by trio-asyncio.

grpclib is asyncio-only. silo runs it inside trio through one trio-asyncio loop per process (or
per test): open it once, high up, with :func:`open_asyncio_loop`, and run servers and clients
inside it::

    async with open_asyncio_loop():
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "0.0.0.0", 7450)
            ...

:class:`silo.transport.grpc.GrpcServer` and ``GrpcConnector.open()`` open a loop themselves when
none is active, so small programs and tests need not. The loop is found through trio-asyncio's
context variable, which a trio task copies from the task that calls ``start_soon``/``start``:
tasks spawned from inside the ``async with`` block see it (whichever nursery they run in); tasks
spawned by code outside the block, or already running when it was entered, do not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio_asyncio

__all__ = ["current_asyncio_loop", "open_asyncio_loop"]


def current_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The trio-asyncio loop active in this trio task's context, or ``None``."""
    loop = trio_asyncio.current_loop.get()
    if loop is None or loop.is_closed():
        return None
    return loop


@asynccontextmanager
async def open_asyncio_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    """Yield the active trio-asyncio loop, opening one for the duration if there is none.

    Re-entrant: nested uses share the outermost loop. Closing a loop this opened cancels the
    asyncio tasks still running on it, so leave the block only after the servers and channels
    that use the loop are shut down.
    """
    loop = current_asyncio_loop()
    if loop is not None:
        yield loop
        return
    raised: list[BaseException] = []
    try:
        async with trio_asyncio.open_loop() as new_loop:
            try:
                yield new_loop
            except BaseException as exc:
                raised.append(exc)
                raise
    except BaseExceptionGroup as group:
        # The loop's internal nurseries wrap whatever the block raised in exception groups;
        # when the group holds nothing else, give the caller back its own exception (so that
        # ``except Unauthenticated:`` around ``SiloClient.connect(...)`` works).
        if not raised or not _wraps_only(group, raised[0]):
            raise
    else:
        return
    raise raised[0]  # outside the handler, so its context and traceback stay as they were


def _wraps_only(group: BaseException, exc: BaseException) -> bool:
    """Whether ``group`` is ``exc`` inside nothing but single-exception groups."""
    while group is not exc and isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]
    return group is exc


async def run_asyncio_handler(fn, *args, on_start=None, on_end=None):  # type: ignore[no-untyped-def]
    """Await the asyncio coroutine function ``fn(*args)`` from trio (through trio-asyncio).

    The coroutine runs as its own asyncio task. When the trio caller is cancelled, the task is
    cancelled and abandoned at once: a coroutine that swallows ``CancelledError`` cannot hold
    its caller. ``on_start()`` is called once the task exists and ``on_end()`` (on the trio
    thread) once it has finally ended, whether or not it was abandoned.
    """
    async with open_asyncio_loop():

        async def spawn() -> asyncio.Future:  # type: ignore[type-arg]
            return asyncio.ensure_future(fn(*args))

        task = await trio_asyncio.aio_as_trio(spawn)()
        done = trio.Event()

        def ended(_: asyncio.Future) -> None:  # type: ignore[type-arg]
            done.set()
            if on_end is not None:
                on_end()

        if on_start is not None:
            on_start()
        task.add_done_callback(ended)
        try:
            await done.wait()
        except trio.Cancelled:
            task.cancel()
            raise
        return task.result()
