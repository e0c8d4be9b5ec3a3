"""The grpclib transport over real TCP on 127.0.0.1 (port 0), under trio via trio-asyncio."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import trio

from silo.errors import Code, InvalidArgument, NotFound
from silo.rpc import CallContext, Channel, Connector, Handler, RpcError, method_path
from silo.transport.aio import current_asyncio_loop, open_asyncio_loop
from silo.transport.grpc import (
    HEALTH_CHECK_METHOD,
    GrpcChannel,
    GrpcConnector,
    GrpcServer,
    parse_address,
)
from tests.transport import support

ECHO = method_path("Echo")
FAIL = method_path("Fail")
CRASH = method_path("Crash")
SLOW = method_path("Slow")
CONTEXT = method_path("Context")

HEALTH_SERVING = b"\x08\x01"
HEALTH_NOT_SERVING = b"\x08\x02"


async def echo(request: bytes, ctx: CallContext) -> bytes:
    return request


async def fail(request: bytes, ctx: CallContext) -> bytes:
    raise NotFound("shard 7 is not here", metadata={"silo-shard-owner": "127.0.0.1:1234"})


async def crash(request: bytes, ctx: CallContext) -> bytes:
    raise ZeroDivisionError("boom")


async def slow(request: bytes, ctx: CallContext) -> bytes:
    await trio.sleep(float(request.decode()))
    return b"done"


async def context(request: bytes, ctx: CallContext) -> bytes:
    return repr((ctx.method, sorted(ctx.metadata.items()), ctx.peer)).encode()


HANDLERS = {ECHO: echo, FAIL: fail, CRASH: crash, SLOW: slow, CONTEXT: context}


def serving(
    handlers: Mapping[str, Handler] = HANDLERS, **server_kwargs: Any
) -> AbstractAsyncContextManager[tuple[GrpcServer, str]]:
    return support.serving(handlers, **server_kwargs)


@asynccontextmanager
async def channel_to(address: str, **kwargs) -> AsyncIterator[GrpcChannel]:
    async with GrpcConnector.open(**kwargs) as connector:
        yield await connector.connect(address)


async def test_echo_round_trip() -> None:
    async with serving() as (_, address), channel_to(address) as channel:
        assert isinstance(channel, Channel)
        assert await channel.call(ECHO, b"hello", timeout=5) == b"hello"
        assert await channel.call(ECHO, b"", timeout=5) == b""
        big = bytes(range(256)) * 4096  # 1 MiB: several HTTP/2 frames and window updates
        assert await channel.call(ECHO, big, timeout=10) == big


async def test_handler_sees_method_metadata_and_peer() -> None:
    async with serving() as (_, address), channel_to(address) as channel:
        reply = await channel.call(CONTEXT, b"", metadata={"X-Trace": "abc"}, timeout=5)
    method, metadata, peer = eval(reply.decode())
    assert method == CONTEXT
    assert metadata == [("x-trace", "abc")]
    assert peer.startswith("127.0.0.1:")


async def test_handler_error_arrives_with_code_message_and_trailing_metadata() -> None:
    async with serving() as (_, address), channel_to(address) as channel:
        with pytest.raises(RpcError) as info:
            await channel.call(FAIL, b"x", timeout=5)
    err = info.value
    assert err.code == Code.NOT_FOUND
    assert err.message == "shard 7 is not here"
    assert err.metadata == {"silo-shard-owner": "127.0.0.1:1234"}
    silo_err = err.to_silo_error()
    assert isinstance(silo_err, NotFound)
    assert silo_err.metadata == {"silo-shard-owner": "127.0.0.1:1234"}


async def test_rpc_error_and_exception_group_from_handler() -> None:
    async def raises_rpc_error(request: bytes, ctx: CallContext) -> bytes:
        raise RpcError(Code.ABORTED, "try again", {"retry-after-ms": "10"})

    async def raises_in_nursery(request: bytes, ctx: CallContext) -> bytes:
        async def child() -> None:
            raise InvalidArgument("bad tenant")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
        return b""

    handlers = {method_path("A"): raises_rpc_error, method_path("B"): raises_in_nursery}
    async with serving(handlers) as (_, address), channel_to(address) as channel:
        with pytest.raises(RpcError) as info:
            await channel.call(method_path("A"), b"", timeout=5)
        assert (info.value.code, info.value.message) == (Code.ABORTED, "try again")
        assert info.value.metadata == {"retry-after-ms": "10"}
        with pytest.raises(RpcError) as info:
            await channel.call(method_path("B"), b"", timeout=5)
        assert (info.value.code, info.value.message) == (Code.INVALID_ARGUMENT, "bad tenant")


async def test_unexpected_exception_is_internal_and_server_keeps_serving(caplog) -> None:
    caplog.set_level(logging.ERROR, logger="silo.transport.grpc")
    async with serving() as (_, address), channel_to(address) as channel:
        for _ in range(3):
            with pytest.raises(RpcError) as info:
                await channel.call(CRASH, b"", timeout=5)
            assert info.value.code == Code.INTERNAL
            assert "boom" not in info.value.message  # no internals leak to the caller
            assert await channel.call(ECHO, b"still alive", timeout=5) == b"still alive"
    crashes = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
    assert len(crashes) == 3


async def test_unknown_method_is_unimplemented() -> None:
    async with serving() as (_, address), channel_to(address) as channel:
        with pytest.raises(RpcError) as info:
            await channel.call(method_path("Nope"), b"", timeout=5)
    assert info.value.code == Code.UNIMPLEMENTED


async def test_bearer_token() -> None:
    async with serving(token="s3cret") as (_, address):
        async with channel_to(address) as anonymous:
            with pytest.raises(RpcError) as info:
                await anonymous.call(ECHO, b"x", timeout=5)
            assert info.value.code == Code.UNAUTHENTICATED
            # the health service is exempt
            assert await anonymous.call(HEALTH_CHECK_METHOD, b"", timeout=5) == HEALTH_SERVING
        async with channel_to(address, token="wrong") as wrong:
            with pytest.raises(RpcError) as info:
                await wrong.call(ECHO, b"x", timeout=5)
            assert info.value.code == Code.UNAUTHENTICATED
        async with channel_to(address, token="s3cret") as right:
            assert await right.call(ECHO, b"x", timeout=5) == b"x"
            # the token is the transport's business, not the handler's
            reply = await right.call(CONTEXT, b"", timeout=5)
            assert b"authorization" not in reply


async def test_health_check() -> None:
    def health_request(service: str) -> bytes:
        raw = service.encode()
        return bytes([0x0A, len(raw)]) + raw

    async with serving() as (server, address), channel_to(address) as channel:
        assert await channel.call(HEALTH_CHECK_METHOD, b"", timeout=5) == HEALTH_SERVING
        reply = await channel.call(HEALTH_CHECK_METHOD, health_request("silo.v1.Silo"), timeout=5)
        assert reply == HEALTH_SERVING
        with pytest.raises(RpcError) as info:
            await channel.call(HEALTH_CHECK_METHOD, health_request("no.Such"), timeout=5)
        assert info.value.code == Code.NOT_FOUND


async def test_closed_port_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing listens on `port` now
    async with channel_to(f"127.0.0.1:{port}") as channel:
        for timeout in (5.0, None):
            with pytest.raises(RpcError) as info:
                await channel.call(ECHO, b"x", timeout=timeout)
            assert info.value.code == Code.UNAVAILABLE


async def test_slow_handler_with_short_timeout_is_deadline_exceeded() -> None:
    cancelled = trio.Event()

    async def very_slow(request: bytes, ctx: CallContext) -> bytes:
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            cancelled.set()
            raise
        return b""

    handlers = {**HANDLERS, method_path("VerySlow"): very_slow}
    async with serving(handlers) as (_, address), channel_to(address) as channel:
        start = trio.current_time()
        with pytest.raises(RpcError) as info:
            await channel.call(method_path("VerySlow"), b"", timeout=0.2)
        assert info.value.code == Code.DEADLINE_EXCEEDED
        assert trio.current_time() - start < 2.0
        # the server saw the deadline too and cancelled the handler
        with trio.fail_after(5):
            await cancelled.wait()
        # the channel is still usable
        assert await channel.call(SLOW, b"0.01", timeout=5) == b"done"


async def test_message_size_limits() -> None:
    """Over-limit messages fail with RESOURCE_EXHAUSTED (grpclib has no limit of its own).

    - server: a request over its ``max_message_bytes`` is refused from its length prefix;
    - server: a response over the limit is replaced by RESOURCE_EXHAUSTED;
    - client: a request over the channel's limit is refused before anything is sent;
    - client: a response over the channel's limit fails the call.
    """
    limit = 1024 * 1024

    async def big_reply(request: bytes, ctx: CallContext) -> bytes:
        return b"x" * int(request.decode())

    handlers = {**HANDLERS, method_path("Big"): big_reply}
    async with serving(handlers, max_message_bytes=limit) as (_, address):
        async with channel_to(address) as channel:
            assert len(await channel.call(ECHO, b"a" * limit, timeout=10)) == limit
            with pytest.raises(RpcError) as info:
                await channel.call(ECHO, b"a" * (2 * limit), timeout=10)
            assert info.value.code == Code.RESOURCE_EXHAUSTED
            assert "exceeds the limit" in info.value.message
            with pytest.raises(RpcError) as info:
                await channel.call(method_path("Big"), str(limit + 1).encode(), timeout=10)
            assert info.value.code == Code.RESOURCE_EXHAUSTED
            assert await channel.call(ECHO, b"ok", timeout=5) == b"ok"  # connection survived
        async with channel_to(address, max_message_bytes=1000) as small:
            with pytest.raises(RpcError) as info:
                await small.call(ECHO, b"a" * 1001, timeout=5)
            assert info.value.code == Code.RESOURCE_EXHAUSTED
            with pytest.raises(RpcError) as info:
                await small.call(method_path("Big"), b"1001", timeout=5)
            assert info.value.code == Code.RESOURCE_EXHAUSTED
            assert await small.call(method_path("Big"), b"1000", timeout=5) == b"x" * 1000


async def test_many_concurrent_calls_over_one_channel() -> None:
    results: dict[int, bytes] = {}
    async with serving() as (_, address), channel_to(address) as channel:

        async def one(i: int) -> None:
            results[i] = await channel.call(ECHO, str(i).encode(), timeout=30)

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
    assert results == {i: str(i).encode() for i in range(200)}


async def test_channel_works_from_tasks_outside_the_loop_context() -> None:
    """A channel keeps the loop it was made in, so a task that does not see the loop in its
    context (it was spawned before the loop was opened) can still use it."""
    send, receive = trio.open_memory_channel[GrpcChannel](1)
    replies: list[bytes] = []
    done = trio.Event()

    async def user() -> None:
        assert current_asyncio_loop() is None
        channel = await receive.receive()
        replies.append(await channel.call(ECHO, b"from outside", timeout=5))
        done.set()

    async with trio.open_nursery() as outer:
        outer.start_soon(user)
        async with serving() as (_, address), channel_to(address) as channel:
            await send.send(channel)
            await done.wait()
    assert replies == [b"from outside"]


async def test_connector_requires_loop_and_channel_after_close() -> None:
    connector = GrpcConnector()
    with pytest.raises(RuntimeError, match="trio-asyncio loop"):
        await connector.connect("127.0.0.1:1")
    async with GrpcConnector.open() as connector:
        assert isinstance(connector, Connector)
        channel = await connector.connect("127.0.0.1:1")
    with pytest.raises(RpcError) as info:  # closed when the connector closed
        await channel.call(ECHO, b"", timeout=1)
    assert info.value.code == Code.UNAVAILABLE


async def test_graceful_shutdown_lets_inflight_calls_finish() -> None:
    async with open_asyncio_loop(), trio.open_nursery() as nursery:
        server = GrpcServer(HANDLERS)
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        async with channel_to(f"127.0.0.1:{port}") as channel:
            replies: list[bytes] = []

            async def slow_call() -> None:
                replies.append(await channel.call(SLOW, b"0.5", timeout=10))

            nursery.start_soon(slow_call)
            while server.inflight == 0:
                await trio.sleep(0.01)
            await server.shutdown(grace=5.0)
            assert replies == [b"done"]
            # the port is closed now
            with pytest.raises(RpcError) as info:
                await channel.call(ECHO, b"x", timeout=5)
            assert info.value.code == Code.UNAVAILABLE


async def test_shutdown_cancels_calls_that_outlive_the_grace_period() -> None:
    async with open_asyncio_loop(), trio.open_nursery() as nursery:
        server = GrpcServer(HANDLERS)
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        async with channel_to(f"127.0.0.1:{port}") as channel:
            errors: list[RpcError] = []

            async def stuck_call() -> None:
                try:
                    await channel.call(SLOW, b"30", timeout=60)
                except RpcError as exc:
                    errors.append(exc)

            nursery.start_soon(stuck_call)
            while server.inflight == 0:
                await trio.sleep(0.01)
            start = trio.current_time()
            await server.shutdown(grace=0.2)
            assert trio.current_time() - start < 5
            with trio.fail_after(5):
                while not errors:
                    await trio.sleep(0.01)
            assert errors[0].code == Code.UNAVAILABLE


async def test_cancelling_serve_drains_and_stops() -> None:
    server = GrpcServer(HANDLERS, shutdown_grace=5.0)
    replies: list[bytes] = []
    async with GrpcConnector.open() as connector, trio.open_nursery() as calls:
        async with trio.open_nursery() as server_nursery:
            port = await server_nursery.start(server.serve, "127.0.0.1", 0)
            channel = await connector.connect(f"127.0.0.1:{port}")

            async def slow_call() -> None:
                replies.append(await channel.call(SLOW, b"0.3", timeout=10))

            calls.start_soon(slow_call)
            while server.inflight == 0:
                await trio.sleep(0.01)
            server_nursery.cancel_scope.cancel()
        # serve() returned only after the in-flight call was answered
        assert replies == [b"done"]
        with pytest.raises(RpcError) as info:
            await channel.call(ECHO, b"x", timeout=5)
        assert info.value.code == Code.UNAVAILABLE


async def test_channel_reconnects_after_server_restart() -> None:
    async with GrpcConnector.open() as connector:
        first = GrpcServer(HANDLERS)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(first.serve, "127.0.0.1", 0)
            channel = await connector.connect(f"127.0.0.1:{port}")
            assert await channel.call(ECHO, b"1", timeout=5) == b"1"
            await first.shutdown(grace=1.0)
        with pytest.raises(RpcError) as info:
            await channel.call(ECHO, b"down", timeout=5)
        assert info.value.code == Code.UNAVAILABLE
        second = GrpcServer(HANDLERS)
        async with trio.open_nursery() as nursery:
            await nursery.start(second.serve, "127.0.0.1", port)
            assert await channel.call(ECHO, b"2", timeout=5) == b"2"
            await second.shutdown(grace=1.0)


async def test_serve_opens_its_own_loop_when_none_is_active() -> None:
    assert current_asyncio_loop() is None
    server = GrpcServer(HANDLERS)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        async with channel_to(f"127.0.0.1:{port}") as channel:
            assert await channel.call(ECHO, b"own loop", timeout=5) == b"own loop"
        await server.shutdown(grace=1.0)


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:7450") == ("127.0.0.1", 7450)
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address("silo-0.silo:7450") == ("silo-0.silo", 7450)
    for bad in ("127.0.0.1", ":80", "host:", "host:abc", "host:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_server_rejects_bad_method_paths() -> None:
    with pytest.raises(ValueError):
        GrpcServer({"Enqueue": echo})
    with pytest.raises(ValueError):
        GrpcServer({"/silo.v1.Silo/": echo})


async def test_huge_status_message_is_cut_and_the_connection_survives() -> None:
    """A handler error quoting 64 KiB arrives cut to STATUS_MESSAGE_MAX_CHARS, and the shared
    HTTP/2 connection keeps serving the calls multiplexed on it."""
    from silo.transport.grpc import STATUS_MESSAGE_MAX_CHARS

    huge = method_path("Huge")

    async def huge_error(request: bytes, ctx: CallContext) -> bytes:
        raise InvalidArgument("bad id " + "x" * (64 * 1024))

    async with serving({**HANDLERS, huge: huge_error}) as (_, address):
        async with channel_to(address) as channel:
            echoed: list[bytes] = []

            async def one_huge() -> None:
                with pytest.raises(RpcError) as info:
                    await channel.call(huge, b"", timeout=10)
                assert info.value.code == Code.INVALID_ARGUMENT
                assert info.value.message.startswith("bad id xxx")
                assert len(info.value.message) <= STATUS_MESSAGE_MAX_CHARS

            async def one_echo() -> None:
                echoed.append(await channel.call(ECHO, b"ping", timeout=10))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one_huge)
                nursery.start_soon(one_echo)
            assert echoed == [b"ping"]
            assert await channel.call(ECHO, b"again", timeout=10) == b"again"
