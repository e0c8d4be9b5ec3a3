"""Bounded-load rendezvous assignment: bounds, determinism and minimal movement."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from silo.cluster.placement import assign, capacity

shard_sets = st.sets(st.integers(0, 10_000), min_size=0, max_size=200)
member_sets = st.sets(st.text("abcdefghij0123456789-", min_size=1, max_size=8), min_size=1,
                      max_size=12)


@settings(max_examples=200, deadline=None)
@given(shard_sets, member_sets, st.integers(0, 1))
def test_every_shard_placed_within_the_load_bound(shards, members, slack) -> None:
    result = assign(shards, members, slack=slack)
    assert set(result) == shards
    assert set(result.values()) <= members
    bound = math.ceil(len(shards) / len(members)) + 1
    for member in members:
        load = sum(1 for m in result.values() if m == member)
        assert load <= capacity(len(shards), len(members), slack) <= bound


@settings(max_examples=100, deadline=None)
@given(shard_sets, member_sets, st.randoms(use_true_random=False))
def test_result_depends_only_on_the_sets(shards, members, rnd) -> None:
    a, b = list(shards), list(members)
    rnd.shuffle(a)
    rnd.shuffle(b)
    assert assign(a, b) == assign(sorted(shards), sorted(members))
    assert assign(a + a, b + b) == assign(shards, members)


@settings(max_examples=100, deadline=None)
@given(shard_sets, member_sets.filter(lambda m: len(m) >= 2), st.data())
def test_without_binding_capacity_a_leaving_member_moves_only_its_shards(
    shards, members, data
) -> None:
    leaving = data.draw(st.sampled_from(sorted(members)))
    unbounded = len(shards) + 1
    before = assign(shards, members, slack=unbounded)
    after = assign(shards, members - {leaving}, slack=unbounded)
    for shard, owner in before.items():
        if owner != leaving:
            assert after[shard] == owner


def test_a_joining_member_takes_a_fair_share_and_few_shards_move() -> None:
    shards = range(64)
    before = assign(shards, ["n1", "n2", "n3"])
    after = assign(shards, ["n1", "n2", "n3", "n4"])
    moved = [s for s in shards if before[s] != after[s]]
    assert sorted(list(after.values()).count(m) for m in ("n1", "n2", "n3", "n4")) == [16] * 4
    assert len(moved) < 32  # a full reshuffle would move about 48


def test_no_members_no_assignment_and_bad_input_is_rejected() -> None:
    assert assign([1, 2], []) == {}
    with pytest.raises(ValueError, match="slack"):
        assign([1], ["a"], slack=-1)
    with pytest.raises(ValueError, match="empty"):
        assign([1], [""])
    with pytest.raises(ValueError, match="max_shards"):
        assign(range(70_000), ["a"])
