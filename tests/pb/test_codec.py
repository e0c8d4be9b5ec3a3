"""silo.pb._codec encodes and decodes exactly as betterproto2 does: for random messages of every
class the same bytes, and for their encodings and every truncated or corrupted variant of them
the same message or the same exception as the compiler's unmodified classes (plain betterproto2).
Well-formed encodings take the fast path (no fallback to betterproto2)."""

from __future__ import annotations

import random
import types
from typing import Any

import betterproto2
import pytest
from hypothesis import HealthCheck, given, settings

from silo.pb import _codec
from tests.pb.test_compact_messages import (  # noqa: F401 - the fixture is used by name
    COMPACT_MODULES,
    MAX_DEPTH,
    MESSAGE_CASES,
    _build,
    _data,
    compiled,
)


def _outcome(cls: type, data: bytes) -> tuple[str, Any]:
    try:
        message = cls.parse(data)
    except Exception as exc:  # the exception itself is what must match
        return ("raised", type(exc).__name__)
    return ("parsed", _shape(message))


def _shape(value: Any) -> Any:
    """Every field value with its type (parsing corrupted bytes can put an int in a string
    field, which ``to_dict`` cannot show)."""
    if isinstance(value, betterproto2.Message):
        names = value._betterproto.meta_by_field_name
        fields = tuple((n, _shape(getattr(value, n))) for n in names)
        return (type(value).__name__, fields, value._unknown_fields)
    if isinstance(value, list):
        return ("list", tuple(_shape(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((_shape(k), _shape(v)) for k, v in value.items()))
    if isinstance(value, betterproto2.Enum):
        return (type(value).__name__, int(value))
    return (type(value).__name__, repr(value))


def _variants(encoded: bytes, rng: random.Random) -> list[bytes]:
    out = [encoded[:n] for n in range(len(encoded))]
    for _ in range(8):
        if not encoded:
            break
        b = bytearray(encoded)
        b[rng.randrange(len(b))] = rng.randrange(256)
        out.append(bytes(b))
    out.append(encoded + b"\x80")
    out.append(encoded + bytes([0xF8, 0x07, 0x01]))  # an unknown field number (127)
    return out


@pytest.mark.parametrize(("package", "name"), MESSAGE_CASES, ids=lambda x: x)
def test_the_codec_matches_betterproto2(
    package: str, name: str, compiled: dict[str, types.ModuleType]  # noqa: F811
) -> None:
    raw_cls = getattr(compiled[package], name)
    compact_cls = getattr(COMPACT_MODULES[package], name)
    rng = random.Random(name)

    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_data(raw_cls, MAX_DEPTH))
    def check(data: dict[str, Any]) -> None:
        raw, compact = _build(raw_cls, data), _build(compact_cls, data)
        encoded = bytes(raw)
        assert _codec.encode(compact) == encoded  # the fast path, not a fallback
        assert bytes(_codec.decode(compact_cls, encoded)) == encoded
        assert _codec.decode(compact_cls, encoded) == compact_cls.parse(encoded)
        for variant in _variants(encoded, rng):
            assert _outcome(compact_cls, variant) == _outcome(raw_cls, variant), variant

    check()


def test_wrong_value_types_fail_as_in_betterproto2() -> None:
    pb = COMPACT_MODULES["silo.v1"]
    cases = (("shard", 1.5), ("shard", -(2**64)), ("shard", -1), ("request_id", b"x"),
             ("retry", 2))
    for field, value in cases:
        message = pb.EnqueueRequest(**{field: value})
        try:
            expected: Any = betterproto2.Message.__bytes__(message)
        except Exception as exc:
            expected = type(exc)
        try:
            got: Any = bytes(message)
        except Exception as exc:
            got = type(exc)
        assert got == expected, (field, value)
