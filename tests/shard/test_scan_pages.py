"""Scan pages (silo.shard.store): a limited scan through the overlay of pending writes returns
exactly the first ``limit`` rows of the range, forward and reverse, checked against a model."""

from __future__ import annotations

import random

import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from silo.runtime.disk import WriteBatch
from silo.runtime.faults import Faults
from silo.shard.store import ShardStore, merge_scan
from sim.disk import MemoryDisk

KEYS = [bytes([k]) for k in range(0, 24)]
key_st = st.sampled_from(KEYS)
value_st = st.binary(min_size=1, max_size=2)


def model_scan(
    rows: dict[bytes, bytes], start: bytes, end: bytes | None, reverse: bool, limit: int | None
) -> list[tuple[bytes, bytes]]:
    ks = sorted((k for k in rows if k >= start and (end is None or k < end)), reverse=reverse)
    return [(k, rows[k]) for k in (ks if limit is None else ks[:limit])]


def apply_overlay(
    disk: dict[bytes, bytes], overlay: dict[bytes, bytes | None]
) -> dict[bytes, bytes]:
    out = dict(disk)
    for k, v in overlay.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


scan_case = st.tuples(
    st.dictionaries(key_st, value_st, max_size=20),
    st.dictionaries(key_st, st.none() | value_st, max_size=12),
    key_st,
    st.none() | key_st,
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(scan_case)
def test_merge_scan_matches_the_model_for_every_limit(case) -> None:  # noqa: ANN001
    disk, overlay, start, end, reverse = case
    expected_all = model_scan(apply_overlay(disk, overlay), start, end, reverse, None)
    extra = sum(1 for k in overlay if k >= start and (end is None or k < end))
    for limit in [None, *range(0, len(expected_all) + 3)]:
        base_limit = None if limit is None else limit + extra
        base = model_scan(disk, start, end, reverse, base_limit)
        got = merge_scan(base, overlay, start, end, reverse, limit, base_limit)
        assert got == (expected_all if limit is None else expected_all[:limit]), limit


def test_ten_rows_scanned_with_limit_ten_returns_ten() -> None:
    """10 rows on disk, 3 deleted and 3 added in the overlay past the last disk key."""
    disk = {bytes([k]): b"d" for k in range(10)}
    overlay: dict[bytes, bytes | None] = {bytes([k]): None for k in range(3)}
    overlay.update({bytes([k]): b"o" for k in range(10, 13)})
    base_limit = 10 + len(overlay)
    base = model_scan(disk, b"", None, False, base_limit)
    got = merge_scan(base, overlay, b"", None, False, 10, base_limit)
    assert [k for k, _ in got] == [bytes([k]) for k in range(3, 13)]


TEN_ROWS_CASE = (
    {bytes([k]): b"d" for k in range(10)},
    {**{bytes([k]): None for k in range(3)}, **{bytes([k]): b"o" for k in range(10, 13)}},
    b"\x00",
    None,
    False,
)


@settings(max_examples=100, deadline=None)
@given(scan_case)
@example(TEN_ROWS_CASE)
@example((*TEN_ROWS_CASE[:4], True))
def test_store_scan_through_pending_batches_matches_the_model(case) -> None:  # noqa: ANN001
    disk_rows, overlay, start, end, reverse = case

    async def run() -> None:
        faults = Faults(random.Random(0))
        disk = MemoryDisk(random.Random(0), faults)
        kv = await disk.open("s")
        batch = WriteBatch()
        batch.ops.extend(disk_rows.items())
        await kv.write(batch, sync=True)
        store = ShardStore(kv, faults, lambda kind, fields: None)
        store.submit(list(overlay.items()), [])  # pending: the writer is not running
        expected_all = model_scan(apply_overlay(disk_rows, overlay), start, end, reverse, None)
        for limit in [None, *range(0, len(expected_all) + 3)]:
            got = await store.scan(start, end, reverse=reverse, limit=limit)
            assert got == (expected_all if limit is None else expected_all[:limit]), limit

    trio.run(run)
