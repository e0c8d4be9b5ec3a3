"""Request fingerprints: what makes a re-sent enqueue recognisable as the same job.

A client retries an enqueue whose answer it did not get, with the same job id. The shard keeps a
fingerprint of every job it stores, so the retry can be told apart from a different job that
happens to use the id: same fingerprint, the retry is answered OK (``existed``); different, it
is ALREADY_EXISTS.

The fingerprint is xxh3-128 over a canonical msgpack encoding of the job's fields as the shard
received them (tenant, id, task group, payload, priority, start time, retry policy, metadata
sorted by key, limits in order, and any field added later). A field at its default value is
left out of the encoding, so adding a field with a default keeps the fingerprints of stored
jobs valid.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import msgpack
import xxhash

from silo.model import FINGERPRINT_BYTES, NewJob

__all__ = ["FINGERPRINT_BYTES", "job_fingerprint"]


def job_fingerprint(job: NewJob, job_id: str) -> bytes:
    """The 16-byte fingerprint of ``job`` enqueued under ``job_id``."""
    fields: list[Any] = [["id", job_id]]
    for name, has_default, default in _fields_of(type(job)):
        if name == "job_id":
            continue
        value = getattr(job, name)
        if has_default and value == default:
            continue
        fields.append([name, _canonical(value)])
    data = msgpack.packb(fields, use_bin_type=True)
    return xxhash.xxh3_128_digest(data)


@functools.cache
def _fields_of(cls: type) -> tuple[tuple[str, bool, Any], ...]:
    """``(name, has a default, the default)`` per field of the dataclass ``cls``, in order.

    Computed once per class: walking ``dataclasses.fields`` and calling default factories on
    every enqueue was most of its cost. A factory's value is taken once; defaults are compared
    by equality only, never handed out, so sharing one instance is safe.
    """
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out.append((f.name, True, f.default))
        elif f.default_factory is not dataclasses.MISSING:
            out.append((f.name, True, f.default_factory()))
        else:
            out.append((f.name, False, None))
    return tuple(out)


_PLAIN = (str, int, float, bool, type(None))


def _canonical(value: Any) -> Any:
    """A msgpack-encodable form of ``value`` that is the same for equal values."""
    t = type(value)
    if t in _PLAIN or t is bytes:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [t.__name__] + [
            [name, _canonical(getattr(value, name))] for name, _, _ in _fields_of(t)
        ]
    if isinstance(value, dict):
        return [[_canonical(k), _canonical(v)] for k, v in sorted(value.items())]
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return repr(value)
