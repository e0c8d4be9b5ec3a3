"""The three Python clients, driven from trio tests so one test runs against each.

``open_client(kind, address)`` connects a client of ``kind``:

- ``trio``: :class:`SiloClient`, called directly;
- ``asyncio`` / ``uvloop``: :class:`AsyncioSiloClient` on a real asyncio (or uvloop) loop in a
  thread of its own (loops made by their factories, not by asyncio's policy, which
  trio-asyncio replaces in this process);
- ``blocking``: :class:`BlockingSiloClient`, each call made from a worker thread.

It yields a :class:`Driven` proxy: every method of the client (and of the handles it returns)
is awaited from trio, whatever the client's own loop is. ``wrap(connector)`` puts a test
connector (failure injection) between the client and the real transport; such connectors are
written as plain async code and call back into trio only through :meth:`Driven.bridge`'s
``to_trio``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio

from silo.client import AsyncioSiloClient, BlockingJobHandle, BlockingSiloClient, JobHandle
from silo.client.client import RetrySettings, SiloClient
from silo.rpc import Connector
from silo.transport.asyncio_grpc import AsyncioGrpcConnector
from silo.transport.grpc import GrpcConnector
from silo.transport.loop_thread import LoopThread

try:
    import uvloop
except ImportError:  # the [examples] extra is not installed
    uvloop = None

KINDS = [
    "trio",
    "asyncio",
    pytest.param("uvloop", marks=pytest.mark.skipif(uvloop is None, reason="needs uvloop")),
    "blocking",
]

ToTrio = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
"""Await a trio coroutine function from the client's loop (a connector's callback)."""

Wrap = Callable[[Connector, ToTrio], Connector]


class Driven:
    """A client or handle whose methods are awaited from trio (see the module docstring)."""

    def __init__(self, target: Any, run: Callable[[Callable[[], Any]], Awaitable[Any]],
                 kind: str) -> None:
        self._target = target
        self._run = run
        self.kind = kind

    @property
    def target(self) -> Any:
        return self._target

    @property
    def timeout_error(self) -> type[BaseException]:
        """What ``result(timeout=...)`` raises on this client's loop."""
        return trio.TooSlowError if self.kind == "trio" else TimeoutError

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return self._wrap(await self._run(partial(attr, *args, **kwargs)))

        return call

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, JobHandle | BlockingJobHandle):
            return Driven(value, self._run, self.kind)
        if isinstance(value, list) and value and isinstance(value[0],
                                                           JobHandle | BlockingJobHandle):
            return [self._wrap(v) for v in value]
        return value


async def _call_maybe_async(fn: Callable[[], Any]) -> Any:
    result = fn()
    if inspect.isawaitable(result):
        result = await result
    return result


@asynccontextmanager
async def open_client(kind: str, address: str, *, wrap: Wrap | None = None,
                      retry: RetrySettings | None = None,
                      seeds: tuple[str, ...] = ()) -> AsyncIterator[Driven]:
    """A connected client of ``kind`` (its shard map fetched), closed on exit."""
    seeds = seeds or (address,)
    retry = retry or RetrySettings(initial_backoff_s=0.01)
    token = trio.lowlevel.current_trio_token()

    if kind == "trio":
        async def to_trio_direct(fn: Callable[[], Awaitable[Any]]) -> Any:
            return await fn()

        async with GrpcConnector.open() as connector:
            inner = wrap(connector, to_trio_direct) if wrap else connector
            client = SiloClient(inner, seeds, retry=retry)
            try:
                await client.refresh_shard_map()
                yield Driven(client, _call_maybe_async, kind)
            finally:
                await client.aclose()
        return

    async def to_trio_from_thread(fn: Callable[[], Awaitable[Any]]) -> Any:
        # Blocks the client's loop thread while trio runs ``fn`` (the test's own step).
        return trio.from_thread.run(fn, trio_token=token)

    connector = AsyncioGrpcConnector()
    inner = wrap(connector, to_trio_from_thread) if wrap else connector

    if kind == "blocking":
        blocking = BlockingSiloClient(inner, seeds, retry=retry)

        async def run_blocking(fn: Callable[[], Any]) -> Any:
            return await trio.to_thread.run_sync(fn)

        try:
            await run_blocking(blocking.refresh_shard_map)
            yield Driven(blocking, run_blocking, kind)
        finally:
            await trio.to_thread.run_sync(blocking.close)
        return

    factory = uvloop.new_event_loop if kind == "uvloop" else asyncio.SelectorEventLoop
    loop = LoopThread(name=f"test-{kind}-loop", loop_factory=factory)

    async def run_on_loop(fn: Callable[[], Any]) -> Any:
        return await trio.to_thread.run_sync(loop.run, partial(_call_maybe_async, fn))

    client = await run_on_loop(partial(AsyncioSiloClient, inner, seeds, retry=retry))
    try:
        await run_on_loop(client.refresh_shard_map)
        if kind == "uvloop":
            running = await run_on_loop(lambda: type(asyncio.get_running_loop()).__module__)
            assert running.startswith("uvloop"), running
        yield Driven(client, run_on_loop, kind)
    finally:
        async def close() -> None:
            await client.aclose()
            await connector.aclose()

        await trio.to_thread.run_sync(loop.close, close)
