"""One suite, two backends: the simulated etcd (sim/etcd.py on the simulated network and clock)
and a real etcd process. Whatever the coordinator relies on is checked here against both, so
the model cannot drift from etcd unnoticed."""

from __future__ import annotations

import pytest
import trio

from silo.cluster.etcd import (
    Compare,
    Delete,
    EventType,
    Get,
    LeaseNotFound,
    Put,
    RangeResult,
)
from silo.cluster.shard_map import InvalidShardMap, ShardMap
from silo.errors import InvalidArgument, Unavailable
from tests.cluster.conftest import EtcdEnv

# -- KV ------------------------------------------------------------------------------------------


async def test_put_get_and_prefix_range(env: EtcdEnv, clock) -> None:
    c = await env.client()
    await c.put(env.key("b/2"), b"two")
    await c.put(env.key("b/1"), b"one")
    await c.put(env.key("b0"), b"outside")  # shares the text prefix "b" but not "b/"
    await c.put(env.key("a"), b"before")
    result = await c.range(env.key("b/"), prefix=True)
    assert [(kv.key, kv.value) for kv in result.kvs] == [
        (env.key("b/1"), b"one"), (env.key("b/2"), b"two")
    ]
    assert result.count == 2 and not result.more
    limited = await c.range(env.key("b"), prefix=True, limit=2)
    assert [kv.key for kv in limited.kvs] == [env.key("b/1"), env.key("b/2")]
    assert limited.more and limited.count == 3
    assert await c.get(env.key("missing")) is None
    got = await c.get(env.key("a"))
    assert got is not None and got.value == b"before" and got.lease == 0


async def test_revisions_per_write_and_per_key(env: EtcdEnv, clock) -> None:
    c = await env.client()
    k = env.key("k")
    r1 = await c.put(k, b"1")
    r2 = await c.put(k, b"2")
    assert r2 == r1 + 1
    kv = await c.get(k)
    assert kv is not None
    assert (kv.create_revision, kv.mod_revision, kv.version) == (r1, r2, 2)
    assert await c.delete(k) == 1
    assert await c.delete(k) == 0  # deleting nothing writes nothing
    after = await c.range(k)
    assert after.revision == r2 + 1
    r4 = await c.put(k, b"3")
    assert r4 == r2 + 2
    kv = await c.get(k)
    assert kv is not None and (kv.create_revision, kv.version) == (r4, 1)


async def test_prefix_delete_is_one_revision(env: EtcdEnv, clock) -> None:
    c = await env.client()
    for i in range(3):
        await c.put(env.key(f"d/{i}"), b"x")
    before = (await c.range(env.key("d/"), prefix=True)).revision
    assert await c.delete(env.key("d/"), prefix=True) == 3
    assert (await c.range(env.key("d/"), prefix=True)).revision == before + 1


async def test_txn_compares_and_ops(env: EtcdEnv, clock) -> None:
    c = await env.client()
    k = env.key("t")
    r = await c.put(k, b"v1")
    res = await c.txn([Compare.mod_revision(k, r), Compare.value_equals(k, b"v1")],
                      [Put(k, b"v2"), Get(k)], [Get(k)])
    assert res.succeeded and res.revision == r + 1
    assert res.responses[0] == r + 1
    read = res.responses[1]
    assert isinstance(read, RangeResult) and read.kvs[0].value == b"v2"  # sees the earlier op
    stale = await c.txn([Compare.mod_revision(k, r)], [Put(k, b"v3")], [Get(k)])
    assert not stale.succeeded and stale.revision == r + 1
    current = stale.responses[0]
    assert isinstance(current, RangeResult) and current.kvs[0].value == b"v2"
    # A value compare on a missing key is false; a create-revision compare is 0.
    missing = env.key("nope")
    assert not (await c.txn([Compare.value_equals(missing, b"")])).succeeded
    assert (await c.txn([Compare.absent(missing)])).succeeded
    with pytest.raises(InvalidArgument, match="duplicate key"):
        await c.txn([], [Put(k, b"a"), Put(k, b"b")])


async def test_a_txn_with_a_bad_op_applies_nothing(env: EtcdEnv, clock) -> None:
    c = await env.client()
    before = (await c.range(env.key("atomic"))).revision
    with pytest.raises(LeaseNotFound):
        await c.txn([], [Put(env.key("atomic"), b"1"), Put(env.key("b"), b"2", lease=0x7123)])
    after = await c.range(env.key("atomic"))
    assert after.kvs == () and after.revision == before


async def test_put_if_absent_race_has_one_winner(env: EtcdEnv, clock) -> None:
    k = env.key("race")
    clients = [await env.client(f"n{i}") for i in range(2)]
    results: dict[int, bool] = {}

    async def contend(i: int) -> None:
        res = await clients[i].txn([Compare.absent(k)], [Put(k, f"n{i}".encode())], [Get(k)])
        results[i] = res.succeeded

    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(contend, i)
    assert sorted(results.values()) == [False, True]
    winner = next(i for i, won in results.items() if won)
    kv = await clients[0].get(k)
    assert kv is not None and kv.value == f"n{winner}".encode() and kv.version == 1


async def test_delete_if_value_equals(env: EtcdEnv, clock) -> None:
    c = await env.client()
    k = env.key("owner")
    await c.put(k, b"alice")
    assert not (await c.txn([Compare.value_equals(k, b"bob")], [Delete(k)])).succeeded
    assert await c.get(k) is not None
    assert (await c.txn([Compare.value_equals(k, b"alice")], [Delete(k)])).succeeded
    assert await c.get(k) is None


async def test_bad_keys_are_rejected_before_the_call(env: EtcdEnv, clock) -> None:
    c = await env.client()
    with pytest.raises(InvalidArgument, match="empty"):
        await c.put(b"", b"x")
    with pytest.raises(InvalidArgument, match="max_key_bytes"):
        await c.get(b"k" * 5000)


# -- leases --------------------------------------------------------------------------------------


async def test_lease_expiry_deletes_its_keys(env: EtcdEnv, clock) -> None:
    c = await env.client()
    lease, ttl = await c.grant_lease(1)
    assert ttl >= 1
    await c.put(env.key("l/a"), b"1", lease=lease)
    await c.put(env.key("l/b"), b"2", lease=lease)
    await c.put(env.key("l/keep"), b"3")
    kv = await c.get(env.key("l/a"))
    assert kv is not None and kv.lease == lease
    await trio.sleep(ttl + 2.0)
    left = await c.range(env.key("l/"), prefix=True)
    assert [kv.key for kv in left.kvs] == [env.key("l/keep")]
    assert await c.keepalive_once(lease, timeout_s=2.0) == 0


async def test_keepalive_keeps_keys_until_it_stops(env: EtcdEnv, clock) -> None:
    c = await env.client()
    lease, ttl = await c.grant_lease(1)
    await c.put(env.key("ka"), b"x", lease=lease)
    async with c.keep_alive(lease, ttl) as keeper:
        await trio.sleep(3.0)
        assert keeper.alive and keeper.renewals >= 3
        assert await c.get(env.key("ka")) is not None
    await trio.sleep(ttl + 2.0)
    assert await c.get(env.key("ka")) is None


async def test_revoke_deletes_keys_and_unknown_leases_are_not_found(env: EtcdEnv, clock) -> None:
    c = await env.client()
    lease, _ = await c.grant_lease(30)
    await c.put(env.key("r/a"), b"1", lease=lease)
    await c.put(env.key("r/b"), b"2", lease=lease)
    before = (await c.range(env.key("r/"), prefix=True)).revision
    await c.revoke_lease(lease)
    after = await c.range(env.key("r/"), prefix=True)
    assert after.kvs == () and after.revision == before + 1
    with pytest.raises(LeaseNotFound):
        await c.revoke_lease(lease)
    with pytest.raises(LeaseNotFound):
        await c.put(env.key("r/c"), b"3", lease=lease)


async def test_keeper_fails_closed_when_etcd_is_unreachable(env: EtcdEnv, clock) -> None:
    c = await env.client()
    lease, ttl = await c.grant_lease(2)
    async with c.keep_alive(lease, ttl) as keeper:
        await trio.sleep(1.0)
        assert keeper.alive
        env.pause()
        try:
            with trio.fail_after(ttl + 1.0):
                await keeper.lost.wait()
            assert not keeper.alive
            assert "not renewed in time" in keeper.loss_reason
            with pytest.raises(Unavailable, match="unavailable after 3 attempts"):
                await c.get(env.key("x"))
        finally:
            env.resume()


async def test_keeper_reports_a_lease_etcd_no_longer_has(env: EtcdEnv, clock) -> None:
    c = await env.client()
    lease, ttl = await c.grant_lease(3)
    async with c.keep_alive(lease, ttl) as keeper:
        await c.revoke_lease(lease)
        with trio.fail_after(3.0):
            await keeper.lost.wait()
        assert "no longer exists" in keeper.loss_reason


# -- watch ---------------------------------------------------------------------------------------


async def test_watch_from_a_revision_sees_every_change_in_order(env: EtcdEnv, clock) -> None:
    c = await env.client()
    start = await c.put(env.key("w/a"), b"1")
    await c.put(env.key("w/b"), b"2")
    await c.put(env.key("other"), b"not watched")
    await c.delete(env.key("w/a"))
    await c.txn([], [Put(env.key("w/c"), b"3"), Delete(env.key("w/b"))])
    seen: list[tuple[int, list[tuple[EventType, bytes, bytes]]]] = []
    async with c.watch(env.key("w/"), prefix=True, start_revision=start) as w:
        with trio.fail_after(10):
            async for revision, events in w:
                seen.append((revision, [(e.type, e.key, e.value) for e in events]))
                if len(seen) == 4:
                    await c.put(env.key("w/a"), b"live")
                if len(seen) == 5:
                    break
    P, D = EventType.PUT, EventType.DELETE
    assert [rev - start for rev, _ in seen] == [0, 1, 3, 4, 5]
    assert [events for _, events in seen] == [
        [(P, env.key("w/a"), b"1")],
        [(P, env.key("w/b"), b"2")],
        [(D, env.key("w/a"), b"")],
        [(P, env.key("w/c"), b"3"), (D, env.key("w/b"), b"")],
        [(P, env.key("w/a"), b"live")],
    ]


async def test_watch_from_now_sees_only_later_changes(env: EtcdEnv, clock) -> None:
    c = await env.client()
    await c.put(env.key("n/old"), b"x")
    async with c.watch(env.key("n/"), prefix=True) as w:
        with trio.fail_after(10):
            await w.created.wait()
            await c.put(env.key("n/new"), b"y")
            revision, events = await w.__anext__()
    assert [e.key for e in events] == [env.key("n/new")]
    assert events[0].revision == revision


# -- coordinator ---------------------------------------------------------------------------------


async def test_membership_joins_and_leaves(env: EtcdEnv, clock) -> None:
    a = await env.coordinator("node-a")
    b = await env.coordinator("node-b")
    async with a.membership("10.0.0.1:7450", ttl_s=2) as ma:
        async with b.membership("10.0.0.2:7450", ttl_s=2):
            members = await a.members()
            assert sorted(members) == ["node-a", "node-b"]
            assert members["node-b"].address == "10.0.0.2:7450"
        await trio.sleep(3.0)  # past b's TTL: gone by the revoke, and a is kept alive
        assert sorted(await a.members()) == ["node-a"]
        assert ma.alive
    assert await a.members() == {}


async def test_shard_map_cas_has_one_winner(env: EtcdEnv, clock) -> None:
    a = await env.coordinator("node-a")
    b = await env.coordinator("node-b")
    assert (await a.read_shard_map()).map is None
    first = await a.create_shard_map(ShardMap.even(2))
    assert first.map == ShardMap.even(2) and first.mod_revision > 0
    again = await b.create_shard_map(ShardMap.even(8))  # already there: unchanged
    assert again == first
    v2a, v2b = ShardMap.even(4, version=2), ShardMap.even(3, version=2)
    ok_a, now_a = await a.cas_shard_map(first, v2a)
    ok_b, now_b = await b.cas_shard_map(first, v2b)  # read the same revision: loses
    assert ok_a and not ok_b
    assert now_b.map == v2a and now_b.mod_revision == now_a.mod_revision
    assert await b.read_shard_map() == now_a
    with pytest.raises(InvalidShardMap, match="not above"):
        await b.cas_shard_map(now_b, ShardMap.even(5, version=2))


async def test_ownership_acquire_release_reclaim_and_force_release(env: EtcdEnv, clock) -> None:
    a = await env.coordinator("node-a")
    b = await env.coordinator("node-b")
    got = await a.acquire(3)
    assert got.acquired and got.owner == "node-a"
    lost = await b.acquire(3)
    assert not lost.acquired and lost.owner == "node-a"
    assert await b.release(3) == "node-a"  # not b's: unchanged
    assert await a.owners() == {3: "node-a"}
    restarted = await env.coordinator("node-a")  # same node id after a restart
    assert (await restarted.acquire(3)).acquired
    assert await a.release(3) is None
    assert await a.release(3) is None  # already released: nothing to do
    assert (await b.acquire(3)).acquired
    assert not await a.force_release(3, owner="node-a")
    assert await a.force_release(3, owner="node-b")
    assert await a.owners() == {}
    assert (await a.acquire(4)).acquired
    assert await b.force_release(4)
    assert not await b.force_release(4)


async def test_ownership_race_has_one_owner(env: EtcdEnv, clock) -> None:
    nodes = [await env.coordinator(f"node-{i}") for i in range(3)]
    outcomes: dict[str, bool] = {}

    async def take(i: int) -> None:
        outcomes[nodes[i].node_id] = (await nodes[i].acquire(9)).acquired

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(take, i)
    winners = [n for n, won in outcomes.items() if won]
    assert len(winners) == 1
    assert await nodes[0].owners() == {9: winners[0]}


async def test_split_records_change_by_cas(env: EtcdEnv, clock) -> None:
    a = await env.coordinator("node-a")
    assert await a.put_split(5, b"requested", 0)
    assert not await a.put_split(5, b"other", 0)  # exists now
    ((record, rev),) = (await a.splits()).values()
    assert record == b"requested"
    assert await a.put_split(5, b"cloned", rev)
    assert not await a.put_split(5, b"stale", rev)
    _, rev2 = (await a.splits())[5]
    assert not await a.delete_split(5, rev)
    assert await a.delete_split(5, rev2)
    assert await a.splits() == {}


async def test_split_child_ids_are_reserved_by_cas(env: EtcdEnv, clock) -> None:
    a = await env.coordinator("node-a")
    b = await env.coordinator("node-b")
    assert await a.reserved_split_ids() == (0, 0)
    # Both plan on the same reading; only the first write reserves ids 3 and 4.
    assert await a.put_split(1, b"split of 1 into 3, 4", 0, reserve=(4, 0))
    assert not await b.put_split(2, b"split of 2 into 3, 4", 0, reserve=(4, 0))
    assert set(await a.splits()) == {1}
    reserved_to, rev = await b.reserved_split_ids()
    assert reserved_to == 4 and rev > 0
    assert await b.put_split(2, b"split of 2 into 5, 6", 0, reserve=(6, rev))
    assert (await a.reserved_split_ids())[0] == 6
    # A retried write that had gone through is recognised by value.
    assert await b.put_split(2, b"split of 2 into 5, 6", 0, reserve=(6, rev))


async def test_membership_is_lost_when_etcd_goes_away(env: EtcdEnv, clock) -> None:
    a = await env.coordinator("node-a")
    async with a.membership("10.0.0.1:7450", ttl_s=2) as m:
        env.pause()
        try:
            with trio.fail_after(4.0):
                await m.lost.wait()
        finally:
            env.resume()
    assert not m.alive


async def test_coordinator_watch_sees_cluster_changes(env: EtcdEnv, clock) -> None:
    a = await env.coordinator("node-a")
    start = (await a.read_shard_map()).mod_revision
    before = await a.client.range(env.key("x"))
    async with a.watch(before.revision + 1) as w:
        await a.acquire(1)
        await a.create_shard_map(ShardMap.even(1))
        await a.release(1)
        kinds = []
        with trio.fail_after(10):
            async for _, events in w:
                kinds += [(e.type, e.key.rsplit(b"/", 2)[-2:]) for e in events]
                if len(kinds) == 3:
                    break
    assert start == 0
    assert kinds == [
        (EventType.PUT, [b"1", b"owner"]),
        (EventType.PUT, [env.prefix.encode().rsplit(b"/", 1)[-1], b"shard_map"]),
        (EventType.DELETE, [b"1", b"owner"]),
    ]
