"""gRPC client channels for asyncio programs: grpclib on the caller's own event loop.

:class:`AsyncioGrpcChannel` is the :class:`~silo.rpc.Channel` of the seam for code that runs on
an asyncio loop (plain asyncio, uvloop, FastAPI, aiohttp...). It runs grpclib directly on the
running loop: no trio, no trio-asyncio (this module imports neither, so importing it leaves
asyncio's loop policy alone). Statuses map as in :mod:`silo.transport.grpclib_calls`; the
call's timeout is sent to the server as ``grpc-timeout`` and also enforced locally.

A channel belongs to the loop that made its first call: its connection lives there. Using it
from another loop raises ``RuntimeError`` (make one client per loop).

:data:`ASYNCIO_BACKEND` gives :class:`silo.client.core.ClientCore` asyncio's sleep, lock and
timeouts.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar

import grpclib.client

from silo.errors import Code
from silo.rpc import RpcError
from silo.transport.grpclib_calls import (
    check_request_size,
    new_grpclib_channel,
    parse_address,
    request_headers,
    unary_call,
)

__all__ = ["ASYNCIO_BACKEND", "AsyncioBackend", "AsyncioGrpcChannel", "AsyncioGrpcConnector"]

T = TypeVar("T")

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# How much longer than the call's timeout the local deadline waits (grpclib's own deadline,
# from grpc-timeout, normally fires first).
_LOCAL_DEADLINE_SLACK_S = 0.5


class AsyncioGrpcChannel:
    """:class:`~silo.rpc.Channel` to one ``host:port`` over grpclib on the running asyncio loop.

    Connects lazily on the first call and reconnects on a later call after the connection was
    lost; concurrent calls share the one HTTP/2 connection."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.address = address
        self._host, self._port = parse_address(address)
        self._auth = [("authorization", f"Bearer {token}")] if token is not None else []
        self._max_message_bytes = max_message_bytes
        self._channel: grpclib.client.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"AsyncioGrpcChannel({self.address!r})"

    def _grpclib_channel(self) -> grpclib.client.Channel:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(
                f"channel to {self.address} belongs to another event loop: make one client "
                "per loop"
            )
        if self._channel is None:
            self._channel = new_grpclib_channel(self._host, self._port)
        return self._channel

    async def call(
        self,
        method: str,
        request: bytes,
        *,
        timeout: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> bytes:
        if self._closed:
            raise RpcError(Code.UNAVAILABLE, f"channel to {self.address} is closed")
        check_request_size(request, self._max_message_bytes)
        headers = request_headers(metadata, self._auth)
        channel = self._grpclib_channel()
        call = unary_call(channel, self.address, method, bytes(request), timeout, headers,
                          self._max_message_bytes)
        if timeout is None:
            return await call
        if timeout <= 0 or math.isnan(timeout):
            call.close()
            raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded before the call started")
        try:
            async with asyncio.timeout(timeout + _LOCAL_DEADLINE_SLACK_S):
                return await call
        except TimeoutError:
            raise RpcError(Code.DEADLINE_EXCEEDED, f"deadline exceeded ({timeout}s)") from None

    async def aclose(self) -> None:
        """Close the connection (calls in flight fail with UNAVAILABLE). Idempotent."""
        if self._closed:
            return
        self._closed = True
        channel, self._channel = self._channel, None
        if channel is not None and self._loop is not None and not self._loop.is_closed():
            channel.close()


class AsyncioGrpcConnector:
    """:class:`~silo.rpc.Connector` making :class:`AsyncioGrpcChannel` objects.

    Construction and ``connect()`` do no I/O and bind no loop, so a connector may be made on
    one thread and used on another thread's loop. ``aclose()`` closes every channel it made."""

    def __init__(
        self, *, token: str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        self._token = token
        self._max_message_bytes = max_message_bytes
        self._channels: list[AsyncioGrpcChannel] = []

    @classmethod
    @asynccontextmanager
    async def open(
        cls, *, token: str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> AsyncIterator[AsyncioGrpcConnector]:
        """A connector whose channels are closed on exit."""
        connector = cls(token=token, max_message_bytes=max_message_bytes)
        try:
            yield connector
        finally:
            await connector.aclose()

    async def connect(self, address: str) -> AsyncioGrpcChannel:
        channel = AsyncioGrpcChannel(address, token=self._token,
                                     max_message_bytes=self._max_message_bytes)
        self._channels.append(channel)
        return channel

    async def aclose(self) -> None:
        channels, self._channels = self._channels, []
        for channel in channels:
            await channel.aclose()


class AsyncioBackend:
    """asyncio's sleep, lock, timeout and shielding, for
    :class:`silo.client.core.ClientCore` (see :class:`silo.client.backend.AsyncBackend`)."""

    name = "asyncio"

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def lock(self) -> AbstractAsyncContextManager[object]:
        return asyncio.Lock()

    async def within(self, seconds: float | None, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()``, raising ``TimeoutError`` after ``seconds`` (None: no limit)."""
        if seconds is None:
            return await fn()
        async with asyncio.timeout(seconds):
            return await fn()

    async def shielded(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` even if the caller is cancelled meanwhile (it finishes first)."""
        task = asyncio.ensure_future(fn())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task])
            raise


ASYNCIO_BACKEND = AsyncioBackend()
