"""Helpers for the transport tests: a GrpcServer on 127.0.0.1 inside a trio-asyncio loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from silo.rpc import Handler
from silo.transport.aio import open_asyncio_loop
from silo.transport.grpc import GrpcServer


@asynccontextmanager
async def serving(
    handlers: Mapping[str, Handler], **server_kwargs: Any
) -> AsyncIterator[tuple[GrpcServer, str]]:
    """A running server on 127.0.0.1:<free port>, inside one trio-asyncio loop."""
    async with open_asyncio_loop(), trio.open_nursery() as nursery:
        server = GrpcServer(handlers, **server_kwargs)
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        try:
            yield server, f"127.0.0.1:{port}"
        finally:
            await server.shutdown(grace=1.0)
