"""Cluster key names and the pure decisions on txn outcomes (retried writes included)."""

from __future__ import annotations

import pytest

from silo.cluster.etcd import KeyValue, RangeResult, TxnResult
from silo.cluster.layout import (
    ClusterKeys,
    MemberInfo,
    acquire_outcome,
    cas_outcome,
    check_node_id,
    check_successor,
    release_outcome,
)
from silo.cluster.shard_map import InvalidShardMap, ShardMap
from silo.errors import InvalidArgument


def kv(key: bytes, value: bytes, mod: int = 7) -> KeyValue:
    return KeyValue(key, value, 3, mod, 1, 0)


def failed_with(*kvs: KeyValue) -> TxnResult:
    return TxnResult(False, 9, (RangeResult(tuple(kvs), 9, False, len(kvs)),))


def test_key_names_and_parsing() -> None:
    keys = ClusterKeys("/silo/prod")
    assert keys.member("n1") == b"/silo/prod/members/n1"
    assert keys.shard_map == b"/silo/prod/shard_map"
    assert keys.owner(12) == b"/silo/prod/shards/12/owner"
    assert keys.split(4) == b"/silo/prod/splits/4"
    assert keys.member_of(keys.member("n1")) == "n1"
    assert keys.shard_of_owner(keys.owner(12)) == 12
    assert keys.parent_of_split(keys.split(4)) == 4
    assert keys.shard_of_owner(b"/silo/prod/shards/x/owner") is None
    assert keys.member_of(b"/silo/other/members/n1") is None
    assert all(k.startswith(keys.root) for k in (keys.member("a"), keys.owner(0), keys.split(0)))


@pytest.mark.parametrize("prefix", ["", "silo", "/silo/", "/si lo", "//x", "/" + "a" * 300])
def test_bad_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(InvalidArgument, match="cluster prefix"):
        ClusterKeys(prefix)


@pytest.mark.parametrize("node", ["", "-a", "a/b", "a b", "x" * 129])
def test_bad_node_ids_are_rejected(node: str) -> None:
    with pytest.raises(InvalidArgument, match="node id"):
        check_node_id(node)


def test_member_info_round_trips_and_garbage_is_an_error() -> None:
    info = MemberInfo("n1", "10.0.0.1:7450")
    assert MemberInfo.decode(info.encode()) == info
    with pytest.raises(InvalidArgument):
        MemberInfo.decode(b"{nope")


def test_acquire_outcomes() -> None:
    key = b"/c/shards/1/owner"
    assert acquire_outcome(1, "n1", TxnResult(True, 5, (5,))).acquired
    mine = acquire_outcome(1, "n1", failed_with(kv(key, b"n1")))  # retried, or reclaimed
    assert mine.acquired and mine.owner == "n1"
    theirs = acquire_outcome(1, "n1", failed_with(kv(key, b"n2")))
    assert not theirs.acquired and theirs.owner == "n2"


def test_release_outcomes() -> None:
    key = b"/c/shards/1/owner"
    assert release_outcome("n1", TxnResult(True, 5, (1,))) is None
    assert release_outcome("n1", failed_with()) is None  # already gone (a retried delete)
    # A retried delete whose first attempt applied, after which n2 acquired: released, and the
    # key names n2 (this used to be reported as "not released").
    assert release_outcome("n1", failed_with(kv(key, b"n2"))) == "n2"


def test_cas_outcomes_recognise_a_retried_cas() -> None:
    key = b"/c/shard_map"
    proposed = ShardMap.even(2, version=2).encode()
    ok, now = cas_outcome(proposed, TxnResult(True, 12, (12,)))
    assert ok and now.mod_revision == 12 and now.map == ShardMap.even(2, version=2)
    ok, now = cas_outcome(proposed, failed_with(kv(key, proposed, mod=11)))
    assert ok and now.mod_revision == 11
    other = ShardMap.even(3, version=2).encode()
    ok, now = cas_outcome(proposed, failed_with(kv(key, other, mod=11)))
    assert not ok and now.map == ShardMap.even(3, version=2)


def test_successor_maps_need_a_higher_version() -> None:
    check_successor(None, ShardMap.even(1))
    check_successor(ShardMap.even(1, version=1), ShardMap.even(2, version=2))
    with pytest.raises(InvalidShardMap):
        check_successor(ShardMap.even(1, version=3), ShardMap.even(2, version=3))
