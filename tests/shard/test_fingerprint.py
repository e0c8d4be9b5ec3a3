"""The request fingerprint is stored with every job, so its bytes must never change: the
fast implementation is checked against the original reflective one."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import xxhash

from silo.model import (
    ConcurrencyLimit,
    FloatingConcurrencyLimit,
    NewJob,
    RateLimit,
    RetryPolicy,
)
from silo.shard.fingerprint import job_fingerprint


def reference_fingerprint(job: NewJob, job_id: str) -> bytes:
    """The fingerprint as first defined (a walk over the dataclass fields on every call)."""
    fields = [["id", job_id]]
    for f in dataclasses.fields(job):
        if f.name == "job_id":
            continue
        value = getattr(job, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        if f.default_factory is not dataclasses.MISSING and value == f.default_factory():
            continue
        fields.append([f.name, _canonical(value)])
    return xxhash.xxh3_128_digest(msgpack.packb(fields, use_bin_type=True))


def _canonical(value: Any) -> Any:
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
    return value


JOBS = [
    NewJob("g"),
    NewJob("g", b"\x80"),
    NewJob("g", bytearray(b"abc"), tenant="t1", job_id="ignored"),
    NewJob("g", memoryview(b"xyz"), priority=3, start_at_ms=12345),
    NewJob("g", retry=RetryPolicy(retry_count=5, backoff_factor=1.5, randomize=True)),
    NewJob("g", retry=RetryPolicy()),
    NewJob("g", metadata={"b": "2", "a": "1"}),
    NewJob("g", limits=(ConcurrencyLimit("q", 3), RateLimit("r", "k", 10, 1000))),
    NewJob("g", limits=(FloatingConcurrencyLimit("f", 2, 500, {"z": "y"}),)),
    NewJob("g", timeout_ms=30_000, priority=0),
]


def test_fingerprint_bytes_match_the_reference_encoding() -> None:
    for job in JOBS:
        for job_id in ("j1", "ü\x00x"):
            assert job_fingerprint(job, job_id) == reference_fingerprint(job, job_id), job


def test_fingerprint_tells_jobs_apart() -> None:
    prints = {job_fingerprint(job, "j") for job in JOBS}
    # NewJob("g", retry=RetryPolicy()) equals NewJob("g"): the same fingerprint.
    assert len(prints) == len(JOBS) - 1
    assert job_fingerprint(NewJob("g"), "a") != job_fingerprint(NewJob("g"), "b")
