"""AsyncioSiloClient: the client for asyncio programs (FastAPI, aiohttp, plain asyncio, uvloop).

The same methods, arguments, return types, routing, retries and idempotent ids as the trio
:class:`~silo.client.SiloClient` (both are :class:`silo.client.core.ClientCore`), run on the
caller's own asyncio loop with grpclib (:mod:`silo.transport.asyncio_grpc`): no trio loop and
no trio-asyncio. ``JobHandle.result(timeout=...)`` raises ``TimeoutError``.

    async with AsyncioSiloClient.connect("127.0.0.1:7450") as client:
        job = await client.enqueue("emails", {"to": "ada@example.com"})
        print(await job.result(timeout=30))

A client belongs to the loop it first runs on; make one per loop.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from silo.client.core import ClientCore
from silo.rpc import Connector
from silo.transport.asyncio_grpc import ASYNCIO_BACKEND, AsyncioGrpcConnector

__all__ = ["AsyncioSiloClient"]


class AsyncioSiloClient(ClientCore):
    """A connection to a silo cluster from asyncio code. Use :meth:`connect` (real network) or
    construct it with any :class:`~silo.rpc.Connector` whose channels run on asyncio (e.g.
    :class:`~silo.transport.asyncio_grpc.AsyncioGrpcConnector`)."""

    backend = ASYNCIO_BACKEND

    @classmethod
    def open_connector(
        cls, *, token: str | None, max_message_bytes: int
    ) -> AbstractAsyncContextManager[Connector]:
        return AsyncioGrpcConnector.open(token=token, max_message_bytes=max_message_bytes)
