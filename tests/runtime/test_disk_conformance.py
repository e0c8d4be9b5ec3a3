"""One conformance suite for every :class:`~silo.runtime.disk.Disk` implementation.

Each test runs against the real LevelDB adapter (on pytest's ``tmp_path``) and the simulator's
:class:`~sim.disk.MemoryDisk` (seeded), and checks only behaviour the contract in
:mod:`silo.runtime.disk` promises, so both must pass identically.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from silo.runtime.disk import Disk, DiskError, KVStore, WriteBatch
from silo.runtime.leveldb import LevelDBDisk
from sim.disk import MemoryDisk

IMPLS = ["leveldb", "memory"]


def make_disk(impl: str, seed: int = 0) -> Disk:
    if impl == "leveldb":
        return LevelDBDisk()
    return MemoryDisk(random.Random(seed))


@dataclass
class Env:
    """A disk and a root directory to put its stores and files under."""

    disk: Disk
    root: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)


@pytest.fixture(params=IMPLS)
def env(request: pytest.FixtureRequest, tmp_path: Any) -> Env:
    return Env(make_disk(request.param), str(tmp_path))


def batch_of(*ops: tuple[bytes, bytes | None]) -> WriteBatch:
    wb = WriteBatch()
    for key, value in ops:
        if value is None:
            wb.delete(key)
        else:
            wb.put(key, value)
    return wb


async def put_all(store: KVStore, items: dict[bytes, bytes], *, sync: bool = True) -> None:
    await store.write(batch_of(*items.items()), sync=sync)


def model_scan(
    model: dict[bytes, bytes],
    start: bytes,
    end: bytes | None,
    reverse: bool = False,
    limit: int | None = None,
) -> list[tuple[bytes, bytes]]:
    """The reference semantics of ``scan``."""
    items = sorted((k, v) for k, v in model.items() if k >= start and (end is None or k < end))
    if reverse:
        items.reverse()
    if limit is not None:
        items = items[: max(limit, 0)]
    return items


# Keys chosen to catch any ordering that is not plain unsigned bytewise comparison: the empty key,
# NUL bytes, 0x7f/0x80 (signed-char pitfalls), 0xff, and prefixes of each other.
ODD_KEYS = [
    b"",
    b"\x00",
    b"\x00\x00",
    b"\x00\x01",
    b"\x00\xff",
    b"\x01",
    b"\x7f",
    b"\x80",
    b"a",
    b"a\x00",
    b"a\xff",
    b"ab",
    b"b",
    b"\xfe\xff",
    b"\xff",
    b"\xff\x00",
    b"\xff\xff",
    b"\xff\xff\xff",
]


# -- ordering and scans ---------------------------------------------------------------------------


async def test_empty_store(env: Env) -> None:
    store = await env.disk.open(env.path("db"))
    assert await store.get(b"missing") is None
    assert await store.scan(b"", None) == []
    assert await store.scan(b"", None, reverse=True) == []
    await store.close()


async def test_keys_are_ordered_bytewise(env: Env) -> None:
    store = await env.disk.open(env.path("db"))
    shuffled = list(ODD_KEYS)
    random.Random(7).shuffle(shuffled)
    for i, key in enumerate(shuffled):  # one write per key, in a scrambled order
        await store.write(batch_of((key, b"v%d" % i)))
    values = {key: b"v%d" % i for i, key in enumerate(shuffled)}
    expected = [(k, values[k]) for k in sorted(ODD_KEYS)]
    assert await store.scan(b"", None) == expected
    assert await store.scan(b"", None, reverse=True) == expected[::-1]
    for key in ODD_KEYS:
        assert await store.get(key) == values[key]
    await store.close()


SCAN_CASES: list[tuple[bytes, bytes | None, bool, int | None]] = [
    (start, end, reverse, limit)
    for start, end in [
        (b"", None),
        (b"", b"\x00"),  # empty range below everything except the empty key
        (b"\x00", b"\x01"),
        (b"\x00\x00", b"\x00\xff"),  # start is a key (inclusive), end is a key (exclusive)
        (b"\x00\x00\x00", b"a"),  # bounds that are not keys
        (b"a", b"a\x00"),  # exactly one key
        (b"a", b"a"),  # start == end: empty
        (b"b", b"a"),  # start > end: empty
        (b"\xff", None),
        (b"\xff\xff", b"\xff\xff\xff\xff"),
        (b"\xff\xff\xff\xff", None),  # beyond the last key
    ]
    for reverse in (False, True)
    for limit in (None, 0, 1, 2, 100)
]


@pytest.mark.parametrize(("start", "end", "reverse", "limit"), SCAN_CASES)
async def test_scan_bounds_and_limits(
    env: Env, start: bytes, end: bytes | None, reverse: bool, limit: int | None
) -> None:
    store = await env.disk.open(env.path("db"))
    model = {key: b"=" + key for key in ODD_KEYS}
    await put_all(store, model)
    got = await store.scan(start, end, reverse=reverse, limit=limit)
    assert got == model_scan(model, start, end, reverse, limit)
    await store.close()


async def test_reverse_scan_includes_a_start_key_that_is_the_last_in_range(env: Env) -> None:
    # Regression: plyvel's reverse iterator skips its first item when that key equals ``start``.
    store = await env.disk.open(env.path("db"))
    await put_all(store, {b"a": b"1", b"b": b"2", b"d": b"4"})
    assert await store.scan(b"b", b"c", reverse=True) == [(b"b", b"2")]
    assert await store.scan(b"d", None, reverse=True) == [(b"d", b"4")]
    assert await store.scan(b"a", b"b", reverse=True, limit=5) == [(b"a", b"1")]
    snap = store.snapshot()
    assert await snap.scan(b"b", b"c", reverse=True) == [(b"b", b"2")]
    snap.close()
    await store.close()


async def test_scan_negative_limit_is_empty(env: Env) -> None:
    store = await env.disk.open(env.path("db"))
    await put_all(store, {b"a": b"1"})
    assert await store.scan(b"", None, limit=-1) == []
    await store.close()


# -- atomic batches -------------------------------------------------------------------------------


async def test_batch_later_operation_on_a_key_wins(env: Env) -> None:
    store = await env.disk.open(env.path("db"))
    await put_all(store, {b"old": b"x", b"gone": b"y"})
    await store.write(
        batch_of(
            (b"a", b"1"),
            (b"a", b"2"),  # put then put: last value
            (b"b", None),
            (b"b", b"3"),  # delete then put: present
            (b"c", b"4"),
            (b"c", None),  # put then delete: absent
            (b"gone", None),  # delete of an existing key
            (b"old", b"x2"),  # overwrite
            (b"never", None),  # delete of a missing key is a no-op
        )
    )
    assert await store.scan(b"", None) == [(b"a", b"2"), (b"b", b"3"), (b"old", b"x2")]
    assert await store.get(b"c") is None
    assert await store.get(b"gone") is None
    await store.close()


async def test_empty_batch_is_a_no_op(env: Env) -> None:
    store = await env.disk.open(env.path("db"))
    await put_all(store, {b"k": b"v"})
    await store.write(WriteBatch())
    await store.write(WriteBatch(), sync=False)
    assert await store.scan(b"", None) == [(b"k", b"v")]
    await store.close()


async def test_unsynced_writes_are_visible_at_once(env: Env) -> None:
    store = await env.disk.open(env.path("db"))
    await put_all(store, {b"k": b"v"}, sync=False)
    assert await store.get(b"k") == b"v"
    assert await store.scan(b"", None) == [(b"k", b"v")]
    await store.close()


async def test_batch_is_copied_at_write(env: Env) -> None:
    store = await env.disk.open(env.path("db"))
    wb = batch_of((b"k", b"v"))
    await store.write(wb)
    wb.put(b"late", b"x")  # mutating the batch afterwards changes nothing
    assert await store.scan(b"", None) == [(b"k", b"v")]
    await store.close()


async def test_non_bytes_keys_and_values_are_rejected(env: Env) -> None:
    store = await env.disk.open(env.path("db"))
    wb = WriteBatch()
    wb.put("str-key", b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await store.write(wb)
    wb = WriteBatch()
    wb.put(b"k", "str-value")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await store.write(wb)
    assert await store.scan(b"", None) == []
    await store.close()


# -- snapshots ------------------------------------------------------------------------------------


async def test_snapshot_is_isolated_from_later_writes(env: Env) -> None:
    store = await env.disk.open(env.path("db"))
    await put_all(store, {b"a": b"1", b"b": b"2", b"c": b"3"})
    snap1 = store.snapshot()
    await store.write(batch_of((b"a", b"1'"), (b"b", None), (b"d", b"4")))
    snap2 = store.snapshot()
    await store.write(batch_of((b"c", None), (b"e", b"5")), sync=False)

    assert await snap1.get(b"a") == b"1"
    assert await snap1.get(b"b") == b"2"
    assert await snap1.get(b"d") is None
    assert await snap1.scan(b"", None) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]
    assert await snap1.scan(b"b", None, reverse=True, limit=1) == [(b"c", b"3")]
    assert await snap2.scan(b"", None) == [(b"a", b"1'"), (b"c", b"3"), (b"d", b"4")]
    assert await snap2.scan(b"", b"d", reverse=True) == [(b"c", b"3"), (b"a", b"1'")]
    assert await store.scan(b"", None) == [(b"a", b"1'"), (b"d", b"4"), (b"e", b"5")]
    snap1.close()
    assert await snap2.get(b"c") == b"3"  # closing one snapshot does not affect another
    snap2.close()
    await store.close()


# -- lifecycle: reopen, clone, destroy, locks -----------------------------------------------------


async def test_reopen_after_close_keeps_data(env: Env) -> None:
    path = env.path("dir", "db")
    store = await env.disk.open(path)
    await put_all(store, {b"synced": b"1"})
    await put_all(store, {b"unsynced": b"2"}, sync=False)
    await store.close()
    await store.close()  # idempotent
    store = await env.disk.open(path)
    assert await store.scan(b"", None) == [(b"synced", b"1"), (b"unsynced", b"2")]
    await store.close()


async def test_opening_an_open_store_fails(env: Env) -> None:
    path = env.path("db")
    store = await env.disk.open(path)
    with pytest.raises(DiskError):
        await env.disk.open(path)
    other = await env.disk.open(env.path("db2"))  # a different path is fine
    await other.close()
    await store.close()
    store = await env.disk.open(path)  # free again once closed
    await store.close()


async def test_stores_are_independent(env: Env) -> None:
    s1 = await env.disk.open(env.path("one"))
    s2 = await env.disk.open(env.path("two"))
    await put_all(s1, {b"k": b"1"})
    await put_all(s2, {b"k": b"2"})
    assert await s1.get(b"k") == b"1"
    assert await s2.get(b"k") == b"2"
    await s1.close()
    await s2.close()


async def test_clone_copies_data(env: Env) -> None:
    src, dst = env.path("src"), env.path("copies", "dst")
    store = await env.disk.open(src)
    await put_all(store, {b"a": b"1", b"\x00": b"nul", b"\xff": b"ff"})
    await store.close()
    await env.disk.clone(src, dst)

    copy = await env.disk.open(dst)
    assert await copy.scan(b"", None) == [(b"\x00", b"nul"), (b"a", b"1"), (b"\xff", b"ff")]
    await put_all(copy, {b"a": b"changed"})
    await copy.close()

    store = await env.disk.open(src)  # the source is untouched by writes to the copy
    assert await store.get(b"a") == b"1"
    await store.close()


async def test_clone_of_a_compacted_store_is_independent(env: Env) -> None:
    """Table files shared by a clone (hard links in LevelDB) never let one store's later
    writes, deletes or compactions show in the other."""
    src, a, b = env.path("src"), env.path("a"), env.path("b")
    store = await env.disk.open(src)
    items = {b"k%05d" % i: b"v" * 100 for i in range(2000)}
    await put_all(store, items)
    await store.compact_range(None, None)
    await store.close()
    await env.disk.clone(src, a)
    await env.disk.clone(src, b)
    sa = await env.disk.open(a)
    await sa.write(batch_of(*[(k, None) for k in sorted(items)[:1500]]))
    await sa.compact_range(None, None)
    assert len(await sa.scan(b"", None)) == 500
    await sa.close()
    sb = await env.disk.open(b)
    assert await sb.scan(b"", None) == sorted(items.items())
    await sb.close()
    await env.disk.destroy(src)
    sa = await env.disk.open(a)
    assert len(await sa.scan(b"", None)) == 500
    await sa.close()


async def test_compact_range_changes_no_contents(env: Env) -> None:
    store = await env.disk.open(env.path("db"))
    await put_all(store, {b"a": b"1", b"b": b"2", b"c": b"3"})
    await store.write(batch_of((b"b", None)))
    await store.compact_range(b"a", b"c")
    await store.compact_range(None, None)
    assert await store.scan(b"", None) == [(b"a", b"1"), (b"c", b"3")]
    await store.close()


async def test_clone_replaces_an_existing_destination(env: Env) -> None:
    src, dst = env.path("src"), env.path("dst")
    for path, items in ((src, {b"new": b"1"}), (dst, {b"stale": b"x"})):
        store = await env.disk.open(path)
        await put_all(store, items)
        await store.close()
    await env.disk.clone(src, dst)
    copy = await env.disk.open(dst)
    assert await copy.scan(b"", None) == [(b"new", b"1")]
    await copy.close()


async def test_destroy_removes_the_store(env: Env) -> None:
    path = env.path("db")
    store = await env.disk.open(path)
    await put_all(store, {b"k": b"v"})
    await store.close()
    assert await env.disk.exists(path)
    await env.disk.destroy(path)
    assert not await env.disk.exists(path)
    await env.disk.destroy(path)  # absent: no error
    store = await env.disk.open(path)  # reopening creates a fresh, empty store
    assert await store.scan(b"", None) == []
    await store.close()


async def test_exists_and_makedirs(env: Env) -> None:
    assert not await env.disk.exists(env.path("nothing"))
    await env.disk.makedirs(env.path("a", "b", "c"))
    await env.disk.makedirs(env.path("a", "b", "c"))  # already there: fine
    for parts in (("a",), ("a", "b"), ("a", "b", "c")):
        assert await env.disk.exists(env.path(*parts))
    store = await env.disk.open(env.path("x", "y", "db"))
    await store.close()
    assert await env.disk.exists(env.path("x", "y", "db"))
    assert await env.disk.exists(env.path("x"))  # parents of a store exist
    await env.disk.write_file(env.path("f", "meta.json"), b"{}")
    assert await env.disk.exists(env.path("f", "meta.json"))
    assert await env.disk.exists(env.path("f"))
    assert not await env.disk.exists(env.path("f", "other"))


async def test_destroy_removes_everything_beneath(env: Env) -> None:
    store = await env.disk.open(env.path("node", "shard-1"))
    await store.close()
    await env.disk.write_file(env.path("node", "meta"), b"m")
    await env.disk.destroy(env.path("node"))
    assert not await env.disk.exists(env.path("node"))
    assert not await env.disk.exists(env.path("node", "shard-1"))
    assert await env.disk.read_file(env.path("node", "meta")) is None


# -- metadata files -------------------------------------------------------------------------------


async def test_read_write_file_round_trip(env: Env) -> None:
    path = env.path("meta", "nested", "state.bin")
    assert await env.disk.read_file(path) is None
    payload = bytes(range(256))
    await env.disk.write_file(path, payload)
    assert await env.disk.read_file(path) == payload
    await env.disk.write_file(path, b"")  # replaced, including by empty content
    assert await env.disk.read_file(path) == b""
    await env.disk.write_file(path, b"v2")
    assert await env.disk.read_file(path) == b"v2"
    assert await env.disk.read_file(env.path("meta", "nested", "other")) is None


# -- property: batches, scans and reopens against a dict model -----------------------------------

KEY = st.binary(max_size=2).map(lambda b: bytes(x % 4 * 0x55 for x in b))  # bytes 00 55 aa ff
VALUE = st.binary(max_size=4)
OP = st.tuples(KEY, st.one_of(st.none(), VALUE))
ACTION = st.one_of(
    st.tuples(st.just("write"), st.lists(OP, max_size=6), st.booleans()),
    st.tuples(
        st.just("scan"),
        KEY,
        st.one_of(st.none(), KEY),
        st.booleans(),
        st.one_of(st.none(), st.integers(min_value=0, max_value=5)),
    ),
    st.tuples(st.just("get"), KEY),
    st.tuples(st.just("snapshot")),
    st.tuples(st.just("reopen")),
)


async def run_model(disk: Disk, root: str, actions: list[tuple[Any, ...]]) -> None:
    path = os.path.join(root, "db")
    store = await disk.open(path)
    model: dict[bytes, bytes] = {}
    snaps: list[tuple[Any, dict[bytes, bytes]]] = []
    try:
        for action in actions:
            kind = action[0]
            if kind == "write":
                _, ops, sync = action
                await store.write(batch_of(*ops), sync=sync)
                for key, value in ops:
                    if value is None:
                        model.pop(key, None)
                    else:
                        model[key] = value
            elif kind == "scan":
                _, start, end, reverse, limit = action
                expected = model_scan(model, start, end, reverse, limit)
                assert await store.scan(start, end, reverse=reverse, limit=limit) == expected
                for snap, frozen in snaps:
                    got = await snap.scan(start, end, reverse=reverse, limit=limit)
                    assert got == model_scan(frozen, start, end, reverse, limit)
            elif kind == "get":
                assert await store.get(action[1]) == model.get(action[1])
            elif kind == "snapshot":
                snaps.append((store.snapshot(), dict(model)))
            elif kind == "reopen":
                for snap, _ in snaps:
                    snap.close()
                snaps.clear()
                await store.close()
                store = await disk.open(path)
        assert await store.scan(b"", None) == model_scan(model, b"", None)
    finally:
        for snap, _ in snaps:
            snap.close()
        await store.close()


def run_property(impl: str, actions: list[tuple[Any, ...]], seed: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        trio.run(run_model, make_disk(impl, seed), root, actions)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.lists(ACTION, max_size=25), seed=st.integers(0, 2**32 - 1))
def test_matches_dict_model(impl: str, actions: list[tuple[Any, ...]], seed: int) -> None:
    run_property(impl, actions, seed)



async def test_get_many_matches_get(env: Env) -> None:
    store = await env.disk.open(env.path("db"))
    await store.write(batch_of((b"a", b"1"), (b"c", b"3")))
    assert await store.get_many([b"a", b"b", b"c", b"a"]) == [b"1", None, b"3", b"1"]
    assert await store.get_many([]) == []
    await store.close()
