"""Crash, fault and durability semantics that only the simulator's :class:`MemoryDisk` models.

The shared contract is covered by ``tests/runtime/test_disk_conformance.py``; these tests check
the crash model of DESIGN §2: what survives :meth:`MemoryDisk.crash`, as decided by the seed.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from silo.runtime.disk import DiskError, WriteBatch
from silo.runtime.faults import Faults
from sim.disk import MemoryDisk, MemoryStore

SEEDS = range(60)


def put(*items: tuple[bytes, bytes]) -> WriteBatch:
    wb = WriteBatch()
    for key, value in items:
        wb.put(key, value)
    return wb


def key(i: int) -> bytes:
    return b"k%03d" % i


async def contents(disk: MemoryDisk, path: str) -> list[tuple[bytes, bytes]]:
    """Everything in the store at ``path``, read through a fresh open."""
    store = await disk.open(path)
    items = await store.scan(b"", None)
    await store.close()
    return items


async def start_in_flight_write(
    nursery: trio.Nursery, store: MemoryStore, batch: WriteBatch, *, sync: bool
) -> list[BaseException]:
    """Start ``store.write`` in the background and return once it is in flight.

    The returned list receives the exception the write ends with (if any).
    """
    errors: list[BaseException] = []

    async def writer() -> None:
        try:
            await store.write(batch, sync=sync)
        except DiskError as exc:
            errors.append(exc)

    nursery.start_soon(writer)
    await trio.testing.wait_all_tasks_blocked()
    return errors


# -- synced and unsynced writes across a crash ----------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
async def test_synced_writes_survive_a_crash(seed: int) -> None:
    disk = MemoryDisk(random.Random(seed))
    store = await disk.open("db")
    for i in range(5):
        await store.write(put((key(i), b"v")), sync=True)
    assert disk.crash() == {"db": (0, 0)}
    assert await contents(disk, "db") == [(key(i), b"v") for i in range(5)]


async def test_a_synced_write_makes_earlier_unsynced_writes_durable() -> None:
    for seed in SEEDS:
        disk = MemoryDisk(random.Random(seed))
        store = await disk.open("db")
        for i in range(4):
            await store.write(put((key(i), b"u")), sync=False)
        await store.write(put((b"synced", b"s")), sync=True)
        disk.crash()
        assert await contents(disk, "db") == [(key(i), b"u") for i in range(4)] + [
            (b"synced", b"s")
        ]


async def test_unsynced_writes_survive_only_as_an_in_order_prefix() -> None:
    n = 6
    kept_lengths: set[int] = set()
    for seed in SEEDS:
        disk = MemoryDisk(random.Random(seed))
        store = await disk.open("db")
        await store.write(put((b"base", b"b")), sync=True)
        for i in range(n):  # each batch writes two keys, to see that batches stay whole
            await store.write(put((key(i) + b"a", b"x"), (key(i) + b"b", b"y")), sync=False)
        report = disk.crash()
        after = await contents(disk, "db")
        kept = (len(after) - 1) // 2
        expected = [(b"base", b"b")] + [
            kv for i in range(kept) for kv in ((key(i) + b"a", b"x"), (key(i) + b"b", b"y"))
        ]
        assert sorted(after) == sorted(expected), f"seed {seed}: not a prefix: {after}"
        assert report == {"db": (kept, n)}
        kept_lengths.add(kept)
    assert len(kept_lengths) > 1, "the seed never varied how much of the unsynced log survived"
    assert {0, n} <= kept_lengths


async def test_crash_outcome_is_determined_by_the_seed() -> None:
    async def outcome(seed: int) -> list[tuple[bytes, bytes]]:
        disk = MemoryDisk(random.Random(seed))
        store = await disk.open("db")
        for i in range(10):
            await store.write(put((key(i), b"v")), sync=False)
        disk.crash()
        return await contents(disk, "db")

    for seed in range(20):
        assert await outcome(seed) == await outcome(seed)


async def test_clean_close_makes_everything_durable() -> None:
    for seed in range(20):
        disk = MemoryDisk(random.Random(seed))
        store = await disk.open("db")
        await store.write(put((b"a", b"1")), sync=False)
        await store.close()
        assert disk.crash() == {}
        assert await contents(disk, "db") == [(b"a", b"1")]


async def test_files_and_directories_survive_a_crash() -> None:
    disk = MemoryDisk(random.Random(0))
    await disk.write_file("node/meta", b"m")
    await disk.makedirs("node/shards")
    disk.crash()
    assert await disk.read_file("node/meta") == b"m"
    assert await disk.exists("node/shards")


# -- writes in flight -----------------------------------------------------------------------------


async def test_in_flight_synced_write_is_applied_whole_or_not_at_all() -> None:
    batch = put((b"x", b"1"), (b"y", b"2"), (b"z", b"3"))
    outcomes: set[bool] = set()
    for seed in SEEDS:
        disk = MemoryDisk(random.Random(seed), write_latency=1000.0)
        store = await disk.open("db")
        async with trio.open_nursery() as nursery:
            errors = await start_in_flight_write(nursery, store, batch, sync=True)
            assert await store.get(b"x") is None  # in flight: not yet visible
            report = disk.crash()
        assert len(errors) == 1 and str(errors[0]) == "store closed by crash"
        after = await contents(disk, "db")
        assert after in ([], [(b"x", b"1"), (b"y", b"2"), (b"z", b"3")])
        assert report == {"db": (1 if after else 0, 1)}
        outcomes.add(bool(after))
    assert outcomes == {True, False}


async def test_in_flight_write_after_unsynced_writes_survives_only_within_a_prefix() -> None:
    log = [put((b"u1", b"1")), put((b"u2", b"2")), put((b"w", b"3"))]
    prefixes = [sorted(kv for b in log[:k] for kv in b) for k in range(len(log) + 1)]
    seen: set[int] = set()
    for seed in SEEDS:
        disk = MemoryDisk(random.Random(seed))
        store = await disk.open("db")
        await store.write(log[0], sync=False)
        await store.write(log[1], sync=False)
        disk.write_latency = 1000.0
        async with trio.open_nursery() as nursery:
            await start_in_flight_write(nursery, store, log[2], sync=True)
            disk.crash()
        after = await contents(disk, "db")
        assert after in prefixes, f"seed {seed}: {after} is not a prefix of the write order"
        seen.add(prefixes.index(after))
    assert seen == {0, 1, 2, 3}


async def test_completed_in_flight_write_is_durable(autojump_clock: trio.abc.Clock) -> None:
    disk = MemoryDisk(random.Random(0), write_latency=5.0)
    store = await disk.open("db")
    before = trio.current_time()
    await store.write(put((b"k", b"v")), sync=True)
    assert trio.current_time() - before == pytest.approx(5.0)
    assert disk.crash() == {"db": (0, 0)}
    assert await contents(disk, "db") == [(b"k", b"v")]


async def test_cancelling_the_caller_does_not_abort_a_write_in_flight(
    autojump_clock: trio.abc.Clock,
) -> None:
    disk = MemoryDisk(random.Random(0), write_latency=5.0)
    store = await disk.open("db")
    with trio.move_on_after(1.0):
        await store.write(put((b"k", b"v")), sync=True)
    # Like the real adapter (a worker thread cannot be interrupted), the write completed.
    assert await store.get(b"k") == b"v"
    assert disk.durable_items("db") == [(b"k", b"v")]


async def test_concurrent_writes_are_applied_in_start_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    disk = MemoryDisk(random.Random(0), write_latency=1.0)
    store = await disk.open("db")
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(store.write, put((b"k", b"%d" % i), (key(i), b"")))
            await trio.testing.wait_all_tasks_blocked()
    assert await store.get(b"k") == b"4"
    assert trio.current_time() == pytest.approx(5.0)  # one write in flight at a time


async def test_queued_writes_behind_an_in_flight_write_are_lost_on_crash() -> None:
    disk = MemoryDisk(random.Random(3), write_latency=1000.0)
    store = await disk.open("db")
    async with trio.open_nursery() as nursery:
        first = await start_in_flight_write(nursery, store, put((b"a", b"1")), sync=True)
        second = await start_in_flight_write(nursery, store, put((b"b", b"2")), sync=True)
        report = disk.crash()
    assert report == {"db": (report["db"][0], 1)}  # only the first write was in flight
    assert len(first) == 1 and len(second) == 1
    assert await disk.open("db")  # reopenable; "b" never reached the disk
    assert b"b" not in dict(disk.durable_items("db"))


# -- stores after a crash -------------------------------------------------------------------------


async def test_stores_opened_before_a_crash_are_unusable() -> None:
    disk = MemoryDisk(random.Random(0))
    store = await disk.open("db")
    await store.write(put((b"k", b"v")))
    snap = store.snapshot()
    disk.crash()
    assert disk.open_paths() == []
    calls = [
        store.get(b"k"),
        store.scan(b"", None),
        store.write(put((b"k", b"w"))),
        store.close(),
        snap.get(b"k"),
        snap.scan(b"", None),
    ]
    for call in calls:
        with pytest.raises(DiskError, match="store closed by crash"):
            await call
    with pytest.raises(DiskError, match="store closed by crash"):
        store.snapshot()
    reopened = await disk.open("db")  # the lock died with the process
    assert await reopened.get(b"k") == b"v"
    await reopened.close()
    assert await contents(disk, "db") == [(b"k", b"v")]  # the dead handle changed nothing


async def test_every_open_store_crashes_together() -> None:
    disk = MemoryDisk(random.Random(5))
    one, two = await disk.open("a/one"), await disk.open("a/two")
    closed = await disk.open("a/three")
    await closed.close()
    assert disk.open_paths() == ["a/one", "a/two"]
    assert set(disk.crash()) == {"a/one", "a/two"}
    for store in (one, two):
        with pytest.raises(DiskError):
            await store.get(b"k")


# -- write errors ---------------------------------------------------------------------------------


async def test_write_error_raises_and_changes_nothing() -> None:
    faults = Faults(random.Random(11), rates={"disk.write.error": 1.0})
    faults.enabled = False
    disk = MemoryDisk(random.Random(0), faults)
    store = await disk.open("db")
    await store.write(put((b"a", b"1"), (b"b", b"2")), sync=True)
    await store.write(put((b"c", b"3")), sync=False)
    visible = await store.scan(b"", None)
    durable = disk.durable_items("db")
    faults.enabled = True

    for sync in (True, False):
        wb = put((b"a", b"changed"), (b"new", b"x"))
        wb.delete(b"b")
        with pytest.raises(DiskError):
            await store.write(wb, sync=sync)
    assert faults.fired == {"disk.write.error": 2}
    assert await store.scan(b"", None) == visible
    assert disk.durable_items("db") == durable  # the failed sync flushed nothing either
    disk.crash()
    faults.enabled = False
    after = await contents(disk, "db")
    assert after in (durable, visible)  # the earlier unsynced "c" may or may not survive


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), writes=st.integers(1, 30))
def test_intermittent_write_errors_keep_every_batch_atomic(seed: int, writes: int) -> None:
    async def scenario() -> None:
        faults = Faults(random.Random(seed), rates={"disk.write.error": 0.4})
        disk = MemoryDisk(random.Random(seed + 1), faults)
        store = await disk.open("db")
        model: dict[bytes, bytes] = {}
        for i in range(writes):
            items = {key(i % 7): b"%d" % i, key((i * 3) % 7): b"%d'" % i}
            try:
                await store.write(put(*items.items()), sync=bool(i % 2))
            except DiskError:
                pass
            else:
                model.update(items)
            assert dict(await store.scan(b"", None)) == model

    trio.run(scenario)


# -- clone and destroy ----------------------------------------------------------------------------


async def test_clone_copies_only_durable_state() -> None:
    for seed in range(10):
        disk = MemoryDisk(random.Random(seed))
        store = await disk.open("src")
        await store.write(put((b"synced", b"1")), sync=True)
        await store.write(put((b"unsynced", b"2")), sync=False)
        await disk.clone("src", "dst")  # the source is still open with an unsynced write
        assert await contents(disk, "dst") == [(b"synced", b"1")]
        await store.close()  # a clean close makes the unsynced write durable...
        await disk.clone("src", "dst2")  # ...so a clone now includes it
        assert await contents(disk, "dst2") == [(b"synced", b"1"), (b"unsynced", b"2")]


async def test_clone_copies_files_beneath_the_store() -> None:
    disk = MemoryDisk(random.Random(0))
    await (await disk.open("src")).close()
    await disk.write_file("src/extra/meta", b"m")
    await disk.clone("src", "dst")
    assert await disk.read_file("dst/extra/meta") == b"m"


async def test_misuse_of_open_stores_and_paths_is_an_error() -> None:
    disk = MemoryDisk(random.Random(0))
    store = await disk.open("dir/db")
    with pytest.raises(DiskError):
        await disk.destroy("dir")  # a store beneath is open
    with pytest.raises(DiskError):
        await disk.clone("dir/db", "dir/db")
    with pytest.raises(DiskError):
        await disk.clone("missing", "dst")
    await disk.write_file("file", b"")
    with pytest.raises(DiskError):
        await disk.open("file")
    with pytest.raises(DiskError):
        await disk.read_file("dir")
    with pytest.raises(DiskError):
        await disk.open("./dir//db")  # paths are normalised: same store, lock held
    await store.close()
    with pytest.raises(DiskError, match="store is closed"):
        await store.get(b"k")


# -- a shared data root: one view per host --------------------------------------------------------


async def test_host_views_share_stores_and_lock_them_across_hosts() -> None:
    root = MemoryDisk(random.Random(0))
    a, b = root.host_view(random.Random(1)), root.host_view(random.Random(2))
    store = await a.open("shards/1")
    await store.write(put((b"k", b"from a")), sync=True)
    with pytest.raises(DiskError, match="lock already held"):
        await b.open("shards/1")
    await store.close()
    assert await contents(b, "shards/1") == [(b"k", b"from a")]
    assert root.durable_get("shards/1", b"k") == b"from a"


async def test_a_host_crash_loses_only_its_own_unsynced_writes() -> None:
    for seed in SEEDS:
        root = MemoryDisk(random.Random(seed))
        a = root.host_view(random.Random(seed + 1000))
        b = root.host_view(random.Random(seed + 2000))
        sa, sb = await a.open("shards/1"), await b.open("shards/2")
        for i in range(3):
            await sa.write(put((key(i), b"a")), sync=False)
            await sb.write(put((key(i), b"b")), sync=False)
        report = a.crash()
        assert list(report) == ["shards/1"]
        assert b.open_paths() == ["shards/2"]
        assert await sb.get(key(2)) == b"b"  # b's store is still open, with all it wrote
        kept = report["shards/1"][0]
        assert await contents(b, "shards/1") == [(key(i), b"a") for i in range(kept)]
        await sb.close()
        assert await contents(a, "shards/2") == [(key(i), b"b") for i in range(3)]


async def test_host_view_hooks_see_opens_and_closes() -> None:
    root = MemoryDisk(random.Random(0))
    a, b = root.host_view(random.Random(1)), root.host_view(random.Random(2))
    seen: list[str] = []
    for view, name in ((a, "a"), (b, "b")):
        view.on_open = lambda p, n=name: seen.append(f"{n} open {p}")
        view.on_opened = lambda p, n=name: seen.append(f"{n} opened {p}")
        view.on_close = lambda p, n=name: seen.append(f"{n} closed {p}")
    store = await a.open("s")
    with pytest.raises(DiskError):
        await b.open("s")
    await store.close()
    await b.open("s")
    b.crash()
    assert seen == ["a open s", "a opened s", "b open s", "a closed s", "b open s", "b opened s",
                    "b closed s"]
