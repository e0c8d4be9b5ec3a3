"""EtcdSplitCoordination against both backends (the etcd model and a real etcd): the commit txn
installs the children's map and takes their ownership keys in one step, or does nothing;
records are compare-and-swapped, so a stale writer cannot move a split back."""

from __future__ import annotations

import pytest

from silo.cluster.etcd_splits import EtcdSplitCoordination, decode_record, encode_record
from silo.cluster.shard_map import ShardMap
from silo.cluster.split import SplitPhase, plan_split, split_map
from silo.errors import Aborted, FailedPrecondition
from tests.cluster.conftest import EtcdEnv


async def _setup(env: EtcdEnv, shards: int = 2) -> tuple[object, EtcdSplitCoordination,
                                                          ShardMap]:
    coord = await env.coordinator("n1")
    created = await coord.create_shard_map(ShardMap.even(shards))
    assert created.map is not None
    assert (await coord.acquire(0)).acquired
    return coord, EtcdSplitCoordination(coord), created.map


async def test_no_map_is_a_failed_precondition(env: EtcdEnv, clock) -> None:
    coord = await env.coordinator("n1")
    with pytest.raises(FailedPrecondition):
        await EtcdSplitCoordination(coord).read_map()


async def test_commit_installs_the_children_and_takes_their_keys(env: EtcdEnv, clock) -> None:
    coord, sc, m = await _setup(env)
    record = plan_split(m, 0, m.shards[0].end // 2, 1)
    new = split_map(m, record)
    assert await sc.read_map() == m
    installed = await sc.commit_map(m, new, record)
    assert installed == new
    owners = await coord.owners()
    assert owners == {0: "n1", record.left: "n1", record.right: "n1"}
    assert await sc.read_map() == new
    # Committing again from the old map changes nothing and answers the map in force.
    assert await sc.commit_map(m, new, record) == new


async def test_commit_needs_the_parent_and_free_children(env: EtcdEnv, clock) -> None:
    coord, sc, m = await _setup(env)
    record = plan_split(m, 0, m.shards[0].end // 2, 1)
    new = split_map(m, record)
    other = await env.coordinator("n2")
    # A child key held by someone: nothing is installed, no key taken.
    assert (await other.acquire(record.left)).acquired
    assert await sc.commit_map(m, new, record) == m
    assert (await coord.owners()) == {0: "n1", record.left: "n2"}
    await other.release(record.left)
    # The parent no longer ours (force-released): refused as well.
    assert await coord.force_release(0)
    assert await sc.commit_map(m, new, record) == m
    assert await coord.owners() == {}
    # The map changed meanwhile: the map in force is answered, nothing installed.
    assert (await coord.acquire(0)).acquired
    current = await coord.read_shard_map()
    bumped = ShardMap(m.version + 1, m.shards)
    ok, _ = await coord.cas_shard_map(current, bumped)
    assert ok
    assert await sc.commit_map(m, new, record) == bumped
    assert await coord.owners() == {0: "n1"}


async def test_records_round_trip_and_a_stale_writer_is_refused(env: EtcdEnv, clock) -> None:
    coord, sc, m = await _setup(env)
    record = plan_split(m, 0, m.shards[0].end // 2, 1)
    assert await sc.records() == {}
    await sc.save_record(record)
    paused = record.advance(SplitPhase.PAUSED, 2)
    await sc.save_record(paused)
    assert await sc.records() == {0: paused}
    # A second node's coordination read before the last write: its write is refused.
    stale = EtcdSplitCoordination(await env.coordinator("n2"))
    assert await stale.records() == {0: paused}
    cloned = paused.advance(SplitPhase.CLONED, 3)
    await sc.save_record(cloned)
    with pytest.raises(Aborted):
        await stale.save_record(paused.advance(SplitPhase.ABORTED, 4, "stale"))
    assert await sc.records() == {0: cloned}
    # Re-read, it may go on.
    assert await stale.records() == {0: cloned}
    aborted = cloned.advance(SplitPhase.ABORTED, 5, "undone")
    await stale.save_record(aborted)
    assert (await sc.records())[0] == aborted


async def test_cleaned_children_are_kept_in_the_record(env: EtcdEnv, clock) -> None:
    _, sc, m = await _setup(env)
    record = plan_split(m, 0, m.shards[0].end // 2, 1)
    for phase in (SplitPhase.PAUSED, SplitPhase.CLONED, SplitPhase.COMMITTED,
                  SplitPhase.CHILDREN_OPEN):
        record = record.advance(phase, 2)
    await sc.save_record(record)
    record = record.with_cleaned(record.right)
    await sc.save_record(record)
    got = (await sc.records())[0]
    assert got.cleaned == (record.right,) and got == record
    assert decode_record(encode_record(got)) == got
    with pytest.raises(ValueError):
        record.with_cleaned(0)


async def test_old_aborted_records_are_pruned(env: EtcdEnv, clock) -> None:
    coord = await env.coordinator("n1")
    created = await coord.create_shard_map(ShardMap.even(4))
    assert created.map is not None
    sc = EtcdSplitCoordination(coord, max_finished=2)
    for parent in range(4):
        r = plan_split(created.map, parent, created.map.shards[parent].start + 10, parent,
                       await sc.reserved_ids())
        await sc.save_record(r)
        await sc.save_record(r.advance(SplitPhase.ABORTED, 100 + parent, "test"))
    assert sorted(await sc.records()) == [2, 3]


async def test_two_splits_planned_at_once_never_share_a_child(env: EtcdEnv, clock) -> None:
    _, first, m = await _setup(env)
    second = EtcdSplitCoordination(await env.coordinator("n2"))
    # Both read the reservation before either records its split: both plan children 2 and 3.
    floor_a, floor_b = await first.reserved_ids(), await second.reserved_ids()
    a = plan_split(m, 0, m.shards[0].end // 2, 1, floor_a)
    b = plan_split(m, 1, m.shards[1].start + 5, 1, floor_b)
    assert (a.left, a.right) == (b.left, b.right) == (2, 3)
    await first.save_record(a)
    with pytest.raises(Aborted, match="reservation changed meanwhile"):
        await second.save_record(b)
    assert set(await second.records()) == {0}
    # Planned again on a fresh reading, the second split takes the next ids.
    b = plan_split(m, 1, m.shards[1].start + 5, 1, await second.reserved_ids())
    assert (b.left, b.right) == (4, 5)
    await second.save_record(b)
    assert await first.reserved_ids() == 5
    # Later phases leave the reservation alone.
    await first.save_record(a.advance(SplitPhase.PAUSED, 2))
    assert await second.reserved_ids() == 5
