"""The base class and the helper the generated message modules under ``silo/pb/`` are written with.

``scripts/gen_proto.py`` rewrites betterproto2-compiler's output so that each message is one
line: a subclass of :class:`Message` naming its proto package, whose fields follow on the same
line, separated by ``;`` (exactly the annotations and ``betterproto2.field(...)`` calls the
compiler wrote, with the ``betterproto2.`` prefix dropped). Each enum with renamed proto names gets
them from :func:`renamed_proto_names`. What the compiler spelled out per class
(``@dataclass(eq=False, repr=False)``, the message pool registration, the two name-mapping class
methods) is done here once, so the classes are the compiler's, field for field and byte for byte
on the wire.

Hand-written: ``scripts/gen_proto.py`` leaves this file alone when it rewrites ``silo/pb/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self, dataclass_transform

import betterproto2

from silo.pb import _codec
from silo.pb.message_pool import default_message_pool

__all__ = ["Message", "renamed_proto_names"]


@dataclass_transform(eq_default=False)
class Message(betterproto2.Message):
    """Base of the generated messages: ``class Task(Message, package="silo.v1"): <fields>``
    makes ``Task`` the betterproto2 dataclass of protobuf message ``silo.v1.Task`` and registers it
    in silo's message pool, as the compiler's ``@dataclass(eq=False, repr=False)`` and
    ``default_message_pool.register_message(package, proto_name, cls)`` did.

    ``proto_name`` is the name inside the package (``Outer.Inner`` for a nested message); it
    defaults to the class name. A subclass that names no package is an ordinary subclass.
    """

    def __init_subclass__(
        cls, package: str | None = None, proto_name: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if package is None:
            return
        dataclasses.dataclass(eq=False, repr=False)(cls)
        default_message_pool.register_message(package, proto_name or cls.__name__, cls)

    def __bytes__(self) -> bytes:
        """The binary protobuf encoding, exactly betterproto2's (:mod:`silo.pb._codec`, falling
        back to betterproto2 itself for what that codec does not handle)."""
        try:
            return _codec.encode(self)
        except Exception:
            return betterproto2.Message.__bytes__(self)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """The message encoded in ``data``, exactly as betterproto2 parses it
        (:mod:`silo.pb._codec`, falling back to betterproto2 itself for what that codec does
        not handle, including every malformed input)."""
        try:
            return _codec.decode(cls, data)  # type: ignore[no-any-return]
        except Exception:
            return super().parse(data)


def renamed_proto_names(
    proto_name_by_value: Mapping[int, str],
) -> tuple[classmethod[Any, [], dict[int, str]], classmethod[Any, [], dict[str, int]]]:
    """The ``betterproto_value_to_renamed_proto_names`` and
    ``betterproto_renamed_proto_names_to_value`` class methods of an enum whose members the
    compiler renamed (``ATTEMPT_STATE_RUNNING`` -> ``RUNNING``), given value -> proto name for
    the renamed members.

    Assign both in the enum's body (class methods are not enum members); betterproto2's enum
    metaclass reads the first while it builds the class.
    """
    by_value = dict(proto_name_by_value)
    by_name = {name: value for value, name in by_value.items()}

    def value_to_renamed_proto_names(cls: type) -> dict[int, str]:
        return dict(by_value)

    def renamed_proto_names_to_value(cls: type) -> dict[str, int]:
        return dict(by_name)

    return classmethod(value_to_renamed_proto_names), classmethod(renamed_proto_names_to_value)
