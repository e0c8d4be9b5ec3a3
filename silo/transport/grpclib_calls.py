"""The asyncio side of a unary gRPC call over grpclib, shared by both client channels.

:class:`silo.transport.grpc.GrpcChannel` runs :func:`unary_call` on a trio-asyncio loop (for trio
code); :class:`silo.transport.asyncio_grpc.AsyncioGrpcChannel` runs it on the caller's own
asyncio loop (plain asyncio or uvloop). This module imports neither trio nor trio-asyncio, so
asyncio programs can use it without trio-asyncio's changes to asyncio's loop policy.

Status mapping (the contract of :class:`silo.rpc.Channel`): the server's status arrives as
:class:`~silo.rpc.RpcError` with its code, message and string-valued trailing metadata; a
refused, reset or lost connection is ``UNAVAILABLE``; grpclib's deadline is
``DEADLINE_EXCEEDED``; a request or response over ``max_message_bytes`` is
``RESOURCE_EXHAUSTED`` (a request over it is never sent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpclib.client
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.metadata import encode_metadata

from silo.errors import Code
from silo.rpc import RpcError
from silo.transport.coalesce import coalesce_writes

__all__ = [
    "RawCodec",
    "check_request_size",
    "parse_address",
    "request_headers",
    "str_metadata",
    "unary_call",
]


class RawCodec(CodecBase):
    """Pass-through codec: messages are already-encoded protobuf bytes.

    The subtype is ``proto`` so the content type on the wire is plain ``application/grpc``.
    """

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        if not isinstance(message, bytes | bytearray | memoryview):
            raise TypeError(f"expected encoded message bytes, got {type(message).__name__}")
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return bytes(data)


def parse_address(address: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6addr]:port"`` -> ``(host, port)``; port 0 ("any free port")
    only with ``allow_zero`` (for listening addresses)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"address must be host:port, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not (0 if allow_zero else 1) <= port < 65536:
        raise ValueError(f"port out of range in {address!r}")
    return host, port


def str_metadata(metadata: Any) -> dict[str, str]:
    """grpclib's MultiDict -> plain dict of the string-valued entries (first value wins)."""
    result: dict[str, str] = {}
    if metadata is None:
        return result
    for key, value in metadata.items():
        if isinstance(value, str) and key not in result:
            result[key] = value
    return result


def request_headers(
    metadata: Mapping[str, str] | None, auth: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The call's headers: ``metadata`` with lower-case keys, then ``auth``. Raises
    ValueError/TypeError for an entry that is not a valid gRPC header (a caller's mistake)."""
    headers: list[tuple[str, str]] = []
    for key, value in (metadata or {}).items():
        entry = (key.lower(), value)
        encode_metadata([entry])
        headers.append(entry)
    headers.extend(auth)
    return headers


def check_request_size(request: bytes, max_message_bytes: int) -> None:
    """RESOURCE_EXHAUSTED (nothing is sent) for a request over ``max_message_bytes``."""
    if len(request) > max_message_bytes:
        raise RpcError(
            Code.RESOURCE_EXHAUSTED,
            f"request message of {len(request)} bytes exceeds the limit of {max_message_bytes}",
        )


def new_grpclib_channel(host: str, port: int) -> grpclib.client.Channel:
    """A grpclib channel with the pass-through codec (connects on its first request); its
    connection coalesces the writes of one event-loop pass into one ``send()``."""
    return _CoalescingChannel(host, port, codec=RawCodec())


class _CoalescingChannel(grpclib.client.Channel):
    def _protocol_factory(self) -> Any:
        return coalesce_writes(super()._protocol_factory())


async def unary_call(
    channel: grpclib.client.Channel,
    address: str,
    method: str,
    request: bytes,
    timeout: float | None,
    headers: list[tuple[str, str]],
    max_message_bytes: int,
) -> bytes:
    """One unary call of ``method`` over ``channel`` (on the running asyncio loop); failures
    map to :class:`RpcError` as the module docstring says."""
    stream = channel.request(
        method, Cardinality.UNARY_UNARY, bytes, bytes, timeout=timeout, metadata=headers
    )
    try:
        async with stream:
            await stream.send_message(request, end=True)
            reply = await stream.recv_message()
    except GRPCError as exc:
        raise RpcError(
            exc.status.value, exc.message or "", str_metadata(stream.trailing_metadata)
        ) from None
    except StreamTerminatedError as exc:
        raise RpcError(Code.UNAVAILABLE, f"{address}: {exc}") from None
    except TimeoutError as exc:  # grpclib's deadline, or an OS-level connect timeout
        if exc.errno is None:
            raise RpcError(Code.DEADLINE_EXCEEDED, f"deadline exceeded ({timeout}s)") from None
        raise RpcError(Code.UNAVAILABLE, f"{address}: {exc}") from None
    except OSError as exc:  # refused, reset, unreachable, DNS failure
        raise RpcError(Code.UNAVAILABLE, f"{address}: {exc}") from None
    except ProtocolError as exc:
        raise RpcError(Code.UNAVAILABLE, f"{address}: protocol error: {exc}") from None
    if reply is None:
        raise RpcError(Code.INTERNAL, "server sent no response message")
    if len(reply) > max_message_bytes:
        raise RpcError(
            Code.RESOURCE_EXHAUSTED,
            f"response message of {len(reply)} bytes exceeds the limit of {max_message_bytes}",
        )
    return bytes(reply)
