"""The simulated network: real encoded protobuf requests and responses between named hosts.

A call is a message to the server host and, if the handler answers, a message back. Each message
takes a seeded latency; faults may lose the request (``net.drop.request``) or the response
(``net.drop.response``), delay one message past later ones (``net.reorder``), or deliver a request
twice (``net.duplicate``; the copy's response is discarded, so only the server sees it). A
partition between two hosts loses every message between them while it lasts.

What the caller sees follows the :mod:`silo.rpc` contract:

- the server host is unknown, down or crashed when the call is made: ``UNAVAILABLE``;
- the server host crashes (or stops) before it answered: ``UNAVAILABLE`` ("connection reset");
- a lost message or a partition: ``DEADLINE_EXCEEDED`` once the call's timeout passes;
- a handler's :class:`~silo.errors.SiloError`: an :class:`~silo.rpc.RpcError` with its code,
  message and metadata.

Any other exception from a handler is a crash of the code under test: the simulator records it
and the run ends with exit status 3.

Streams (:meth:`SimNetwork.open_stream`, for servers with ``stream_handlers``): the messages of one
stream travel in order in each direction, each with a seeded latency (never earlier than the one
before it), through bounded buffers (a full buffer blocks the sender, like HTTP/2 flow control).
The per-message faults do not apply to streams (one TCP connection does not lose, duplicate or
reorder single messages). Instead: the server host crashing or stopping breaks its streams
(``UNAVAILABLE`` "connection reset" at both ends); a message that meets a partition stalls the
stream for good (it and everything after it in both directions is lost, as on a dead
connection), which the ends notice only through their own deadlines; a client closing its end
cancels the server's handler (standing in for the server's connection keepalive).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

from silo.errors import Code, SiloError
from silo.rpc import CallContext, Handler, RpcError, StreamHandler
from sim.faults import FaultBoard
from sim.trace import Trace

if TYPE_CHECKING:
    from sim.simulator import Simulator


class Server(Protocol):
    """A host that serves RPCs (a simulated node)."""

    name: str
    address: str
    serving: bool
    generation: int
    handlers: dict[str, Handler]
    handler_nursery: trio.Nursery | None


@dataclass
class NetConfig:
    latency_ms: tuple[float, float] = (0.2, 3.0)
    """Uniform one-way latency of every message."""
    reorder_ms: tuple[float, float] = (20.0, 300.0)
    """Extra delay of a message hit by ``net.reorder`` (and of a duplicate's copy)."""


class _Call:
    __slots__ = ("id", "src", "server", "method", "gen", "done", "response", "error", "answered")

    def __init__(self, cid: int, src: str, server: Server, method: str) -> None:
        self.id = cid
        self.src = src
        self.server = server
        self.method = method
        self.gen = server.generation
        self.done = trio.Event()
        self.response: bytes | None = None
        self.error: RpcError | None = None
        self.answered = False  # the response left the server: a crash no longer affects it


def _short(method: str) -> str:
    return method.rsplit("/", 1)[-1]


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


class SimNetwork:
    def __init__(
        self, sim: Simulator, rng: random.Random, board: FaultBoard, trace: Trace,
        config: NetConfig | None = None,
    ) -> None:
        self.sim = sim
        self.rng = rng
        self.board = board
        self.trace = trace
        self.config = config or NetConfig()
        self._servers: dict[str, Server] = {}
        self._partitions: dict[tuple[str, str], int] = {}
        self._pending: dict[int, _Call] = {}
        self._streams: dict[int, _Stream] = {}
        self._next_id = 0
        self.nursery: trio.Nursery | None = None
        self.calls = 0

    # -- topology ---------------------------------------------------------------------------

    def register(self, server: Server) -> None:
        self._servers[server.address] = server

    @staticmethod
    def _pair(a: str, b: str) -> tuple[str, str]:
        return (a, b) if a <= b else (b, a)

    def partition(self, a: str, b: str) -> None:
        pair = self._pair(a, b)
        self._partitions[pair] = self._partitions.get(pair, 0) + 1
        self.trace.record(f"net partition {pair[0]}|{pair[1]}")

    def heal(self, a: str, b: str) -> None:
        pair = self._pair(a, b)
        n = self._partitions.get(pair, 0) - 1
        if n > 0:
            self._partitions[pair] = n
        elif pair in self._partitions:
            del self._partitions[pair]
            self.trace.record(f"net heal {pair[0]}|{pair[1]}")

    def heal_all(self) -> None:
        for pair in list(self._partitions):
            del self._partitions[pair]
            self.trace.record(f"net heal {pair[0]}|{pair[1]}")

    def partitioned(self, a: str, b: str) -> bool:
        return self._pair(a, b) in self._partitions

    def connector(self, host: str) -> SimConnector:
        return SimConnector(self, host)

    def host_down(self, server: Server) -> None:
        """``server`` crashed or stopped: its unanswered calls fail with UNAVAILABLE."""
        for call in list(self._pending.values()):
            if call.server is server and call.gen == server.generation and not call.answered:
                if not call.done.is_set():
                    call.error = RpcError(Code.UNAVAILABLE, f"connection reset by {server.name}")
                    call.done.set()
        for stream in list(self._streams.values()):
            if stream.server is server and stream.gen == server.generation:
                reset = RpcError(Code.UNAVAILABLE, f"connection reset by {server.name}")
                self._break(stream, reset)

    # -- messages ---------------------------------------------------------------------------

    def _latency(self) -> float:
        lo, hi = self.config.latency_ms
        return self.rng.uniform(lo, hi) / 1000

    def _extra(self) -> float:
        lo, hi = self.config.reorder_ms
        return self.rng.uniform(lo, hi) / 1000

    async def call(
        self, src: str, address: str, method: str, request: bytes, timeout: float | None,
        metadata: dict[str, str] | None,
    ) -> bytes:
        self._next_id += 1
        self.calls += 1
        cid = self._next_id
        name = _short(method)
        server = self._servers.get(address)
        self.trace.record(f"net call #{cid} {src}>{address} {name} {len(request)}B")
        latency = self._latency()
        if server is None or not server.serving:
            await trio.sleep(latency)
            self.trace.record(f"net refused #{cid}")
            raise RpcError(Code.UNAVAILABLE, f"connection refused: {address}")
        call = _Call(cid, src, server, method)
        self._pending[cid] = call
        try:
            detail = f"#{cid} {src}>{server.name} {name}"
            if self.partitioned(src, server.name):
                self.trace.record(f"net partition-drop request #{cid}")
            elif not self.board.roll(self.rng, "net.drop.request", detail):
                delay = latency
                if self.board.roll(self.rng, "net.reorder", detail):
                    delay += self._extra()
                assert self.nursery is not None
                self.nursery.start_soon(self._deliver, call, request, metadata, delay, False)
                if self.board.roll(self.rng, "net.duplicate", detail):
                    self.nursery.start_soon(
                        self._deliver, call, request, metadata, delay + self._extra(), True
                    )
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await call.done.wait()
            if not call.done.is_set():
                self.trace.record(f"net timeout #{cid}")
                raise RpcError(Code.DEADLINE_EXCEEDED, f"deadline exceeded calling {name}")
            if call.error is not None:
                raise RpcError(call.error.code, call.error.message, call.error.metadata)
            assert call.response is not None
            return call.response
        finally:
            del self._pending[cid]

    async def _deliver(
        self, call: _Call, request: bytes, metadata: dict[str, str] | None, delay: float,
        dup: bool,
    ) -> None:
        await trio.sleep(delay)
        server = call.server
        tag = "dup " if dup else ""
        if not server.serving or server.generation != call.gen:
            self.trace.record(f"net {tag}lost-to-crash #{call.id}")
            return
        if self.partitioned(call.src, server.name):
            self.trace.record(f"net {tag}partition-drop request #{call.id}")
            return
        if not dup and call.done.is_set():
            return
        self.trace.record(f"net {tag}deliver #{call.id}")
        assert server.handler_nursery is not None
        server.handler_nursery.start_soon(self._serve, call, request, metadata, dup)

    async def _serve(
        self, call: _Call, request: bytes, metadata: dict[str, str] | None, dup: bool
    ) -> None:
        server = call.server
        gen = call.gen
        handler = server.handlers.get(call.method)
        token = self.sim.on_serve_start(server, call.method, request)
        result: tuple[bytes | None, RpcError | None]
        try:
            if handler is None:
                raise RpcError(Code.UNIMPLEMENTED, f"unknown method {call.method}")
            ctx = CallContext(call.method, dict(metadata or {}), call.src)
            result = (await handler(request, ctx), None)
        except SiloError as exc:
            result = (None, RpcError.from_silo_error(exc))
        except RpcError as exc:
            result = (None, exc)
        except Exception as exc:
            if server.generation != gen or not server.serving:
                return  # the host died under the handler; the call already failed
            self.sim.code_crash(f"handler {call.method} raised", exc)
            result = (None, RpcError(Code.INTERNAL, repr(exc)))
        if server.generation != gen or not server.serving:
            return
        self.sim.on_serve_end(token, result[0], result[1])
        status = "OK" if result[1] is None else result[1].code.name
        if dup:
            self.trace.record(f"net dup-reply-dropped #{call.id} {status}")
            return
        call.answered = True
        detail = f"#{call.id} {server.name}>{call.src} {_short(call.method)}"
        if self.partitioned(server.name, call.src):
            self.trace.record(f"net partition-drop response #{call.id}")
            return
        if self.board.roll(self.rng, "net.drop.response", detail):
            return
        delay = self._latency()
        if self.board.roll(self.rng, "net.reorder", detail):
            delay += self._extra()
        assert self.nursery is not None
        self.nursery.start_soon(self._respond, call, result, delay, status)

    async def _respond(
        self, call: _Call, result: tuple[bytes | None, RpcError | None], delay: float,
        status: str,
    ) -> None:
        await trio.sleep(delay)
        if call.done.is_set():
            return
        if self.partitioned(call.server.name, call.src):
            self.trace.record(f"net partition-drop response #{call.id}")
            return
        call.response, call.error = result
        self.trace.record(f"net reply #{call.id} {status}")
        call.done.set()


    # -- streams ----------------------------------------------------------------------------

    async def open_stream(
        self, src: str, address: str, method: str, metadata: dict[str, str] | None
    ) -> SimClientStream:
        self._next_id += 1
        self.calls += 1
        sid = self._next_id
        server = self._servers.get(address)
        self.trace.record(f"net stream #{sid} {src}>{address} {_short(method)}")
        await trio.sleep(self._latency())
        if server is None or not server.serving:
            self.trace.record(f"net refused #{sid}")
            dead = _Stream(sid, src, _Refused(address), method, metadata)
            dead.broken = RpcError(Code.UNAVAILABLE, f"connection refused: {address}")
            dead.up.close()
            dead.down.close()
            return SimClientStream(self, dead)
        stream = _Stream(sid, src, server, method, metadata)
        self._streams[sid] = stream
        assert self.nursery is not None
        self.nursery.start_soon(self._run_stream, stream)
        return SimClientStream(self, stream)

    async def _run_stream(self, stream: _Stream) -> None:
        with stream.scope:
            async with trio.open_nursery() as pumps:
                pumps.start_soon(self._pump, stream, stream.up, stream.src, stream.server.name)
                pumps.start_soon(self._pump, stream, stream.down, stream.server.name, stream.src)
                server = stream.server
                if self.partitioned(stream.src, server.name):
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
                if self.partitioned(src, dst):
                    self._stall(stream)
                    continue
                await d.inbox_send.send(item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return  # the stream broke while this message was in flight

    def _stall(self, stream: _Stream) -> None:
        if not stream.stalled:
            stream.stalled = True
            self.trace.record(f"net stream #{stream.id} stalled by partition")

    def _break(self, stream: _Stream, error: RpcError) -> None:
        """End ``stream`` abnormally: both ends see ``error`` once they drain what arrived."""
        if stream.broken is None:
            stream.broken = error
            self.trace.record(f"net stream #{stream.id} {error.code.name}")
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
        at = max(d.last_at, trio.current_time() + self._latency())
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
        self.trace.record(f"net stream #{stream.id} deliver")
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
                    self.sim.code_crash(f"stream handler {stream.method} raised", exc)
                    status = RpcError(Code.INTERNAL, repr(exc))
            if stream.broken is None:
                self.trace.record(
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

    def __init__(self, net: SimNetwork, stream: _Stream) -> None:
        self._net = net
        self._stream = stream

    async def send(self, message: bytes) -> None:
        await self._net._put(self._stream, self._stream.up, bytes(message))

    async def close_send(self) -> None:
        if not self._stream.up.ended:
            await self._net._put(self._stream, self._stream.up, _End(None))

    async def recv(self) -> bytes | None:
        if self._stream.finished:
            return None
        item = await self._net._take(self._stream, self._stream.down)
        if isinstance(item, _End):
            self._stream.finished = True
            self._net._break(self._stream, RpcError(Code.CANCELLED, "stream finished"))
            if item.status is not None:
                raise RpcError(item.status.code, item.status.message, item.status.metadata)
            return None
        return item

    async def aclose(self) -> None:
        if self._stream.broken is None:
            self._net._break(self._stream, RpcError(Code.CANCELLED, "stream closed by the client"))
        await trio.lowlevel.checkpoint()


class SimServerStream:
    """The server's end of a simulated stream (a :class:`silo.rpc.ServerStream`)."""

    def __init__(self, net: SimNetwork, stream: _Stream) -> None:
        self._net = net
        self._stream = stream

    async def recv(self) -> bytes | None:
        try:
            item = await self._net._take(self._stream, self._stream.up)
        except RpcError:
            await self._gone()
            raise
        if isinstance(item, _End):
            return None
        return item

    async def send(self, message: bytes) -> None:
        try:
            await self._net._put(self._stream, self._stream.down, bytes(message))
        except RpcError:
            await self._gone()
            raise

    async def _gone(self) -> None:
        """The stream broke: the handler's scope is cancelled, so this raises Cancelled, as a
        real server cancels the handler of a call whose client went away."""
        if self._stream.broken is not None:
            await trio.sleep_forever()


class SimChannel:
    """A :class:`silo.rpc.Channel` from one host to one address."""

    def __init__(self, net: SimNetwork, src: str, address: str) -> None:
        self._net = net
        self._src = src
        self._address = address

    async def call(
        self, method: str, request: bytes, *, timeout: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> bytes:
        return await self._net.call(self._src, self._address, method, request, timeout, metadata)

    async def open_stream(
        self, method: str, *, metadata: dict[str, str] | None = None
    ) -> SimClientStream:
        return await self._net.open_stream(self._src, self._address, method, metadata)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class SimConnector:
    """A :class:`silo.rpc.Connector` for the host called ``src``."""

    def __init__(self, net: SimNetwork, src: str) -> None:
        self._net = net
        self._src = src

    async def connect(self, address: str) -> SimChannel:
        await trio.lowlevel.checkpoint()
        return SimChannel(self._net, self._src, address)


__all__ = [
    "NetConfig",
    "Server",
    "SimChannel",
    "SimClientStream",
    "SimConnector",
    "SimNetwork",
    "SimServerStream",
]
