"""Coalesced socket writes for grpclib connections.

grpclib writes every HTTP/2 frame group to its transport as soon as h2 produces it: a unary
response is three ``send()`` system calls (headers, message, trailers) and a request two, each
a separate TCP segment that wakes the peer on its own. On loopback a ``send()`` runs the whole
receive path of the peer, so these writes were a large part of a call's CPU time.

:func:`coalesce_writes` wraps a grpclib protocol so that all the writes it makes during one pass
of the event loop go out as one ``send()``: the first write of a pass schedules a flush with
``loop.call_soon`` and later ones only append. Nothing waits longer than the rest of the
current pass; ordering is kept; ``close()`` and ``write_eof()`` flush first; ``abort()``
drops what is buffered (as the socket transport itself would).
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CoalescingTransport", "coalesce_writes"]


class CoalescingTransport(asyncio.Transport):
    """A write-buffering proxy for an asyncio transport (see the module docstring)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._scheduled = False

    # -- writing ----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._buffer.append(bytes(data))
        self._buffered += len(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Hand everything buffered to the socket transport now."""
        self._scheduled = False
        if not self._buffer:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    # -- the rest is the socket transport's -------------------------------------------------

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._buffer.clear()
        self._buffered = 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()


def coalesce_writes(protocol: Any) -> Any:
    """``protocol`` (a grpclib ``H2Protocol``), changed so that the transport it is given on
    ``connection_made`` is wrapped in a :class:`CoalescingTransport`. Returns ``protocol``."""
    connection_made = protocol.connection_made

    def wrapped(transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        connection_made(CoalescingTransport(transport, loop))  # type: ignore[arg-type]

    protocol.connection_made = wrapped
    return protocol
