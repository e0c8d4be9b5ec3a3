"""Bidirectional streams on the simulated network (the :class:`silo.rpc.ClientStream` and
:class:`silo.rpc.ServerStream` of the seam), for servers with ``stream_handlers`` such as the
simulated etcd.

The messages of one stream travel in order in each direction, each with a seeded latency (never
earlier than the one before it), through bounded buffers (a full buffer blocks the sender, like
HTTP/2 flow control). The per-message faults do not apply to streams (one TCP connection does not
lose, duplicate or reorder single messages). Instead: the server host crashing or stopping breaks
its streams (``UNAVAILABLE`` "connection reset" at both ends); a message that meets a partition
stalls the stream for good (it and everything after it in both directions is lost, as on a dead
connection), which the ends notice only through their own deadlines; a client closing its end
cancels the server's handler (standing in for the server's connection keepalive). A handler whose
stream broke is cancelled (its ``recv``/``send`` raise ``trio.Cancelled``), as a real server
cancels the handler of a call whose client went away.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from silo.errors import Code, SiloError
from silo.rpc import CallContext, Handler, RpcError, StreamHandler

if TYPE_CHECKING:
    from sim.network import Server, SimNetwork

STREAM_BUFFER = 64
"""Messages one direction of a stream holds in flight before its sender blocks."""


class _End:
    """The last item of a stream direction: a half-close (``status`` None from the client) or
    the call's final status (None: OK) from the server."""

    __slots__ = ("status",)

    def __init__(self, status: RpcError | None) -> None:
        self.status = status


_StreamItem = bytes | _End


class _Direction:
    """One direction of a stream: an ordered, delayed, bounded pipe (sender -> pump -> inbox)."""

    def __init__(self) -> None:
        self.wire_send, self.wire_recv = trio.open_memory_channel[tuple[float, _StreamItem]](
            STREAM_BUFFER
        )
        self.inbox_send, self.inbox_recv = trio.open_memory_channel[_StreamItem](STREAM_BUFFER)
        self.last_at = 0.0
        self.ended = False  # the sender sent its _End

    def close(self) -> None:
        self.wire_send.close()
        self.wire_recv.close()
        self.inbox_send.close()


class _Stream:
    def __init__(
        self, sid: int, src: str, server: Server, method: str, metadata: dict[str, str] | None
    ) -> None:
        self.id = sid
        self.src = src
        self.server = server
        self.method = method
        self.metadata = dict(metadata or {})
        self.gen = server.generation
        self.up = _Direction()
        self.down = _Direction()
        self.broken: RpcError | None = None
        self.stalled = False
        self.finished = False  # the client received the final status
        self.scope = trio.CancelScope()  # the pumps
        self.handler_scope = trio.CancelScope()  # the server's handler


class SimStreams:
    """The streams of one :class:`~sim.network.SimNetwork` (its latency, partitions, trace)."""

    def __init__(self, net: SimNetwork) -> None:
        self.net = net
        self._streams: dict[int, _Stream] = {}

    def host_down(self, server: Server) -> None:
        """``server`` crashed or stopped: its streams break with UNAVAILABLE."""
        for stream in list(self._streams.values()):
            if stream.server is server and stream.gen == server.generation:
                reset = RpcError(Code.UNAVAILABLE, f"connection reset by {server.name}")
                self._break(stream, reset)

    async def open(
        self, src: str, address: str, method: str, metadata: dict[str, str] | None
    ) -> SimClientStream:
        self.net._next_id += 1
        self.net.calls += 1
        sid = self.net._next_id
        server = self.net._servers.get(address)
        self.net.trace.record(f"net stream #{sid} {src}>{address} {method.rsplit('/', 1)[-1]}")
        await trio.sleep(self.net._latency())
        if server is None or not server.serving:
            self.net.trace.record(f"net refused #{sid}")
            dead = _Stream(sid, src, _Refused(address), method, metadata)
            dead.broken = RpcError(Code.UNAVAILABLE, f"connection refused: {address}")
            dead.up.close()
            dead.down.close()
            return SimClientStream(self, dead)
        stream = _Stream(sid, src, server, method, metadata)
        self._streams[sid] = stream
        assert self.net.nursery is not None
        self.net.nursery.start_soon(self._run_stream, stream)
        return SimClientStream(self, stream)

    async def _run_stream(self, stream: _Stream) -> None:
        with stream.scope:
            async with trio.open_nursery() as pumps:
                pumps.start_soon(self._pump, stream, stream.up, stream.src, stream.server.name)
                pumps.start_soon(self._pump, stream, stream.down, stream.server.name, stream.src)
                server = stream.server
                if self.net.partitioned(stream.src, server.name):
                    self._stall(stream)
                elif server.handler_nursery is not None:
                    server.handler_nursery.start_soon(self._serve_stream, stream)
                await trio.sleep_forever()

    async def _pump(self, stream: _Stream, d: _Direction, src: str, dst: str) -> None:
        try:
            async for deliver_at, item in d.wire_recv:
                await trio.sleep_until(deliver_at)
                if stream.stalled:
                    continue
                if self.net.partitioned(src, dst):
                    self._stall(stream)
                    continue
                await d.inbox_send.send(item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return  # the stream broke while this message was in flight

    def _stall(self, stream: _Stream) -> None:
        if not stream.stalled:
            stream.stalled = True
            self.net.trace.record(f"net stream #{stream.id} stalled by partition")

    def _break(self, stream: _Stream, error: RpcError) -> None:
        """End ``stream`` abnormally: both ends see ``error`` once they drain what arrived."""
        if stream.broken is None:
            stream.broken = error
            self.net.trace.record(f"net stream #{stream.id} {error.code.name}")
        stream.up.close()
        stream.down.close()
        stream.scope.cancel()
        stream.handler_scope.cancel()
        self._streams.pop(stream.id, None)

    async def _put(self, stream: _Stream, d: _Direction, item: _StreamItem) -> None:
        if stream.broken is not None:
            raise RpcError(stream.broken.code, stream.broken.message)
        if d.ended:
            raise RpcError(Code.INTERNAL, "send after the end of the stream")
        if isinstance(item, _End):
            d.ended = True
        at = max(d.last_at, trio.current_time() + self.net._latency())
        d.last_at = at
        try:
            await d.wire_send.send((at, item))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            assert stream.broken is not None
            raise RpcError(stream.broken.code, stream.broken.message) from None

    async def _take(self, stream: _Stream, d: _Direction) -> _StreamItem:
        try:
            return await d.inbox_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            error = stream.broken or RpcError(Code.UNAVAILABLE, "stream closed")
            raise RpcError(error.code, error.message) from None

    async def _serve_stream(self, stream: _Stream) -> None:
        server = stream.server
        handlers: dict[str, StreamHandler] = getattr(server, "stream_handlers", {})
        handler = handlers.get(stream.method)
        self.net.trace.record(f"net stream #{stream.id} deliver")
        status: RpcError | None = None
        with stream.handler_scope:
            try:
                if handler is None:
                    raise RpcError(Code.UNIMPLEMENTED, f"unknown method {stream.method}")
                ctx = CallContext(stream.method, stream.metadata, stream.src)
                await handler(SimServerStream(self, stream), ctx)
            except SiloError as exc:
                status = RpcError.from_silo_error(exc)
            except RpcError as exc:
                status = exc
            except Exception as exc:
                if stream.broken is None and server.serving and server.generation == stream.gen:
                    self.net.sim.code_crash(f"stream handler {stream.method} raised", exc)
                    status = RpcError(Code.INTERNAL, repr(exc))
            if stream.broken is None:
                self.net.trace.record(
                    f"net stream #{stream.id} end {'OK' if status is None else status.code.name}"
                )
                await self._put(stream, stream.down, _End(status))



class _Refused:
    """The server of a stream whose connection was refused (there is no host to name)."""

    def __init__(self, address: str) -> None:
        self.name = address
        self.address = address
        self.serving = False
        self.generation = 0
        self.handlers: dict[str, Handler] = {}
        self.handler_nursery: trio.Nursery | None = None


class SimClientStream:
    """The client's end of a simulated stream (a :class:`silo.rpc.ClientStream`)."""

    def __init__(self, streams: SimStreams, stream: _Stream) -> None:
        self._streams = streams
        self._stream = stream

    async def send(self, message: bytes) -> None:
        await self._streams._put(self._stream, self._stream.up, bytes(message))

    async def close_send(self) -> None:
        if not self._stream.up.ended:
            await self._streams._put(self._stream, self._stream.up, _End(None))

    async def recv(self) -> bytes | None:
        if self._stream.finished:
            return None
        item = await self._streams._take(self._stream, self._stream.down)
        if isinstance(item, _End):
            self._stream.finished = True
            self._streams._break(self._stream, RpcError(Code.CANCELLED, "stream finished"))
            if item.status is not None:
                raise RpcError(item.status.code, item.status.message, item.status.metadata)
            return None
        return item

    async def aclose(self) -> None:
        if self._stream.broken is None:
            closed = RpcError(Code.CANCELLED, "stream closed by the client")
            self._streams._break(self._stream, closed)
        await trio.lowlevel.checkpoint()


class SimServerStream:
    """The server's end of a simulated stream (a :class:`silo.rpc.ServerStream`)."""

    def __init__(self, streams: SimStreams, stream: _Stream) -> None:
        self._streams = streams
        self._stream = stream

    async def recv(self) -> bytes | None:
        try:
            item = await self._streams._take(self._stream, self._stream.up)
        except RpcError:
            await self._gone()
            raise
        if isinstance(item, _End):
            return None
        return item

    async def send(self, message: bytes) -> None:
        try:
            await self._streams._put(self._stream, self._stream.down, bytes(message))
        except RpcError:
            await self._gone()
            raise

    async def _gone(self) -> None:
        """The stream broke: the handler's scope is cancelled, so this raises Cancelled, as a
        real server cancels the handler of a call whose client went away."""
        if self._stream.broken is not None:
            await trio.sleep_forever()


__all__ = ["STREAM_BUFFER", "SimClientStream", "SimServerStream", "SimStreams"]
