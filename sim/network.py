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
  message and metadata;
- a request or response over ``NetConfig.max_message_bytes`` (the real transport's cap,
  ``ServerConfig.max_message_bytes``): ``RESOURCE_EXHAUSTED``, as the real
  transport answers (a request is refused before it is sent; a response after the handler ran).

Any other exception from a handler is a crash of the code under test: the simulator records it
and the run ends with exit status 3.

Bidirectional streams (:meth:`SimNetwork.open_stream`) are in :mod:`sim.streams`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

from silo.config import ServerConfig
from silo.errors import Code, SiloError
from silo.rpc import CallContext, Handler, RpcError
from sim.faults import FaultBoard
from sim.invariants import Invariant
from sim.streams import SimClientStream, SimStreams
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
    max_message_bytes: int = ServerConfig().max_message_bytes
    """Largest request or response, as in the real transport."""


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
        self._next_id = 0
        self.nursery: trio.Nursery | None = None
        self.calls = 0
        self.streams = SimStreams(self)

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
        self.streams.host_down(server)

    async def open_stream(
        self, src: str, address: str, method: str, metadata: dict[str, str] | None
    ) -> SimClientStream:
        """A stream from host ``src`` to ``address`` (see :mod:`sim.streams`)."""
        return await self.streams.open(src, address, method, metadata)

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
        cap = self.config.max_message_bytes
        if len(request) > cap:
            await trio.lowlevel.checkpoint()
            self.trace.record(f"net too-large request #{cid}")
            self.sim.count(f"net.too_large.request.{name}")
            raise RpcError(Code.RESOURCE_EXHAUSTED, f"request message of {len(request)} bytes "
                                                    f"exceeds the limit of {cap}")
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
        cap = self.config.max_message_bytes
        if result[0] is not None and len(result[0]) > cap:
            self.trace.record(f"net too-large response #{call.id} {len(result[0])}B")
            self.sim.count(f"net.too_large.response.{_short(call.method)}")
            if _short(call.method) == "LeaseTasks":
                # The leases in it are committed: the node must never build a reply it cannot
                # send (DESIGN §4 "Delivery").
                self.sim.checker.fail(
                    Invariant.DELIVERABLE,
                    f"{server.name} answered LeaseTasks from {call.src} with {len(result[0])} "
                    f"bytes, over the {cap}-byte max message size: the leases it committed are "
                    f"lost with the reply")
            result = (None, RpcError(Code.RESOURCE_EXHAUSTED, f"response message of "
                                     f"{len(result[0])} bytes exceeds the limit of {cap}"))
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


__all__ = ["NetConfig", "Server", "SimChannel", "SimConnector", "SimNetwork"]
