"""SiloClient: the client for trio programs (and silo's own worker, CLI and simulator).

Every method is :class:`silo.client.core.ClientCore`'s (routing, retries, idempotent
enqueues: see that module's docstring), run on trio; :meth:`SiloClient.connect` uses the
grpclib transport through trio-asyncio (:mod:`silo.transport.grpc`). For asyncio programs see
:class:`silo.client.AsyncioSiloClient`, for blocking code :class:`silo.client.BlockingSiloClient`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from silo.client.backend import TRIO_BACKEND
from silo.client.core import MAX_MESSAGE_BYTES, ClientCore
from silo.client.messages import (
    ENQUEUE_BATCH_MAX_BYTES,
    ENQUEUE_BATCH_MAX_JOBS,
    batch_chunks,
    raise_refused,
)
from silo.client.retrying import RETRYABLE, RetrySettings
from silo.rpc import Connector

__all__ = [
    "ENQUEUE_BATCH_MAX_BYTES",
    "ENQUEUE_BATCH_MAX_JOBS",
    "MAX_MESSAGE_BYTES",
    "RETRYABLE",
    "RetrySettings",
    "SiloClient",
    "batch_chunks",
    "raise_refused",
]


class SiloClient(ClientCore):
    """A connection to a silo cluster from trio code. Use :meth:`connect` (real network) or
    construct it with any :class:`~silo.rpc.Connector` (the simulator's)."""

    backend = TRIO_BACKEND

    @classmethod
    def open_connector(
        cls, *, token: str | None, max_message_bytes: int
    ) -> AbstractAsyncContextManager[Connector]:
        return _grpc_connector(token, max_message_bytes)


@asynccontextmanager
async def _grpc_connector(token: str | None, max_message_bytes: int) -> AsyncIterator[Connector]:
    from silo.transport.grpc import GrpcConnector

    async with GrpcConnector.open(token=token, max_message_bytes=max_message_bytes) as connector:
        yield connector
