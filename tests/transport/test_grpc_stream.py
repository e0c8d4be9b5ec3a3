"""Client streams of the grpclib transport (GrpcStream) without etcd: a GrpcServer's unary
handler answers a one-message stream, statuses and broken connections map as for unary calls.
(Real bidirectional use is exercised against etcd in tests/cluster.)"""

from __future__ import annotations

import socket

import pytest
import trio

from silo.errors import Code, NotFound
from silo.rpc import CallContext, RpcError, StreamingChannel, method_path
from silo.transport.grpc import GrpcConnector
from tests.transport import support


async def echo(request: bytes, ctx: CallContext) -> bytes:
    return request[::-1]


async def missing(request: bytes, ctx: CallContext) -> bytes:
    raise NotFound("no such thing", metadata={"silo-hint": "elsewhere"})


async def test_a_one_message_stream_is_a_complete_exchange() -> None:
    handlers = {method_path("Echo"): echo, method_path("Missing"): missing}
    async with support.serving(handlers) as (_, address), GrpcConnector.open() as conn:
        channel = await conn.connect(address)
        assert isinstance(channel, StreamingChannel)
        for _ in range(3):  # one connection, several streams
            stream = await channel.open_stream(method_path("Echo"))
            await stream.send(b"abc")
            await stream.close_send()
            assert await stream.recv() == b"cba"
            assert await stream.recv() is None  # ended with OK
            await stream.aclose()
            await stream.aclose()  # idempotent
        stream = await channel.open_stream(method_path("Missing"))
        await stream.send(b"x")
        await stream.close_send()
        with pytest.raises(RpcError) as info:
            await stream.recv()
        assert info.value.code == Code.NOT_FOUND
        assert info.value.metadata.get("silo-hint") == "elsewhere"
        await stream.aclose()
        unknown = await channel.open_stream("/nope.Service/Nothing")
        await unknown.send(b"x")
        await unknown.close_send()
        with pytest.raises(RpcError) as info:
            await unknown.recv()
        assert info.value.code == Code.UNIMPLEMENTED
        await unknown.aclose()


async def test_an_unreachable_server_is_unavailable_on_first_use() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the call: nothing listens
    async with GrpcConnector.open() as conn:
        channel = await conn.connect(f"127.0.0.1:{port}")
        stream = await channel.open_stream(method_path("Echo"))
        with trio.fail_after(10), pytest.raises(RpcError) as info:
            await stream.send(b"x")
        assert info.value.code == Code.UNAVAILABLE
        await stream.aclose()
        await channel.aclose()
        with pytest.raises(RpcError) as info:
            await channel.open_stream(method_path("Echo"))
        assert info.value.code == Code.UNAVAILABLE
