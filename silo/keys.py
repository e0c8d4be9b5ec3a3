"""Order-preserving key encoding and the key prefixes of one shard's store.

A key is a one-byte prefix followed by an encoded tuple. Each tuple element is a type tag and a
body:

- ``str``: tag ``0x01``, UTF-8 bytes with ``0x00`` escaped as ``0x00 0xFF``, then ``0x00 0x01``;
- ``int`` (unsigned, < 2**64): tag ``0x02``, eight bytes big-endian.

For tuples whose positions have the same types, the bytewise order of encodings equals the tuple
order, and the encoding of a tuple prefix is a byte prefix of the encoding of every tuple that
starts with it, so "all keys starting with these elements" is one contiguous range.
"""

from __future__ import annotations

from enum import IntEnum
from functools import lru_cache

MAX_U64 = (1 << 64) - 1

_STR = 0x01
_INT = 0x02

Element = str | int


class KeyError_(ValueError):
    """A key could not be decoded."""


class Prefix(IntEnum):
    """The first byte of every key: which table the key belongs to (DESIGN §3)."""

    JOB = 0x01
    STATUS = 0x02
    STATUS_INDEX = 0x03
    METADATA_INDEX = 0x04
    READY = 0x05
    TIMER = 0x06
    LEASE = 0x07
    LEASE_EXPIRY = 0x08
    ATTEMPT = 0x09
    CANCEL = 0x0A
    CONCURRENCY_REQUEST = 0x0B
    CONCURRENCY_HOLDER = 0x0C
    FLOATING_LIMIT = 0x0D
    RATE_BUCKET = 0x0E
    ATTEMPT_HIGH_WATER = 0x0F
    """Per deleted (tenant, job id): the highest attempt number it used (see
    :func:`silo.shard.tables.attempt_high_water_key`)."""
    JOB_FINGERPRINT = 0x10
    """Per stored job: the request fingerprint it was enqueued with (see
    :func:`silo.shard.tables.fingerprint_key`)."""
    RATE_RESERVATION = 0x11
    """A rate-limit token granted (see :func:`silo.shard.tables.reservation_key`)."""
    QUARANTINE = 0xE0
    """Rows set aside because the shard could not process them (see
    :func:`silo.shard.tables.quarantine_key`)."""
    META = 0xF0


@lru_cache(maxsize=65536)
def _encode_str(value: str) -> bytes:
    body = value.encode("utf-8")
    if b"\x00" in body:
        body = body.replace(b"\x00", b"\x00\xff")
    return b"\x01" + body + b"\x00\x01"


def _encode_element(element: Element) -> bytes:
    if type(element) is str:
        return _encode_str(element)
    if type(element) is int:
        if not 0 <= element <= MAX_U64:
            raise ValueError(f"key integer out of range: {element}")
        return b"\x02" + element.to_bytes(8, "big")
    if isinstance(element, bool):
        raise TypeError("bool is not a key element")
    if isinstance(element, str):
        return _encode_str(str(element))
    if isinstance(element, int):
        return _encode_element(int(element))
    raise TypeError(f"unsupported key element type: {type(element).__name__}")


def encode_tuple(elements: tuple[Element, ...]) -> bytes:
    """Encode a tuple of ``str`` and unsigned ``int`` preserving order."""
    return b"".join([_encode_element(e) for e in elements])


def decode_tuple(data: bytes) -> tuple[Element, ...]:
    """Inverse of :func:`encode_tuple`; raises :class:`KeyError_` on malformed input."""
    out: list[Element] = []
    i = 0
    n = len(data)
    while i < n:
        tag = data[i]
        i += 1
        if tag == _INT:
            if i + 8 > n:
                raise KeyError_(f"truncated integer in key {data!r}")
            out.append(int.from_bytes(data[i : i + 8], "big"))
            i += 8
        elif tag == _STR:
            body = bytearray()
            while True:
                j = data.find(b"\x00", i)
                if j < 0 or j + 1 >= n:
                    raise KeyError_(f"unterminated string in key {data!r}")
                body += data[i:j]
                marker = data[j + 1]
                i = j + 2
                if marker == 0x01:
                    break
                if marker != 0xFF:
                    raise KeyError_(f"bad escape in key {data!r}")
                body.append(0)
            try:
                out.append(body.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise KeyError_(f"invalid UTF-8 in key {data!r}") from exc
        else:
            raise KeyError_(f"unknown element tag {tag:#x} in key {data!r}")
    return tuple(out)


_PREFIX_BYTES = {p: bytes((p,)) for p in Prefix}


def key(prefix: Prefix, *elements: Element) -> bytes:
    """The key ``prefix`` + encoded ``elements``."""
    parts = [_PREFIX_BYTES[prefix]]
    for e in elements:
        # The common element types inline (this runs tens of times per job).
        t = type(e)
        if t is str:
            parts.append(_encode_str(e))  # type: ignore[arg-type]
        elif t is int and 0 <= e <= MAX_U64:  # type: ignore[operator]
            parts.append(b"\x02" + e.to_bytes(8, "big"))  # type: ignore[union-attr]
        else:
            parts.append(_encode_element(e))
    return b"".join(parts)


def parse(data: bytes) -> tuple[Prefix, tuple[Element, ...]]:
    """Split a key into its prefix and decoded elements."""
    if not data:
        raise KeyError_("empty key")
    try:
        prefix = Prefix(data[0])
    except ValueError as exc:
        raise KeyError_(f"unknown key prefix {data[0]:#x}") from exc
    return prefix, decode_tuple(data[1:])


def successor(data: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``data``.

    ``None`` when no such string exists (``data`` is all ``0xFF``), meaning "no upper bound".
    """
    stripped = data.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def prefix_range(prefix: Prefix, *elements: Element) -> tuple[bytes, bytes | None]:
    """``(start, end)``: exactly the keys of ``prefix`` whose tuple starts with ``elements``."""
    start = key(prefix, *elements)
    return start, successor(start)


def inverted(value: int) -> int:
    """``MAX_U64 - value``: sorts newest first when used for timestamps."""
    return MAX_U64 - value
