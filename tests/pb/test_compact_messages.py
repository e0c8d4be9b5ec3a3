"""The compact message modules in silo/pb/ (one line per class, on silo/pb/_message.py) define the
same classes as betterproto2-compiler's own output: the same names, fields, type hints, defaults,
enum members and pool registrations, and, for random messages of every class, the same bytes on
the wire in both directions and the same dicts."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import betterproto2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import silo.pb.etcdserverpb
import silo.pb.mvccpb
import silo.pb.silo.v1
from silo.pb.message_pool import default_message_pool

ROOT = Path(__file__).resolve().parents[2]
COMPACT_MODULES = {
    "silo.v1": silo.pb.silo.v1,
    "etcdserverpb": silo.pb.etcdserverpb,
    "mvccpb": silo.pb.mvccpb,
}
RAW_PACKAGE = "silo_pb_as_compiled"
"""The package the compiler's unmodified output is imported as, beside silo.pb."""
MAX_DEPTH = 3
MAX_ITEMS = 3


def _classes(module: types.ModuleType, base: type) -> dict[str, type]:
    return {
        name: value
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, base)
        and value.__module__ == module.__name__
    }


def _messages(module: types.ModuleType) -> dict[str, type[betterproto2.Message]]:
    return _classes(module, betterproto2.Message)


MESSAGE_CASES = [
    (package, name) for package, module in COMPACT_MODULES.items() for name in _messages(module)
]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, types.ModuleType]]:
    """proto package -> the module betterproto2-compiler writes for it, as it writes it."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) is needed to compile")
    pytest.importorskip("betterproto2_compiler", reason="betterproto2-compiler (dev extra)")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        gen_proto = importlib.import_module("gen_proto")
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    parent = tmp_path_factory.mktemp("compiled")
    gen_proto.generate(parent / RAW_PACKAGE, gen_proto.MESSAGE_OPTIONS)
    sys.path.insert(0, str(parent))
    try:
        yield {
            package: importlib.import_module(f"{RAW_PACKAGE}.{package}")
            for package in COMPACT_MODULES
        }
    finally:
        sys.path.remove(str(parent))
        for name in [m for m in sys.modules if m.split(".")[0] == RAW_PACKAGE]:
            del sys.modules[name]


def _hint_shape(hint: Any) -> Any:
    """A type hint with classes replaced by their names (the two sets are different classes)."""
    args = typing.get_args(hint)
    if args:
        origin = typing.get_origin(hint)
        if origin is types.UnionType or origin is typing.Union:
            return ("union", frozenset(_hint_shape(a) for a in args))
        return (getattr(origin, "__name__", str(origin)), tuple(_hint_shape(a) for a in args))
    return getattr(hint, "__qualname__", repr(hint))


def _default_shape(value: Any) -> Any:
    if isinstance(value, betterproto2.Enum):
        return (type(value).__name__, value.value)
    return value


def _meta_shape(meta: betterproto2.FieldMetadata) -> tuple:
    map_meta = meta.map_meta and tuple((m.number, m.proto_type) for m in meta.map_meta)
    return (meta.number, meta.proto_type, map_meta, meta.group, meta.optional, meta.repeated)


def _field_shapes(cls: type[betterproto2.Message]) -> list[tuple]:
    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    return [
        (
            f.name,
            _hint_shape(hints[f.name]),
            _meta_shape(betterproto2.FieldMetadata.get(f)),
            _default_shape(f.default_factory()),  # type: ignore[misc]
        )
        for f in dataclasses.fields(cls)
    ]


@pytest.mark.parametrize("package", list(COMPACT_MODULES))
def test_the_same_classes_fields_and_enums(
    package: str, compiled: dict[str, types.ModuleType]
) -> None:
    raw, compact = compiled[package], COMPACT_MODULES[package]
    assert compact.__all__ == raw.__all__
    assert _messages(compact).keys() == _messages(raw).keys()
    for name, raw_cls in _messages(raw).items():
        compact_cls = getattr(compact, name)
        assert _field_shapes(compact_cls) == _field_shapes(raw_cls), name
        assert dataclasses.is_dataclass(compact_cls)
        assert compact_cls.__eq__ is betterproto2.Message.__eq__  # eq=False, as compiled
        assert compact_cls.__repr__ is betterproto2.Message.__repr__  # repr=False
        raw_url = raw.default_message_pool.type_to_url[raw_cls]
        assert default_message_pool.type_to_url[compact_cls] == raw_url
    raw_enums = _classes(raw, betterproto2.Enum)
    compact_enums = _classes(compact, betterproto2.Enum)
    assert compact_enums.keys() == raw_enums.keys()
    for name, raw_enum in raw_enums.items():
        compact_enum = compact_enums[name]
        assert [(m.name, m.value, m.proto_name) for m in compact_enum] == [
            (m.name, m.value, m.proto_name) for m in raw_enum
        ], name
        assert (
            compact_enum.betterproto_renamed_proto_names_to_value()
            == raw_enum.betterproto_renamed_proto_names_to_value()
        )


# -- random messages, built alike from both sets ------------------------------------------------

INT_RANGES = {
    betterproto2.TYPE_INT32: (-(2**31), 2**31 - 1),
    betterproto2.TYPE_SINT32: (-(2**31), 2**31 - 1),
    betterproto2.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    betterproto2.TYPE_UINT32: (0, 2**32 - 1),
    betterproto2.TYPE_FIXED32: (0, 2**32 - 1),
    betterproto2.TYPE_INT64: (-(2**63), 2**63 - 1),
    betterproto2.TYPE_SINT64: (-(2**63), 2**63 - 1),
    betterproto2.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    betterproto2.TYPE_UINT64: (0, 2**64 - 1),
    betterproto2.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(proto_type: str, cls: Any, depth: int) -> st.SearchStrategy[Any]:
    """Plain data for one value: ints, strings... (enums as ints, messages as dicts)."""
    if proto_type in INT_RANGES:
        low, high = INT_RANGES[proto_type]
        return st.integers(low, high)
    if proto_type == betterproto2.TYPE_BOOL:
        return st.booleans()
    if proto_type == betterproto2.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=False)
    if proto_type == betterproto2.TYPE_DOUBLE:
        return st.floats(allow_nan=False)
    if proto_type == betterproto2.TYPE_STRING:
        return st.text(max_size=8)
    if proto_type == betterproto2.TYPE_BYTES:
        return st.binary(max_size=8)
    if proto_type == betterproto2.TYPE_ENUM:
        return st.sampled_from([m.value for m in cls]) | st.integers(0, 99)
    if proto_type == betterproto2.TYPE_MESSAGE:
        return _data(cls, depth - 1)
    raise AssertionError(f"no strategy for {proto_type}")


def _field_data(cls: type[betterproto2.Message], field: dataclasses.Field, depth: int) -> Any:
    meta = betterproto2.FieldMetadata.get(field)
    by_field = cls._betterproto.cls_by_field
    if meta.proto_type == betterproto2.TYPE_MAP:
        assert meta.map_meta is not None
        key_type, value_type = (m.proto_type for m in meta.map_meta)
        value_cls = by_field[f"{field.name}.value"]
        if value_type == betterproto2.TYPE_MESSAGE and depth <= 0:
            return st.just({})
        keys = _scalar(key_type, None, depth)
        return st.dictionaries(keys, _scalar(value_type, value_cls, depth), max_size=MAX_ITEMS)
    if meta.proto_type == betterproto2.TYPE_MESSAGE and depth <= 0:
        return st.just([] if meta.repeated else None)
    value = _scalar(meta.proto_type, by_field[field.name], depth)
    if meta.repeated:
        return st.lists(value, max_size=MAX_ITEMS)
    if meta.optional or meta.group:
        return st.none() | value
    return value


def _data(cls: type[betterproto2.Message], depth: int) -> st.SearchStrategy[dict[str, Any]]:
    """A message of ``cls`` as plain data (field name -> value), at most one field per oneof."""
    fields = dataclasses.fields(cls)
    plain = {
        f.name: _field_data(cls, f, depth)
        for f in fields
        if not betterproto2.FieldMetadata.get(f).group
    }
    groups: dict[str, list[dataclasses.Field]] = {}
    for f in fields:
        if group := betterproto2.FieldMetadata.get(f).group:
            groups.setdefault(group, []).append(f)
    chosen = [
        st.none() | st.sampled_from(members).flatmap(
            lambda f: st.tuples(st.just(f.name), _field_data(cls, f, depth))
        )
        for members in groups.values()
    ]
    def merged(parts: tuple[dict[str, Any], tuple[Any, ...]]) -> dict[str, Any]:
        one_ofs = dict(c for c in parts[1] if c is not None and c[1] is not None)
        return {**parts[0], **one_ofs}

    return st.tuples(st.fixed_dictionaries(plain), st.tuples(*chosen)).map(merged)


def _build(cls: type[betterproto2.Message], data: dict[str, Any]) -> betterproto2.Message:
    """The message of ``cls`` (raw or compact) holding ``data``."""
    by_field = cls._betterproto.cls_by_field
    values: dict[str, Any] = {}
    for name, value in data.items():
        meta = cls._betterproto.meta_by_field_name[name]
        if meta.proto_type == betterproto2.TYPE_MAP:
            assert meta.map_meta is not None
            value_cls = by_field[f"{name}.value"]
            value_type = meta.map_meta[1].proto_type
            values[name] = {k: _one(value_type, value_cls, v) for k, v in value.items()}
        elif meta.repeated:
            values[name] = [_one(meta.proto_type, by_field[name], v) for v in value]
        else:
            values[name] = _one(meta.proto_type, by_field[name], value)
    return cls(**values)


def _one(proto_type: str, cls: Any, value: Any) -> Any:
    if value is None:
        return None
    if proto_type == betterproto2.TYPE_ENUM:
        return cls(value)
    if proto_type == betterproto2.TYPE_MESSAGE:
        return _build(cls, value)
    return value


@pytest.mark.parametrize(("package", "name"), MESSAGE_CASES, ids=lambda x: x)
def test_random_messages_encode_and_decode_alike(
    package: str, name: str, compiled: dict[str, types.ModuleType]
) -> None:
    raw_cls = getattr(compiled[package], name)
    compact_cls = getattr(COMPACT_MODULES[package], name)

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_data(raw_cls, MAX_DEPTH))
    def check(data: dict[str, Any]) -> None:
        raw, compact = _build(raw_cls, data), _build(compact_cls, data)
        encoded = bytes(raw)
        assert bytes(compact) == encoded
        assert bytes(compact_cls.parse(encoded)) == encoded
        assert raw_cls.parse(bytes(compact)) == raw
        assert compact_cls.parse(encoded).to_dict() == raw.to_dict()
        assert repr(compact) == repr(raw)

    check()
