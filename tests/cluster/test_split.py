"""The pure part of shard splits: phases, child ranges and ids, split points, key owners."""

from __future__ import annotations

import pytest

from silo import keys
from silo.cluster.shard_map import HASH_SPACE, ShardMap, ShardRange, tenant_hash
from silo.cluster.split import (
    IllegalSplitTransition,
    NeedsLease,
    SplitPhase,
    SplitRecord,
    check_split_hash,
    child_ids,
    decode_records,
    default_split_hash,
    encode_records,
    key_owner,
    map_has_children,
    out_of_range,
    plan_split,
    split_map,
)
from silo.errors import FailedPrecondition, InvalidArgument
from silo.keys import Prefix, key
from silo.model import Lease, Task
from silo.shard.tables import (
    attempt_high_water_key,
    fingerprint_key,
    holder_key,
    quarantine_key,
    ready_key,
    request_key,
    reservation_key,
    status_counter,
    timer_key,
)

MAP = ShardMap.even(2)


def record(phase: SplitPhase = SplitPhase.REQUESTED) -> SplitRecord:
    r = plan_split(MAP, 1, MAP.shards[1].start + 1000, 5)
    return SplitRecord.decode(r.encode()) if phase == SplitPhase.REQUESTED else \
        SplitRecord(r.parent, r.parent_start, r.parent_end, r.split_hash, r.left, r.right,
                    r.map_version, phase)


def test_phases_advance_in_order() -> None:
    r = record()
    for phase in (SplitPhase.PAUSED, SplitPhase.CLONED, SplitPhase.COMMITTED,
                  SplitPhase.CHILDREN_OPEN, SplitPhase.CLEANUP_DONE):
        r = r.advance(phase, 7)
        assert r.phase == phase and r.changed_at_ms == 7
    assert r.phase.finished and r.phase.committed


@pytest.mark.parametrize("phase", [SplitPhase.REQUESTED, SplitPhase.PAUSED, SplitPhase.CLONED])
def test_abort_only_before_commit(phase: SplitPhase) -> None:
    assert record(phase).advance(SplitPhase.ABORTED, 1, "why").reason == "why"


@pytest.mark.parametrize("old,new", [
    (SplitPhase.REQUESTED, SplitPhase.CLONED),
    (SplitPhase.REQUESTED, SplitPhase.COMMITTED),
    (SplitPhase.PAUSED, SplitPhase.REQUESTED),
    (SplitPhase.COMMITTED, SplitPhase.ABORTED),
    (SplitPhase.CHILDREN_OPEN, SplitPhase.ABORTED),
    (SplitPhase.CLEANUP_DONE, SplitPhase.CHILDREN_OPEN),
    (SplitPhase.ABORTED, SplitPhase.PAUSED),
    (SplitPhase.CLONED, SplitPhase.CLONED),
])
def test_illegal_transitions_raise(old: SplitPhase, new: SplitPhase) -> None:
    with pytest.raises(IllegalSplitTransition, match="not a legal transition"):
        record(old).advance(new, 1)


def test_record_round_trips() -> None:
    r = record().advance(SplitPhase.PAUSED, 9)
    assert SplitRecord.decode(r.encode()) == r
    assert decode_records(encode_records({r.parent: r})) == ({r.parent: r}, 3)
    assert decode_records(encode_records({r.parent: r}, 9)) == ({r.parent: r}, 9)
    assert decode_records(encode_records({})) == ({}, 0)
    with pytest.raises(ValueError, match="unreadable split records"):
        decode_records(b"\x93\x02\x90\xa1x")  # [2, [], "x"]
    with pytest.raises(ValueError, match="unreadable split record"):
        SplitRecord.decode([2, 1])


def test_children_cover_the_parent_and_ids_are_new() -> None:
    r = record()
    left, right = r.children
    assert (left.shard_id, right.shard_id) == (2, 3)
    assert left.start == MAP.shards[1].start and left.end == right.start == r.split_hash
    assert right.end == HASH_SPACE
    new = split_map(MAP, r)
    assert new.version == MAP.version + 1
    assert [s.shard_id for s in new.shards] == [0, 2, 3]
    assert map_has_children(new, r) and not map_has_children(MAP, r)
    # Ids are above every id in the map, so a retired parent id never comes back.
    again = plan_split(new, 3, r.split_hash + 10, 0)
    assert (again.left, again.right) == (4, 5)
    assert child_ids(split_map(new, again)) == (6, 7)


def test_children_ids_stay_above_the_reservation() -> None:
    # A split not committed (or undone) names children that are in no map: a later split of
    # any parent plans above them.
    pending = plan_split(MAP, 1, MAP.shards[1].start + 1000, 0)
    assert (pending.left, pending.right) == (2, 3)
    other = plan_split(MAP, 0, 1000, 0, reserved_to=max(pending.left, pending.right))
    assert (other.left, other.right) == (4, 5)
    assert child_ids(MAP, reserved_to=1) == (2, 3)  # the map's ids still count


def test_split_map_refuses_a_stale_parent() -> None:
    r = record()
    with pytest.raises(FailedPrecondition, match="not in the shard map"):
        split_map(split_map(MAP, r), r)


@pytest.mark.parametrize("h", [0, MAP.shards[1].start, HASH_SPACE, HASH_SPACE + 5])
def test_at_hash_must_be_strictly_inside(h: int) -> None:
    with pytest.raises(InvalidArgument, match="not strictly inside shard 1"):
        check_split_hash(MAP.shards[1], h)
    with pytest.raises(InvalidArgument):
        plan_split(MAP, 1, h, 0)


def test_unknown_parent_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="shard 9 is not in the shard map"):
        plan_split(MAP, 9, 5, 0)


def test_default_split_hash_is_the_weighted_median() -> None:
    rng = ShardRange(0, 0, HASH_SPACE)
    assert default_split_hash(rng, [(10, 1), (20, 1)]) == 20
    assert default_split_hash(rng, [(30, 1), (10, 5), (20, 1)]) == 20
    assert default_split_hash(rng, [(10, 1), (20, 5)]) == 20
    assert default_split_hash(rng, [(10, 1), (20, 1), (30, 1), (40, 1)]) == 30
    # No data, or a single tenant: the midpoint.
    assert default_split_hash(rng, []) == HASH_SPACE // 2
    assert default_split_hash(rng, [(10, 3)]) == HASH_SPACE // 2
    # Hashes outside the range and tenants without jobs do not count.
    sub = ShardRange(1, 100, 200)
    assert default_split_hash(sub, [(5, 100), (150, 1), (160, 1), (170, 0)]) == 160
    # A tenant at the very start cannot be the point (the left child would be empty).
    assert default_split_hash(sub, [(100, 1), (100, 0)]) == 150


def test_default_split_hash_tiny_range() -> None:
    with pytest.raises(FailedPrecondition, match="too small"):
        default_split_hash(ShardRange(0, 5, 6), [])


def test_key_owner_per_table() -> None:
    t = "acme"
    task = Task("t1", t, "j1", 1, "g", 50, 123)
    lease = Lease("t1", t, "j1", 1, "g", "w", 1, 2)
    owned = [
        key(Prefix.JOB, t, "j1"), key(Prefix.STATUS, t, "j1"), key(Prefix.CANCEL, t, "j1"),
        key(Prefix.STATUS_INDEX, t, 2, 99, "j1"), key(Prefix.METADATA_INDEX, t, "k", "v", "j1"),
        key(Prefix.ATTEMPT, t, "j1", 1), ready_key(task), timer_key(task),
        request_key(t, "q", task), holder_key(t, "q", "t1"), key(Prefix.FLOATING_LIMIT, t, "q"),
        key(Prefix.RATE_BUCKET, t, "n", "k"), reservation_key(t, "n", "k", 5, "j1", 1),
        attempt_high_water_key(t, "j1"), fingerprint_key(t, "j1"),
        quarantine_key(key(Prefix.STATUS, t, "j1")),
    ]
    for k in owned:
        assert key_owner(k) == t, keys.parse(k)
    assert key_owner(key(Prefix.LEASE, "t1"), lease.encode()) == t
    assert key_owner(key(Prefix.LEASE, "t1"), b"junk") is None
    assert key_owner(key(Prefix.LEASE_EXPIRY, 5, "t1")) == NeedsLease("t1")
    # Kept: meta (recounted instead), unattributable quarantine rows, unparsable keys.
    assert key_owner(status_counter(t, 1)) is None
    assert key_owner(quarantine_key(key(Prefix.LEASE, "t1"))) is None
    assert key_owner(quarantine_key(b"\xff\xff")) is None
    assert key_owner(b"\x01\x07") is None
    assert key_owner(b"") is None


def test_out_of_range_uses_the_routing_hash() -> None:
    h = tenant_hash("acme")
    rng = ShardRange(0, h, h + 1)
    assert not out_of_range(rng, "acme")
    assert out_of_range(ShardRange(0, h + 1, HASH_SPACE), "acme")
    # The planted bugs: an exclusive start, and string positions instead of hashes.
    assert out_of_range(rng, "acme", exclusive_start=True)
    # By string, "acme" sits at b"acme\0\0\0\0", not at its hash: it counts as outside.
    assert out_of_range(rng, "acme", by_string=True)
