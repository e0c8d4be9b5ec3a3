"""gRPC transport: grpclib over TCP, run on trio through trio-asyncio.

The wire is standard gRPC over HTTP/2 (``content-type: application/grpc``, length-prefixed
protobuf messages, status in trailers), so stubs generated for any language can call a
:class:`GrpcServer`. Internally both sides use a pass-through codec: handlers and
:meth:`GrpcChannel.call` see the encoded protobuf bytes and never a message class.

Server::

    server = GrpcServer({method_path("Enqueue"): enqueue_handler}, token="s3cret")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "0.0.0.0", 7450)
        ...
        await server.shutdown(grace=5.0)     # or cancel the nursery

Client::

    async with GrpcConnector.open(token="s3cret") as connector:
        channel = await connector.connect("10.0.0.7:7450")
        reply = await channel.call(method_path("Enqueue"), bytes(request), timeout=5.0)

Both need a trio-asyncio loop (:func:`silo.transport.aio.open_asyncio_loop`);
``GrpcServer.serve`` and ``GrpcConnector.open`` open one if none is active. A
:class:`GrpcChannel` remembers the loop that was active when it was created (or first used) and
keeps working from any trio task as long as that loop is open.

Status mapping on the client: the server's status arrives as :class:`~silo.rpc.RpcError` with its
code, message and (string-valued) trailing metadata; a refused, reset or lost connection is
``UNAVAILABLE``; the call's timeout (sent to the server as ``grpc-timeout`` and also enforced
locally) is ``DEADLINE_EXCEEDED``.

Streams (client side only): :meth:`GrpcChannel.open_stream` opens a bidirectional streaming call
(:class:`GrpcStream`, the :class:`~silo.rpc.ClientStream` of the seam) for servers such as etcd
whose Watch and LeaseKeepAlive are streams. Statuses map as for unary calls; a stream has no
deadline, its caller bounds each ``recv`` itself. :class:`GrpcServer` serves unary methods only.

Message size: requests and responses are limited to ``max_message_bytes`` (16 MiB by default).
The server rejects a larger request with ``RESOURCE_EXHAUSTED`` after reading only its 5-byte
length prefix (the body is never buffered), and a response the handler made too large with
``RESOURCE_EXHAUSTED`` as well; a channel refuses to send a request over its limit
(``RESOURCE_EXHAUSTED``, nothing is sent) and fails a call whose response exceeds it with
``RESOURCE_EXHAUSTED``. grpclib itself has no message size limit.

Authentication: with a ``token``, every call must carry ``authorization: Bearer <token>``, except
the ``grpc.health.v1.Health`` service, which is always open. Otherwise ``UNAUTHENTICATED``.

Health: ``/grpc.health.v1.Health/Check`` answers ``SERVING`` for the empty service name and for
every service with a registered handler, ``NOT_FOUND`` for other names, and ``NOT_SERVING`` while
the server drains. ``Watch`` is not implemented (``UNIMPLEMENTED``).

Shutdown (``shutdown(grace)`` or cancelling ``serve``): the listening socket closes at once, calls
arriving on existing connections fail with ``UNAVAILABLE``, calls in flight get up to ``grace``
seconds to finish, then the remaining ones are cancelled and every connection is closed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import grpclib.client
import grpclib.server
import h2.exceptions
import trio
import trio_asyncio
from grpclib.const import Cardinality, Status
from grpclib.const import Handler as _GrpclibHandler
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.metadata import encode_metadata

from silo.errors import Code, SiloError
from silo.rpc import CallContext, Handler, RpcError
from silo.transport.aio import current_asyncio_loop, open_asyncio_loop
from silo.transport.coalesce import coalesce_writes
from silo.transport.grpclib_calls import (
    RawCodec,
    check_request_size,
    new_grpclib_channel,
    parse_address,
    request_headers,
    unary_call,
)
from silo.transport.grpclib_calls import str_metadata as _str_metadata

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "HEALTH_CHECK_METHOD",
    "HEALTH_SERVICE",
    "GrpcChannel",
    "GrpcConnector",
    "GrpcServer",
    "GrpcStream",
    "parse_address",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
HEALTH_SERVICE = "grpc.health.v1.Health"
HEALTH_CHECK_METHOD = f"/{HEALTH_SERVICE}/Check"

# grpc.health.v1.HealthCheckResponse.ServingStatus
_SERVING = 1
_NOT_SERVING = 2

# How much longer than the call's timeout the trio side waits before giving up by itself (the
# grpc-timeout deadline inside grpclib normally fires first).
_LOCAL_DEADLINE_SLACK = 0.5
# How long shutdown waits for cancelled handlers to unwind after the grace period.
_CANCEL_WAIT = 2.0
_DRAIN_POLL = 0.01


def _format_peer(addr: Any) -> str:
    if not isinstance(addr, tuple) or len(addr) < 2:
        return ""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _valid_metadata(metadata: Mapping[str, str], *, what: str) -> list[tuple[str, str]]:
    """Entries of ``metadata`` that are valid gRPC ASCII headers (keys lower-cased).

    Invalid entries are dropped with a warning: a bad header would otherwise fail the whole
    response.
    """
    result: list[tuple[str, str]] = []
    for key, value in metadata.items():
        entry = (str(key).lower(), value)
        try:
            encode_metadata([entry])
        except (TypeError, ValueError):
            log.warning("dropping %s metadata %r=%r: not a valid gRPC header", what, key, value)
            continue
        result.append(entry)
    return result


def _single_leaf(exc: BaseException) -> BaseException:
    """Unwrap exception groups that hold exactly one exception (nurseries in handlers)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _parse_health_service(data: bytes) -> str:
    """Field 1 (``service``) of a grpc.health.v1.HealthCheckRequest; unknown fields skipped."""

    def varint(pos: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            if pos >= len(data):
                raise ValueError("truncated varint")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result, pos
            shift += 7

    service = ""
    pos = 0
    while pos < len(data):
        tag, pos = varint(pos)
        field_number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            _, pos = varint(pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length, pos = varint(pos)
            if field_number == 1:
                service = data[pos : pos + length].decode("utf-8")
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    if pos != len(data):
        raise ValueError("truncated message")
    return service


class _MappingWithFallback(dict[str, _GrpclibHandler]):
    """Method mapping whose ``get`` answers unknown paths with a fallback handler.

    grpclib's own answer to an unknown method is a trailers-only response without a
    ``content-type`` header, which grpclib clients (and so betterproto2 stubs) report as
    ``UNKNOWN: Missing content-type header`` instead of ``UNIMPLEMENTED``.
    """

    def __init__(self, mapping: Mapping[str, _GrpclibHandler], fallback: _GrpclibHandler) -> None:
        super().__init__(mapping)
        self._fallback = fallback

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key, self._fallback)


async def _unimplemented(stream: grpclib.server.Stream[Any, Any]) -> None:
    await _send_status(stream, Code.UNIMPLEMENTED, "method not found")


class _TrackingServer(grpclib.server.Server):
    """grpclib server that remembers its connections so shutdown can close them, and answers
    unknown methods with a well-formed UNIMPLEMENTED.

    (grpclib's own ``close()`` cancels handlers but leaves accepted connections open.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._protocols: weakref.WeakSet[Any] = weakref.WeakSet()
        self._mapping = _MappingWithFallback(
            self._mapping,
            _GrpclibHandler(_unimplemented, Cardinality.UNARY_UNARY, bytes, bytes),
        )

    def _protocol_factory(self) -> Any:
        protocol = coalesce_writes(super()._protocol_factory())
        self._protocols.add(protocol)
        return protocol

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    def close_connections(self) -> None:
        for protocol in list(self._protocols):
            processor = getattr(protocol, "processor", None)
            if processor is not None:
                processor.close("server shut down")

    def bound_port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])


class _Servable:
    """grpclib's IServable: a fixed path -> handler mapping."""

    def __init__(self, mapping: dict[str, _GrpclibHandler]) -> None:
        self._mapping = mapping

    def __mapping__(self) -> dict[str, _GrpclibHandler]:
        return self._mapping


class GrpcServer:
    """Serves unary :data:`~silo.rpc.Handler` functions over gRPC.

    ``handlers`` maps full method paths (``"/silo.v1.Silo/Enqueue"``) to trio handlers. A
    :class:`~silo.errors.SiloError` or :class:`~silo.rpc.RpcError` raised by a handler becomes
    the call's status, message and trailing metadata; any other exception is logged and becomes
    ``INTERNAL``. Unknown methods get ``UNIMPLEMENTED``.
    """

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        shutdown_grace: float = 5.0,
    ) -> None:
        for path in handlers:
            parts = path.split("/")
            if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
                raise ValueError(f"method must be a full path like /pkg.Service/Method: {path!r}")
        if token is not None and not token:
            raise ValueError("token must be non-empty (or None for no authentication)")
        self._handlers = dict(handlers)
        self._services = frozenset(path.split("/")[1] for path in self._handlers)
        self._token = token
        self._max_message_bytes = max_message_bytes
        self._shutdown_grace = shutdown_grace
        self._server: _TrackingServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port: int | None = None
        self._inflight = 0
        self._draining = False
        self._started = False
        self._stop_requested = trio.Event()
        self._stopped = trio.Event()

    @property
    def port(self) -> int | None:
        """The port the server listens on, once started (``None`` before)."""
        return self._port

    @property
    def inflight(self) -> int:
        """Calls currently being handled."""
        return self._inflight

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (port 0: any free port) until cancelled or shut down.

        Reports the bound port through ``task_status`` (``await nursery.start(server.serve)``).
        Opens a trio-asyncio loop if none is active. On cancellation it drains like
        ``shutdown()`` with the constructor's ``shutdown_grace`` (shielded, so cancellation takes
        up to that long to complete).
        """
        if self._started:
            raise RuntimeError("GrpcServer.serve() can only be called once")
        self._started = True
        try:
            async with open_asyncio_loop() as loop:
                self._loop = loop
                try:
                    await trio_asyncio.aio_as_trio(self._start, loop=loop)(host, port)
                    assert self._port is not None
                    log.info("gRPC server listening on %s:%d", host, self._port)
                    task_status.started(self._port)
                    await self._stop_requested.wait()
                finally:
                    with trio.CancelScope(shield=True):
                        await self._close(self._shutdown_grace)
        finally:
            self._stopped.set()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop serving: refuse new calls, give calls in flight up to ``grace`` seconds (default:
        the constructor's ``shutdown_grace``), then cancel the rest and close all connections.
        Returns when ``serve()`` has finished its cleanup."""
        if grace is not None:
            self._shutdown_grace = grace
        if not self._started:
            return
        self._stop_requested.set()
        await self._stopped.wait()

    # -- lifecycle (asyncio side) ------------------------------------------------------------

    async def _start(self, host: str, port: int) -> None:
        mapping: dict[str, _GrpclibHandler] = {
            path: _GrpclibHandler(
                partial(self._handle_unary, path, handler), Cardinality.UNARY_UNARY, bytes, bytes
            )
            for path, handler in self._handlers.items()
        }
        mapping.setdefault(
            HEALTH_CHECK_METHOD,
            _GrpclibHandler(self._handle_health_check, Cardinality.UNARY_UNARY, bytes, bytes),
        )
        server = _TrackingServer([_Servable(mapping)], codec=RawCodec())
        await server.start(host, port)
        self._server = server
        self._port = server.bound_port()

    async def _close(self, grace: float) -> None:
        self._draining = True
        server, loop = self._server, self._loop
        if server is None or loop is None:
            return
        await trio_asyncio.aio_as_trio(_call_sync, loop=loop)(server.stop_listening)
        with trio.move_on_after(max(grace, 0.0)):
            while self._inflight:
                await trio.sleep(_DRAIN_POLL)
        if self._inflight:
            log.warning(
                "gRPC server: %d call(s) still running after %.1fs grace; cancelling",
                self._inflight,
                grace,
            )
        await trio_asyncio.aio_as_trio(_call_sync, loop=loop)(server.close)
        await trio_asyncio.aio_as_trio(_call_sync, loop=loop)(server.close_connections)
        with trio.move_on_after(_CANCEL_WAIT) as scope:
            await trio_asyncio.aio_as_trio(server.wait_closed, loop=loop)()
        if scope.cancelled_caught:
            log.warning("gRPC server: cancelled handlers did not finish within %.1fs", _CANCEL_WAIT)
        log.info("gRPC server on port %s stopped", self._port)

    # -- per call (asyncio side) -------------------------------------------------------------

    def _authorized(self, stream: grpclib.server.Stream[Any, Any]) -> bool:
        if self._token is None:
            return True
        expected = self._token.encode()
        metadata = stream.metadata
        values = metadata.getall("authorization", []) if metadata is not None else []
        for value in values:
            if not isinstance(value, str):
                continue
            scheme, _, credential = value.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                credential.strip().encode(), expected
            ):
                return True
        return False

    async def _recv_request(self, stream: grpclib.server.Stream[Any, Any]) -> bytes:
        """Read the single request message, checking its length prefix before the body."""
        h2_stream = getattr(stream, "_stream", None)
        if h2_stream is None or not hasattr(h2_stream, "recv_data"):  # grpclib internals moved
            message = await stream.recv_message()
            if message is None:
                raise GRPCError(Status.INTERNAL, "request message missing")
            if len(message) > self._max_message_bytes:
                raise GRPCError(Status.RESOURCE_EXHAUSTED, self._too_large("request", len(message)))
            return bytes(message)
        prefix = await h2_stream.recv_data(5)
        if not prefix:
            raise GRPCError(Status.INTERNAL, "request message missing")
        if len(prefix) != 5:
            raise GRPCError(Status.INTERNAL, "truncated message prefix")
        if prefix[0]:
            raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
        length = int.from_bytes(prefix[1:5], "big")
        if length > self._max_message_bytes:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, self._too_large("request", length))
        data = await h2_stream.recv_data(length)
        if len(data) != length:
            raise GRPCError(Status.INTERNAL, "truncated request message")
        return bytes(data)

    def _too_large(self, what: str, size: int) -> str:
        return f"{what} message of {size} bytes exceeds the limit of {self._max_message_bytes}"

    async def _handle_unary(
        self, method: str, handler: Handler, stream: grpclib.server.Stream[Any, Any]
    ) -> None:
        self._inflight += 1
        try:
            if self._draining:
                await _send_status(stream, Code.UNAVAILABLE, "server is shutting down")
                return
            if not self._authorized(stream):
                await _send_status(stream, Code.UNAUTHENTICATED, "missing or invalid bearer token")
                return
            request = await self._recv_request(stream)
            metadata = _str_metadata(stream.metadata)
            metadata.pop("authorization", None)
            ctx = CallContext(
                method=method,
                metadata=metadata,
                peer=_format_peer(stream.peer.addr() if stream.peer is not None else None),
            )
            result = await trio_asyncio.trio_as_aio(self._run_handler)(handler, request, ctx)
            if isinstance(result, RpcError):
                await _send_status(stream, result.code, result.message, result.metadata)
            elif len(result) > self._max_message_bytes:
                log.error("%s: %s", method, self._too_large("response", len(result)))
                await _send_status(
                    stream, Code.RESOURCE_EXHAUSTED, self._too_large("response", len(result))
                )
            else:
                await stream.send_message(result)
        finally:
            self._inflight -= 1

    async def _run_handler(self, handler: Handler, request: bytes, ctx: CallContext) -> Any:
        """Trio side of a call: run the handler, turn its failure into an RpcError value."""
        try:
            response = await handler(request, ctx)
        except Exception as exc:
            leaf = _single_leaf(exc)
            if isinstance(leaf, RpcError):
                return leaf
            if isinstance(leaf, SiloError):
                return RpcError.from_silo_error(leaf)
            log.exception("handler for %s failed", ctx.method)
            return RpcError(Code.INTERNAL, "internal server error")
        if not isinstance(response, bytes | bytearray | memoryview):
            log.error("handler for %s returned %s, not bytes", ctx.method, type(response).__name__)
            return RpcError(Code.INTERNAL, "internal server error")
        return bytes(response)

    async def _handle_health_check(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        self._inflight += 1
        try:
            request = await self._recv_request(stream)
            try:
                service = _parse_health_service(request)
            except ValueError as exc:
                await _send_status(stream, Code.INVALID_ARGUMENT, f"bad HealthCheckRequest: {exc}")
                return
            if service and service not in self._services and service != HEALTH_SERVICE:
                await _send_status(stream, Code.NOT_FOUND, f"unknown service {service!r}")
                return
            status = _NOT_SERVING if self._draining else _SERVING
            await stream.send_message(bytes([0x08, status]))  # HealthCheckResponse{status}
        finally:
            self._inflight -= 1


def _call_sync(fn: Any) -> Any:
    """Adapter so that aio_as_trio can run a plain function inside the asyncio context."""

    async def run() -> Any:
        return fn()

    return run()


STATUS_MESSAGE_MAX_CHARS = 1024
"""The longest status message sent (in the ``grpc-message`` trailer); longer ones are cut, so
no message can make a header block too large for the peer's HTTP/2 limits."""


def cap_status_message(message: str) -> str:
    """``message`` cut to :data:`STATUS_MESSAGE_MAX_CHARS` characters (``...`` marks a cut)."""
    if len(message) <= STATUS_MESSAGE_MAX_CHARS:
        return message
    return message[: STATUS_MESSAGE_MAX_CHARS - 3] + "..."


async def _send_status(
    stream: grpclib.server.Stream[Any, Any],
    code: int,
    message: str,
    metadata: Mapping[str, str] | None = None,
) -> None:
    status = Status(code) if code != Code.OK else Status.UNKNOWN
    await stream.send_trailing_metadata(
        status=status,
        status_message=cap_status_message(message),
        metadata=_valid_metadata(metadata or {}, what="trailing"),
    )


# -- client ---------------------------------------------------------------------------------


class GrpcChannel:
    """:class:`~silo.rpc.Channel` to one ``host:port`` over grpclib.

    Connects lazily on the first call and reconnects on a later call after the connection was
    lost. Many concurrent calls share the one HTTP/2 connection. Needs a trio-asyncio loop: the
    one active when the channel is created or first used (see :mod:`silo.transport.aio`).
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.address = address
        self._host, self._port = parse_address(address)
        self._auth = [("authorization", f"Bearer {token}")] if token is not None else []
        self._max_message_bytes = max_message_bytes
        self._loop = loop if loop is not None else current_asyncio_loop()
        self._channel: grpclib.client.Channel | None = None
        self._closed = False
        self._on_close: list[Any] = []

    def __repr__(self) -> str:
        return f"GrpcChannel({self.address!r})"

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = current_asyncio_loop()
        if self._loop is None or self._loop.is_closed():
            raise RuntimeError(
                "GrpcChannel needs an open trio-asyncio loop: run it inside "
                "`async with silo.transport.aio.open_asyncio_loop():` or GrpcConnector.open()"
            )
        return self._loop

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
        loop = self._require_loop()
        call = trio_asyncio.aio_as_trio(self._call, loop=loop)
        if timeout is None:
            return await call(method, bytes(request), None, headers)
        if timeout <= 0 or math.isnan(timeout):
            raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded before the call started")
        with trio.move_on_after(timeout + _LOCAL_DEADLINE_SLACK):
            return await call(method, bytes(request), timeout, headers)
        raise RpcError(Code.DEADLINE_EXCEEDED, f"deadline exceeded ({timeout}s)")

    async def _call(
        self,
        method: str,
        request: bytes,
        timeout: float | None,
        headers: list[tuple[str, str]],
    ) -> bytes:
        """asyncio side of :meth:`call`."""
        if self._closed:
            raise RpcError(Code.UNAVAILABLE, f"channel to {self.address} is closed")
        return await unary_call(
            self._grpclib_channel(), self.address, method, request, timeout, headers,
            self._max_message_bytes,
        )

    async def open_stream(
        self, method: str, *, metadata: dict[str, str] | None = None
    ) -> GrpcStream:
        """A bidirectional streaming call to ``method`` over this channel's connection; opens
        lazily on the first ``send``/``recv``."""
        if self._closed:
            raise RpcError(Code.UNAVAILABLE, f"channel to {self.address} is closed")
        headers = request_headers(metadata, self._auth)
        return GrpcStream(self, method, headers, self._require_loop())

    def _grpclib_channel(self) -> grpclib.client.Channel:
        if self._closed:
            raise RpcError(Code.UNAVAILABLE, f"channel to {self.address} is closed")
        if self._channel is None:
            self._channel = new_grpclib_channel(self._host, self._port)
        return self._channel

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        channel, self._channel = self._channel, None
        for callback in self._on_close:
            callback(self)
        if channel is None:
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        await trio_asyncio.aio_as_trio(_call_sync, loop=loop)(channel.close)


class GrpcStream:
    """:class:`~silo.rpc.ClientStream` over grpclib (``Cardinality.STREAM_STREAM``).

    Each operation runs on the asyncio side through trio-asyncio; failures map to
    :class:`~silo.rpc.RpcError` as in :meth:`GrpcChannel.call`. Not safe for concurrent ``send``
    calls (or concurrent ``recv`` calls) from several trio tasks.
    """

    def __init__(
        self,
        owner: GrpcChannel,
        method: str,
        headers: list[tuple[str, str]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._owner = owner
        self._method = method
        self._headers = headers
        self._loop = loop
        self._stream: grpclib.client.Stream[bytes, bytes] | None = None
        self._finished = False  # the server ended the call (status received)
        self._closed = False

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._closed:
            raise RpcError(Code.CANCELLED, f"stream {self._method} is closed")
        if self._loop.is_closed():
            raise RpcError(Code.UNAVAILABLE, "the asyncio loop of this stream is closed")
        return await trio_asyncio.aio_as_trio(self._mapped, loop=self._loop)(fn, *args)

    async def _mapped(self, fn: Any, *args: Any) -> Any:
        address = self._owner.address
        try:
            return await fn(*args)
        except GRPCError as exc:
            self._finished = True
            trailing = self._stream.trailing_metadata if self._stream is not None else None
            raise RpcError(exc.status.value, exc.message or "", _str_metadata(trailing)) from None
        except StreamTerminatedError as exc:
            # A server may send its status and then reset the stream (grpclib does, for a call
            # it ends before the client half-closed): report that status if it arrived.
            status = self._status_before_reset()
            if status is not None:
                raise status from None
            raise RpcError(Code.UNAVAILABLE, f"{address}: {exc}") from None
        except TimeoutError as exc:
            raise RpcError(Code.UNAVAILABLE, f"{address}: {exc}") from None
        except OSError as exc:
            raise RpcError(Code.UNAVAILABLE, f"{address}: {exc}") from None
        except ProtocolError as exc:
            raise RpcError(Code.UNAVAILABLE, f"{address}: protocol error: {exc}") from None
        except h2.exceptions.StreamClosedError:
            raise RpcError(Code.UNAVAILABLE, f"{address}: the server closed the stream") from None

    def _status_before_reset(self) -> RpcError | None:
        if self._stream is None:
            return None
        try:
            self._stream._maybe_raise()
        except GRPCError as exc:
            self._finished = True
            return RpcError(exc.status.value, exc.message or "")
        except Exception:  # no usable status in what arrived
            return None
        return None

    async def _open(self) -> grpclib.client.Stream[bytes, bytes]:
        if self._stream is None:
            stream = self._owner._grpclib_channel().request(
                self._method, Cardinality.STREAM_STREAM, bytes, bytes, metadata=self._headers
            )
            await stream.__aenter__()
            self._stream = stream
            await stream.send_request()
        return self._stream

    async def _send(self, message: bytes) -> None:
        stream = await self._open()
        await stream.send_message(message)

    async def _recv(self) -> bytes | None:
        stream = await self._open()
        reply = await stream.recv_message()
        if reply is not None:
            return bytes(reply)
        await self._end()
        await stream.recv_trailing_metadata()  # raises GRPCError for a non-OK status
        self._finished = True
        return None

    async def _end(self) -> None:
        stream = await self._open()
        if stream._end_done:
            return
        try:
            await stream.end()
        except h2.exceptions.StreamClosedError:
            # The server already ended the call (its status is waiting for recv): there is
            # nothing left to half-close, so grpclib may read the status now.
            stream._end_done = True

    async def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            if not self._finished and stream._stream.closable:
                await stream.cancel()
        except Exception as exc:  # the server closed the stream meanwhile: nothing to cancel
            log.debug("cancelling stream %s: %r", self._method, exc)
        finally:
            # An exception value makes grpclib skip waiting for the status and reset the stream.
            await stream.__aexit__(
                asyncio.CancelledError, asyncio.CancelledError(), None
            )

    async def send(self, message: bytes) -> None:
        if len(message) > self._owner._max_message_bytes:
            raise RpcError(Code.RESOURCE_EXHAUSTED, f"message of {len(message)} bytes too large")
        await self._run(self._send, bytes(message))

    async def recv(self) -> bytes | None:
        return await self._run(self._recv)  # type: ignore[no-any-return]

    async def close_send(self) -> None:
        await self._run(self._end)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._stream is None or self._loop.is_closed():
            return
        with trio.CancelScope(shield=True):
            try:
                await trio_asyncio.aio_as_trio(self._mapped, loop=self._loop)(self._close)
            except (RpcError, asyncio.CancelledError):
                pass


class GrpcConnector:
    """:class:`~silo.rpc.Connector` making :class:`GrpcChannel` objects.

    ``connect()`` does no I/O (channels connect lazily) and returns a new channel each time:
    callers that talk to the same address repeatedly should keep the channel. ``aclose()``
    closes every channel this connector made that is still open.
    """

    def __init__(
        self, *, token: str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        self._token = token
        self._max_message_bytes = max_message_bytes
        self._channels: dict[int, GrpcChannel] = {}

    @classmethod
    @asynccontextmanager
    async def open(
        cls, *, token: str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> AsyncIterator[GrpcConnector]:
        """A connector inside a trio-asyncio loop (opened if none is active); its channels are
        closed on exit."""
        async with open_asyncio_loop():
            connector = cls(token=token, max_message_bytes=max_message_bytes)
            try:
                yield connector
            finally:
                with trio.CancelScope(shield=True):
                    await connector.aclose()

    async def connect(self, address: str) -> GrpcChannel:
        loop = current_asyncio_loop()
        if loop is None:
            raise RuntimeError(
                "GrpcConnector.connect() needs an open trio-asyncio loop: use "
                "`async with GrpcConnector.open()` or silo.transport.aio.open_asyncio_loop()"
            )
        channel = GrpcChannel(
            address, token=self._token, max_message_bytes=self._max_message_bytes, loop=loop
        )
        self._channels[id(channel)] = channel
        channel._on_close.append(lambda ch: self._channels.pop(id(ch), None))
        return channel

    async def aclose(self) -> None:
        for channel in list(self._channels.values()):
            await channel.aclose()
