"""The network seam: transport-independent RPC types.

Clients, workers and coordinators call RPCs through a :class:`Channel` (obtained from a
:class:`Connector` for a ``"host:port"`` address); servers register :data:`Handler` functions keyed
by full gRPC method path. Requests and responses are encoded protobuf messages (``bytes``); this
module knows nothing about protobuf, sockets, asyncio or grpclib, so the simulator can provide its
own channels and servers with the same failure semantics as the real grpclib transport in
:mod:`silo.transport.grpc`:

- a refused or reset connection (or a crashed host) fails the call with ``UNAVAILABLE``;
- a timeout (or a lost message or a partition) fails it with ``DEADLINE_EXCEEDED``;
- an error raised by the handler arrives as an :class:`RpcError` carrying the handler's gRPC status
  code, message and trailing metadata.

Bidirectional streams (etcd's Watch and LeaseKeepAlive) use :class:`StreamingChannel`, a
:class:`Channel` that can also open a :class:`ClientStream`; servers that stream register
:data:`StreamHandler` functions (only the simulator serves streams today; silo's own API is
unary). Messages of one stream arrive in order in each direction and are never lost, duplicated or
reordered individually: the stream as a whole breaks instead (``UNAVAILABLE``), or silently stalls
(a partition) until a deadline of the caller's own gives up and closes it.

Handlers report failures by raising :class:`silo.errors.SiloError` (or :class:`RpcError`); any
other exception becomes ``INTERNAL`` and is logged by the transport.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from silo.errors import Code, SiloError, error_for_code

__all__ = [
    "SILO_SERVICE",
    "CallContext",
    "Channel",
    "ClientStream",
    "Connector",
    "Handler",
    "RpcError",
    "ServerStream",
    "StreamHandler",
    "StreamingChannel",
    "method_path",
]

SILO_SERVICE = "silo.v1.Silo"
"""Fully qualified name of silo's gRPC service (``package.Service`` from proto/silo.proto)."""


def method_path(name: str, service: str = SILO_SERVICE) -> str:
    """The gRPC path of a method: ``method_path("Enqueue") == "/silo.v1.Silo/Enqueue"``."""
    return f"/{service}/{name}"


def _as_code(code: int) -> Code:
    try:
        return Code(code)
    except ValueError:
        return Code.UNKNOWN


class RpcError(Exception):
    """A call failed with a non-OK gRPC status.

    ``metadata`` is the trailing metadata the server sent with the status (for example
    ``{"silo-shard-owner": "10.0.0.7:7450"}``), with lower-case keys.
    """

    def __init__(
        self, code: int, message: str = "", metadata: Mapping[str, str] | None = None
    ) -> None:
        self.code: Code = _as_code(code)
        self.message: str = message
        self.metadata: dict[str, str] = dict(metadata or {})
        super().__init__(self.code, message)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"RpcError({self.code.name}, {self.message!r}, metadata={self.metadata!r})"

    @classmethod
    def from_silo_error(cls, error: SiloError) -> RpcError:
        """The status a server sends for ``error``."""
        return cls(error.code, error.message, error.metadata)

    def to_silo_error(self) -> SiloError:
        """The :class:`SiloError` subclass for this status (``NotFound`` for NOT_FOUND, ...)."""
        return error_for_code(self.code, self.message, self.metadata)


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler knows about the call besides the request bytes.

    ``metadata`` holds the request headers (invocation metadata) with lower-case keys; transport
    headers (``:path``, ``content-type``, ``grpc-timeout``, ``authorization``...) and binary
    (``-bin``) entries are not included. ``peer`` is the caller's address (``"host:port"``)
    when the transport knows it, else ``""``.
    """

    method: str
    metadata: dict[str, str] = field(default_factory=dict)
    peer: str = ""


Handler = Callable[[bytes, CallContext], Awaitable[bytes]]
"""A unary RPC handler: encoded request -> encoded response; raises SiloError/RpcError."""


@runtime_checkable
class Channel(Protocol):
    """A client's connection to one server address."""

    async def call(
        self,
        method: str,
        request: bytes,
        *,
        timeout: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> bytes:
        """Call ``method`` (a full path, see :func:`method_path`) and return the response bytes.

        Raises :class:`RpcError`: the handler's status, ``UNAVAILABLE`` when the server cannot be
        reached or the connection breaks, ``DEADLINE_EXCEEDED`` when ``timeout`` (seconds) passes
        first. A call that fails with ``UNAVAILABLE`` or ``DEADLINE_EXCEEDED`` may or may not have
        taken effect on the server.
        """
        ...

    async def aclose(self) -> None:
        """Close the connection; calls in flight fail with ``UNAVAILABLE``."""
        ...


@runtime_checkable
class Connector(Protocol):
    """Opens channels to addresses a client learns (seed list, shard-owner hints)."""

    async def connect(self, address: str) -> Channel:
        """A channel to ``address`` (``"host:port"``). May connect lazily: an unreachable address
        shows up as ``UNAVAILABLE`` on the first call, not here."""
        ...


@runtime_checkable
class ClientStream(Protocol):
    """The client's end of one bidirectional streaming call.

    Connects lazily: an unreachable server shows up as ``UNAVAILABLE`` on the first ``send`` or
    ``recv``. Streams have no deadline of their own; a caller bounds ``recv`` with its own timeout
    and then closes the stream (a ``recv`` cut short leaves the stream unusable).
    """

    async def send(self, message: bytes) -> None:
        """Send one encoded message. Raises :class:`RpcError` once the call has failed."""
        ...

    async def recv(self) -> bytes | None:
        """The next message from the server; ``None`` once the server ended the call with OK.

        Raises :class:`RpcError` with the server's status, or ``UNAVAILABLE`` when the
        connection breaks.
        """
        ...

    async def close_send(self) -> None:
        """Half-close: tell the server no more messages follow (responses keep arriving)."""
        ...

    async def aclose(self) -> None:
        """End the call; if the server has not ended it yet, it is cancelled. Idempotent."""
        ...


@runtime_checkable
class StreamingChannel(Channel, Protocol):
    """A :class:`Channel` that can also open bidirectional streams."""

    async def open_stream(
        self, method: str, *, metadata: dict[str, str] | None = None
    ) -> ClientStream:
        """A new stream calling ``method`` (a full path). May connect lazily: a server that
        cannot be reached shows up on the first ``send`` or ``recv``."""
        ...


class ServerStream(Protocol):
    """The server's end of a bidirectional streaming call, as a :data:`StreamHandler` sees it."""

    async def recv(self) -> bytes | None:
        """The next message from the client; ``None`` once the client half-closed."""
        ...

    async def send(self, message: bytes) -> None:
        """Send one encoded message to the client."""
        ...


StreamHandler = Callable[[ServerStream, CallContext], Awaitable[None]]
"""A streaming handler: returns to end the call with OK; raises SiloError/RpcError for a status.
It is cancelled when the client goes away."""
