"""Streams on the simulated network: order, bounded buffers, crashes, partitions, cancellation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from silo.errors import Code, FailedPrecondition
from silo.rpc import CallContext, RpcError, ServerStream, StreamHandler
from sim.simulator import Simulator


class StreamServer:
    """A bare simulated host serving stream handlers."""

    def __init__(self, sim: Simulator, name: str, handlers: dict[str, StreamHandler]) -> None:
        self.name = name
        self.address = f"{name}:1"
        self.serving = False
        self.generation = 1
        self.handlers: dict = {}
        self.stream_handlers = handlers
        self.handler_nursery: trio.Nursery | None = None
        self.sim = sim
        sim.net.register(self)

    def crash(self) -> None:
        self.serving = False
        self.sim.net.host_down(self)
        assert self.handler_nursery is not None
        self.handler_nursery.cancel_scope.cancel()


@asynccontextmanager
async def world(handlers: dict[str, StreamHandler]) -> AsyncIterator[tuple[Simulator,
                                                                          StreamServer]]:
    sim = Simulator(seed=3)
    async with trio.open_nursery() as nursery:
        sim.nursery = nursery
        sim.net.nursery = nursery
        server = StreamServer(sim, "srv", handlers)

        async def serve(task_status: trio.TaskStatus[None]) -> None:
            async with trio.open_nursery() as hn:
                server.handler_nursery = hn
                server.serving = True
                task_status.started()
                await trio.sleep_forever()

        await nursery.start(serve)
        yield sim, server
        nursery.cancel_scope.cancel()


async def echo(stream: ServerStream, ctx: CallContext) -> None:
    while (msg := await stream.recv()) is not None:
        await stream.send(msg.upper())


async def test_messages_arrive_in_order_and_the_call_ends_ok(autojump_clock) -> None:
    async with world({"/t/Echo": echo}) as (sim, srv):
        ch = await sim.net.connector("cli").connect(srv.address)
        stream = await ch.open_stream("/t/Echo")
        got: list[bytes] = []

        async def reader() -> None:
            while (msg := await stream.recv()) is not None:
                got.append(msg)

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            for i in range(200):  # more than the buffers hold: senders wait, nothing is lost
                await stream.send(f"m{i}".encode())
            await stream.close_send()
        assert got == [f"M{i}".encode() for i in range(200)]
        await stream.aclose()


async def test_a_handler_error_is_the_call_status(autojump_clock) -> None:
    async def refuse(stream: ServerStream, ctx: CallContext) -> None:
        await stream.send(b"first")
        raise FailedPrecondition("no more")

    async with world({"/t/Refuse": refuse}) as (sim, srv):
        ch = await sim.net.connector("cli").connect(srv.address)
        stream = await ch.open_stream("/t/Refuse")
        assert await stream.recv() == b"first"
        with pytest.raises(RpcError) as info:
            await stream.recv()
        assert info.value.code == Code.FAILED_PRECONDITION
        unknown = await ch.open_stream("/t/Nope")
        with pytest.raises(RpcError) as info:
            await unknown.recv()
        assert info.value.code == Code.UNIMPLEMENTED


async def test_refused_connection_fails_the_first_recv(autojump_clock) -> None:
    async with world({}) as (sim, _):
        ch = await sim.net.connector("cli").connect("nowhere:1")
        stream = await ch.open_stream("/t/Echo")
        with pytest.raises(RpcError) as info:
            await stream.recv()
        assert info.value.code == Code.UNAVAILABLE
        with pytest.raises(RpcError):
            await stream.send(b"x")


async def test_server_crash_breaks_the_stream_with_unavailable(autojump_clock) -> None:
    async with world({"/t/Echo": echo}) as (sim, srv):
        ch = await sim.net.connector("cli").connect(srv.address)
        stream = await ch.open_stream("/t/Echo")
        await stream.send(b"a")
        assert await stream.recv() == b"A"
        srv.crash()
        with pytest.raises(RpcError) as info:
            await stream.recv()
        assert info.value.code == Code.UNAVAILABLE
        assert "reset" in info.value.message


async def test_partition_stalls_and_closing_cancels_the_handler(autojump_clock) -> None:
    cancelled = trio.Event()

    async def watchful(stream: ServerStream, ctx: CallContext) -> None:
        try:
            await echo(stream, ctx)
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    async with world({"/t/Echo": watchful}) as (sim, srv):
        ch = await sim.net.connector("cli").connect(srv.address)
        stream = await ch.open_stream("/t/Echo")
        await stream.send(b"a")
        assert await stream.recv() == b"A"
        sim.net.partition("cli", "srv")
        await stream.send(b"b")
        with trio.move_on_after(5) as timeout:
            await stream.recv()
        assert timeout.cancelled_caught  # silent, like a dead connection
        sim.net.heal("cli", "srv")
        await stream.send(b"c")
        with trio.move_on_after(5) as timeout:
            await stream.recv()
        assert timeout.cancelled_caught  # a stalled stream stays dead after the heal
        assert not cancelled.is_set()
        await stream.aclose()
        with trio.fail_after(1):
            await cancelled.wait()
