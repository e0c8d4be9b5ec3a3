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
from typing import Any

import msgpack
import xxhash

from silo.model import FINGERPRINT_BYTES, NewJob

__all__ = ["FINGERPRINT_BYTES", "job_fingerprint"]


def job_fingerprint(job: NewJob, job_id: str) -> bytes:
    """The 16-byte fingerprint of ``job`` enqueued under ``job_id``."""
    fields = [["id", job_id]]
    for f in dataclasses.fields(job):
        if f.name == "job_id":
            continue
        value = getattr(job, f.name)
        if _is_default(f, value):
            continue
        fields.append([f.name, _canonical(value)])
    data = msgpack.packb(fields, use_bin_type=True)
    return xxhash.xxh3_128_digest(data)


def _is_default(f: dataclasses.Field[Any], value: Any) -> bool:
    if f.default is not dataclasses.MISSING:
        return bool(value == f.default)
    if f.default_factory is not dataclasses.MISSING:
        return bool(value == f.default_factory())
    return False


def _canonical(value: Any) -> Any:
    """A msgpack-encodable form of ``value`` that is the same for equal values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [type(value).__name__] + [
            [f.name, _canonical(getattr(value, f.name))] for f in dataclasses.fields(value)
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
