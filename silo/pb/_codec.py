"""A faster binary codec for silo's betterproto2 messages, byte for byte and value for value the
same as betterproto2's own ``Message.__bytes__`` and ``Message.parse``.

betterproto2 encodes and decodes through ``BytesIO`` streams, one byte and one helper call at a
time, and looks up each field's default under ``warnings.catch_warnings()``; a node spends a
large share of its time there. This module does the same work from a per-class *plan* built once
from betterproto2's own field metadata (:class:`betterproto2.ProtoClassMetadata`).

Contract: :func:`encode` and :func:`decode` either return exactly what betterproto2 returns for
the same message or bytes, or raise :class:`Unsupported` (any other exception is possible too),
in which case the caller must run betterproto2's implementation, which then answers or raises as
it always did. They never succeed with a different result:

- a class whose fields use something this codec does not model (wrapped types, pydantic
  dataclasses) has no plan, and every call on it is unsupported;
- on decode, anything unusual (an unknown field number, a truncated or over-long varint, a short
  length-delimited value, a wire type that does not match the field's type, a packed value for
  a field that is not repeated) is unsupported rather than reproduced: betterproto2's lenient or
  failing handling of such input is left to betterproto2;
- on encode, values of an unexpected type make the same operations fail that fail in
  betterproto2 (and then betterproto2 raises its own error).

Both are pure: they read the message or bytes given and build new objects only, so running
betterproto2 after a failed attempt sees exactly the same input.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import betterproto2
from betterproto2 import (
    TYPE_BOOL,
    TYPE_BYTES,
    TYPE_DOUBLE,
    TYPE_ENUM,
    TYPE_FIXED32,
    TYPE_FIXED64,
    TYPE_FLOAT,
    TYPE_INT32,
    TYPE_INT64,
    TYPE_MAP,
    TYPE_MESSAGE,
    TYPE_SFIXED32,
    TYPE_SFIXED64,
    TYPE_SINT32,
    TYPE_SINT64,
    TYPE_STRING,
    TYPE_UINT32,
    TYPE_UINT64,
)

__all__ = ["Unsupported", "decode", "encode", "plan_for"]


class Unsupported(Exception):  # noqa: N818 - a signal to the caller, not an error to report
    """The codec does not handle this class or input: use betterproto2's implementation."""


# -- varints --------------------------------------------------------------------------------

_ONE_BYTE = [bytes((i,)) for i in range(128)]


def _varint(value: int) -> bytes:
    """betterproto2's ``encode_varint``: negative values as their 64-bit two's complement."""
    if value < 0:
        if value < -(1 << 63):
            raise Unsupported("varint out of range")
        value += 1 << 64
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    """The varint at ``data[i:]`` and the position after it, read as betterproto2's
    ``load_varint`` reads (at most 10 bytes); raises on a truncated or over-long varint."""
    b = data[i]
    i += 1
    if b < 0x80:
        return b, i
    result = b & 0x7F
    shift = 7
    while True:
        if shift >= 64:
            raise Unsupported("varint too long")
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


# -- plans ----------------------------------------------------------------------------------

_VARINT_TYPES = frozenset({TYPE_ENUM, TYPE_BOOL, TYPE_INT32, TYPE_INT64, TYPE_UINT32, TYPE_UINT64})
_ZIGZAG_TYPES = frozenset({TYPE_SINT32, TYPE_SINT64})
_FIXED_FMT = {
    TYPE_DOUBLE: "<d", TYPE_FLOAT: "<f", TYPE_FIXED32: "<I", TYPE_FIXED64: "<Q",
    TYPE_SFIXED32: "<i", TYPE_SFIXED64: "<q",
}
_FIXED32_TYPES = frozenset({TYPE_FLOAT, TYPE_FIXED32, TYPE_SFIXED32})
_PACKED_TYPES = frozenset(betterproto2.PACKED_TYPES)
_KNOWN_TYPES = (_VARINT_TYPES | _ZIGZAG_TYPES | frozenset(_FIXED_FMT)
                | frozenset({TYPE_STRING, TYPE_BYTES, TYPE_MESSAGE, TYPE_MAP}))

_WIRE_VARINT = 0
_WIRE_FIXED_64 = 1
_WIRE_LEN_DELIM = 2
_WIRE_FIXED_32 = 5


def _wire_type(proto_type: str) -> int:
    if proto_type in _VARINT_TYPES or proto_type in _ZIGZAG_TYPES:
        return _WIRE_VARINT
    if proto_type in _FIXED32_TYPES:
        return _WIRE_FIXED_32
    if proto_type in _FIXED_FMT:
        return _WIRE_FIXED_64
    return _WIRE_LEN_DELIM


def _raw_encoder(proto_type: str) -> Callable[[Any], bytes]:
    """betterproto2's ``_preprocess_single`` for one (unwrapped) type, without the message
    case (that one is ``bytes(value)``)."""
    if proto_type in _VARINT_TYPES:
        return _varint
    if proto_type in _ZIGZAG_TYPES:
        return lambda value: _varint(value << 1 if value >= 0 else (value << 1) ^ (~0))
    if proto_type in _FIXED_FMT:
        fmt = _FIXED_FMT[proto_type]
        return lambda value: struct.pack(fmt, value)
    if proto_type == TYPE_STRING:
        return lambda value: value.encode("utf-8")
    if proto_type == TYPE_MESSAGE:
        return bytes
    return lambda value: value  # bytes, and a map entry already encoded


def _single_encoder(number: int, proto_type: str) -> Callable[[Any], bytes]:
    """betterproto2's ``_serialize_single(number, proto_type, value)`` (no unwrap)."""
    raw = _raw_encoder(proto_type)
    wire = _wire_type(proto_type)
    key = _varint((number << 3) | wire)
    if wire != _WIRE_LEN_DELIM:
        return lambda value: key + raw(value)

    def len_delim(value: Any) -> bytes:
        b = raw(value)
        return key + _varint(len(b)) + b

    return len_delim


class _Field:
    """How one field is encoded and decoded."""

    __slots__ = ("name", "number", "proto_type", "wire", "repeated", "packed", "default",
                 "encode", "encode_raw", "cls", "is_map", "value_cls")

    def __init__(self, name: str, meta: betterproto2.FieldMetadata, default: Any,
                 cls: type | None, value_cls: type | None) -> None:
        self.name = name
        self.number = meta.number
        self.proto_type = meta.proto_type
        self.wire = _wire_type(meta.proto_type)
        self.repeated = bool(meta.repeated)
        self.packed = self.repeated and meta.proto_type in _PACKED_TYPES
        self.default = default
        self.cls = cls
        self.value_cls = value_cls
        self.is_map = meta.map_meta is not None
        self.encode_raw = _raw_encoder(meta.proto_type)
        if self.is_map:
            assert meta.map_meta is not None
            k_meta, v_meta = meta.map_meta
            sk = _single_encoder(1, k_meta.proto_type)
            sv = _single_encoder(2, v_meta.proto_type)
            entry = _single_encoder(meta.number, TYPE_MAP)

            def encode_map(value: Any) -> bytes:
                return b"".join(entry(sk(k) + sv(v)) for k, v in value.items())

            self.encode = encode_map
        elif self.packed:
            packed = _single_encoder(meta.number, TYPE_BYTES)
            raw = self.encode_raw

            def encode_packed(value: Any) -> bytes:
                buf = bytearray()
                for item in value:
                    buf += raw(item)
                return packed(buf)

            self.encode = encode_packed
        elif self.repeated:
            single = _single_encoder(meta.number, meta.proto_type)

            def encode_repeated(value: Any) -> bytes:
                return b"".join(single(item) for item in value)

            self.encode = encode_repeated
        else:
            self.encode = _single_encoder(meta.number, meta.proto_type)


_SET, _APPEND, _EXTEND, _MAP_ENTRY = range(4)
"""How a decoded value is stored: assigned, appended, extended by, or a map entry."""


class _Plan:
    __slots__ = ("fields", "encode", "table")

    def __init__(self, fields: list[_Field]) -> None:
        self.fields = fields
        self.encode = _encoder(fields)
        self.table = _decode_table(fields)
        """Field key (number << 3 | wire type) -> (field name, reader, how it is stored), for
        the keys betterproto2 decodes without surprises; any other key is unsupported."""


_PLANS: dict[type, _Plan | None] = {}


def _build_plan(cls: type) -> _Plan | None:
    try:
        if betterproto2.pydantic is not None and \
                betterproto2.pydantic.dataclasses.is_pydantic_dataclass(cls):
            return None
        meta_all = cls._betterproto  # type: ignore[attr-defined]
    except Exception:
        return None
    fields: list[_Field] = []
    for name, meta in meta_all.meta_by_field_name.items():
        if meta.unwrap is not None or meta.proto_type not in _KNOWN_TYPES:
            return None
        if meta.map_meta is not None:
            k_meta, v_meta = meta.map_meta
            if v_meta.unwrap is not None or k_meta.proto_type not in _KNOWN_TYPES \
                    or v_meta.proto_type not in _KNOWN_TYPES or k_meta.proto_type == TYPE_MAP \
                    or v_meta.proto_type == TYPE_MAP:
                return None
        default = meta_all.default_gen[name]()
        fields.append(_Field(name, meta, default, meta_all.cls_by_field.get(name),
                             meta_all.cls_by_field.get(f"{name}.value")))
    try:
        return _Plan(fields)
    except Unsupported:
        return None


def plan_for(cls: type) -> _Plan | None:
    """The plan of message class ``cls`` (built once), or None when the codec does not handle
    it."""
    try:
        return _PLANS[cls]
    except KeyError:
        plan = _PLANS[cls] = _build_plan(cls)
        return plan


# -- encode ---------------------------------------------------------------------------------


def _encoder(fields: list[_Field]) -> Callable[[Any], bytes]:
    """A function encoding a message with ``fields`` as betterproto2's ``__bytes__`` does: fields
    in declaration order, None and default (zero) values left out, unknown fields last."""
    env: dict[str, Any] = {"_varint": _varint}
    lines = ["def encode(m):", "    parts = []", "    ap = parts.append"]
    for n, f in enumerate(fields):
        env[f"D{n}"] = f.default
        env[f"E{n}"] = f.encode
        env[f"K{n}"] = _varint((f.number << 3) | f.wire)
        lines += [f"    v = m.{f.name}", f"    if v is not None and not (v == D{n}):"]
        if f.is_map or f.packed:
            lines.append(f"        ap(E{n}(v))")
        elif f.repeated and f.proto_type == TYPE_MESSAGE:
            lines += ["        for it in v:", "            b = bytes(it)",
                      f"            ap(K{n} + _varint(len(b)) + b)"]
        elif f.repeated:
            lines.append(f"        ap(E{n}(v))")
        elif f.proto_type in _VARINT_TYPES:
            lines.append(f"        ap(K{n} + _varint(v))")
        elif f.proto_type == TYPE_STRING:
            lines += ["        b = v.encode('utf-8')", f"        ap(K{n} + _varint(len(b)) + b)"]
        elif f.proto_type == TYPE_BYTES:
            lines.append(f"        ap(K{n} + _varint(len(v)) + v)")
        elif f.proto_type == TYPE_MESSAGE:
            lines += ["        b = bytes(v)", f"        ap(K{n} + _varint(len(b)) + b)"]
        else:
            lines.append(f"        ap(E{n}(v))")
    lines += ["    ap(m._unknown_fields)", "    return b''.join(parts)"]
    exec("\n".join(lines), env)  # noqa: S102 - code built above from field metadata only
    return env["encode"]  # type: ignore[no-any-return]


def encode(message: Any) -> bytes:
    """``bytes(message)`` as betterproto2 computes it (see the module contract)."""
    plan = plan_for(type(message))
    if plan is None:
        raise Unsupported(type(message).__name__)
    return plan.encode(message)


# -- decode ---------------------------------------------------------------------------------

Reader = Callable[[bytes, int], tuple[Any, int]]


def _varint_reader(f: _Field) -> Reader:
    """Reads one varint of field ``f`` as betterproto2's ``_postprocess_single`` converts it."""
    pt = f.proto_type
    if pt == TYPE_UINT32:
        def read_uint32(data: bytes, i: int) -> tuple[Any, int]:
            v, i = _read_varint(data, i)
            return v & 0xFFFFFFFF, i
        return read_uint32
    if pt == TYPE_UINT64:
        def read_uint64(data: bytes, i: int) -> tuple[Any, int]:
            v, i = _read_varint(data, i)
            return v & 0xFFFFFFFFFFFFFFFF, i
        return read_uint64
    if pt == TYPE_BOOL:
        def read_bool(data: bytes, i: int) -> tuple[Any, int]:
            v, i = _read_varint(data, i)
            return v > 0, i
        return read_bool
    if pt in (TYPE_INT32, TYPE_INT64, TYPE_ENUM):
        bits = 32 if pt == TYPE_INT32 else 64
        mask = (1 << bits) - 1
        signbit = 1 << (bits - 1)
        enum_cls = f.cls if pt == TYPE_ENUM else None
        if pt == TYPE_ENUM and enum_cls is None:
            raise Unsupported("enum without a class")

        def read_signed(data: bytes, i: int) -> tuple[Any, int]:
            v, i = _read_varint(data, i)
            v = int(((v & mask) ^ signbit) - signbit)
            if enum_cls is not None:
                v = enum_cls(v)
            return v, i
        return read_signed
    bits = 32 if pt == TYPE_SINT32 else 64
    mask = (1 << bits) - 1

    def read_zigzag(data: bytes, i: int) -> tuple[Any, int]:
        v, i = _read_varint(data, i)
        v = v & mask
        return (v >> 1) ^ (-(v & 1)), i
    return read_zigzag


def _chunk(data: bytes, i: int) -> tuple[bytes, int]:
    """The length-delimited value at ``data[i:]``; raises when it is cut short."""
    length, i = _read_varint(data, i)
    end = i + length
    if end > len(data):
        raise Unsupported("short value")
    return data[i:end], end


def _fixed_reader(f: _Field) -> Reader:
    fmt = _FIXED_FMT[f.proto_type]
    size = 4 if f.wire == _WIRE_FIXED_32 else 8

    def read_fixed(data: bytes, i: int) -> tuple[Any, int]:
        end = i + size
        if end > len(data):
            raise Unsupported("short value")
        return struct.unpack(fmt, data[i:end])[0], end
    return read_fixed


def _packed_reader(f: _Field) -> Reader:
    """Reads a packed repeated value as betterproto2 does (a list of the items)."""
    if f.wire == _WIRE_VARINT:
        one = _varint_reader(f)

        def read_packed_varints(data: bytes, i: int) -> tuple[Any, int]:
            chunk, i = _chunk(data, i)
            out = []
            pos = 0
            n = len(chunk)
            while pos < n:
                v, pos = one(chunk, pos)
                out.append(v)
            return out, i
        return read_packed_varints
    fmt = _FIXED_FMT[f.proto_type]
    size = 4 if f.wire == _WIRE_FIXED_32 else 8

    def read_packed_fixed(data: bytes, i: int) -> tuple[Any, int]:
        chunk, i = _chunk(data, i)
        if len(chunk) % size:
            raise Unsupported("short packed value")
        return [struct.unpack(fmt, chunk[p:p + size])[0]
                for p in range(0, len(chunk), size)], i
    return read_packed_fixed


def _len_delim_reader(f: _Field) -> Reader:
    pt = f.proto_type
    if pt == TYPE_STRING:
        def read_string(data: bytes, i: int) -> tuple[Any, int]:
            chunk, i = _chunk(data, i)
            return str(chunk, "utf-8"), i
        return read_string
    if pt == TYPE_BYTES:
        return _chunk
    cls = f.cls
    if cls is None:
        raise Unsupported("message without a class")

    def read_message(data: bytes, i: int) -> tuple[Any, int]:
        chunk, i = _chunk(data, i)
        return decode(cls, chunk), i
    return read_message


def _decode_table(fields: list[_Field]) -> dict[int, tuple[str, Reader, int]]:
    table: dict[int, tuple[str, Reader, int]] = {}
    for f in fields:
        if f.wire == _WIRE_LEN_DELIM:
            store = _MAP_ENTRY if f.is_map else _APPEND if f.repeated else _SET
            reader = _len_delim_reader(f)
        else:
            store = _APPEND if f.repeated else _SET
            reader = _varint_reader(f) if f.wire == _WIRE_VARINT else _fixed_reader(f)
        table[(f.number << 3) | f.wire] = (f.name, reader, store)
        if f.packed:
            table[(f.number << 3) | _WIRE_LEN_DELIM] = (f.name, _packed_reader(f), _EXTEND)
    return table


def _decode_into(cls: type, plan: _Plan, data: bytes) -> Any:
    message = cls()
    table = plan.table
    n = len(data)
    i = 0
    while i < n:
        key = data[i]
        if key < 0x80:
            i += 1
        else:
            key, i = _read_varint(data, i)
        entry = table.get(key)
        if entry is None:
            raise Unsupported("unknown field or unexpected wire type")
        name, reader, store = entry
        value, i = reader(data, i)
        if store == _SET:
            setattr(message, name, value)
        elif store == _APPEND:
            getattr(message, name).append(value)
        elif store == _EXTEND:
            getattr(message, name).extend(value)
        else:
            getattr(message, name)[value.key] = value.value
    return message


def decode(cls: type, data: bytes) -> Any:
    """``cls.parse(data)`` as betterproto2 computes it (see the module contract)."""
    if type(data) is not bytes:
        raise Unsupported("not bytes")
    plan = plan_for(cls)
    if plan is None:
        raise Unsupported(cls.__name__)
    return _decode_into(cls, plan, data)
