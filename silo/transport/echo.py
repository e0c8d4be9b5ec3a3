"""A bare grpclib unary echo on asyncio: the transport's ceiling for the peers benchmark.

``python -m silo.transport.echo --port P`` serves ``/silo.bench.Echo/Echo`` on 127.0.0.1:P with
grpclib on a plain asyncio loop (no trio, no trio-asyncio, no protobuf codec: the request
bytes come back as the reply) until SIGINT or SIGTERM. :func:`measure_echo` is the client: the
same grpclib channel and unary call a generated stub makes, run sequentially or with a fixed
number of calls in flight. Whatever silo adds on top of this is silo's own per-call cost.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import grpclib.client
import grpclib.server
from grpclib.const import Cardinality
from grpclib.const import Handler as GrpclibHandler
from grpclib.encoding.base import CodecBase

ECHO_PATH = "/silo.bench.Echo/Echo"
READY_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 10.0
MESSAGE = b"\x0a\x40" + b"x" * 64  # a 66-byte message, about the size of a small request


class _BytesCodec(CodecBase):
    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return bytes(data)


class _EchoService:
    def __mapping__(self) -> dict[str, GrpclibHandler]:
        return {ECHO_PATH: GrpclibHandler(self._echo, Cardinality.UNARY_UNARY, bytes, bytes)}

    async def _echo(self, stream: Any) -> None:
        message = await stream.recv_message()
        await stream.send_message(message)


async def serve(host: str, port: int) -> None:
    """Serve the echo until SIGINT/SIGTERM."""
    server = grpclib.server.Server([_EchoService()], codec=_BytesCodec())
    await server.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


@dataclass(frozen=True)
class EchoResult:
    calls: int
    in_flight: int
    elapsed_s: float

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s

    @property
    def seconds_per_call(self) -> float:
        """Wall time per call; with one call in flight, the round-trip time."""
        return self.elapsed_s / self.calls


async def _measure(host: str, port: int, calls: int, in_flight: int,
                   warmup_calls: int) -> EchoResult:
    channel = grpclib.client.Channel(host, port, codec=_BytesCodec())
    try:
        method: Any = grpclib.client.UnaryUnaryMethod(channel, ECHO_PATH, bytes, bytes)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                await method(MESSAGE, timeout=CALL_TIMEOUT_S)
                break
            except (TimeoutError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"echo server on {host}:{port} did not answer") from None
                await asyncio.sleep(0.05)
        for _ in range(warmup_calls):
            await method(MESSAGE, timeout=CALL_TIMEOUT_S)

        async def caller(n: int) -> None:
            for _ in range(n):
                await method(MESSAGE, timeout=CALL_TIMEOUT_S)

        shares = [calls // in_flight + (1 if i < calls % in_flight else 0)
                  for i in range(in_flight)]
        t0 = time.perf_counter()
        await asyncio.gather(*(caller(n) for n in shares if n))
        return EchoResult(calls, in_flight, time.perf_counter() - t0)
    finally:
        channel.close()


def measure_echo(host: str, port: int, calls: int, in_flight: int = 1,
                 warmup_calls: int = 100) -> EchoResult:
    """Time ``calls`` echo calls, ``in_flight`` at a time, on a fresh asyncio loop (waits up
    to 30 s for the server to answer first; every call times out after 10 s)."""
    if calls < 1 or in_flight < 1:
        raise ValueError("calls and in_flight must be positive")
    return asyncio.run(_measure(host, port, calls, in_flight, warmup_calls))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m silo.transport.echo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
