"""The reconcile decision (pure): what a node acquires, opens, closes and releases."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from silo.cluster.layout import MemberInfo
from silo.cluster.reconcile import Action, ClusterView, Kind, plan, targets
from silo.cluster.shard_map import ShardMap

MAP = ShardMap.even(8)


def members(*names: str) -> dict[str, MemberInfo]:
    return {n: MemberInfo(n, f"127.0.0.1:{7000 + i}") for i, n in enumerate(names)}


def view(me: str, live: tuple[str, ...], owners: dict[int, str], serving: set[int] = frozenset(),
         sticky: bool = False) -> ClusterView:
    return ClusterView(me, members(*live), MAP, owners, frozenset(serving), sticky)


def test_a_lone_node_acquires_every_shard() -> None:
    assert plan(view("a", ("a",), {})) == [Action(Kind.ACQUIRE, s) for s in range(8)]


def test_nodes_acquire_only_their_targets_and_together_cover_the_map() -> None:
    live = ("a", "b", "c")
    wanted = {n: [x.shard_id for x in plan(view(n, live, {}))] for n in live}
    assert sorted(s for ss in wanted.values() for s in ss) == list(range(8))
    t = targets(view("a", live, {}))
    for n, ss in wanted.items():
        assert all(t[s] == n for s in ss)
        assert len(ss) <= -(-8 // 3)


def test_a_restarted_node_reopens_the_shards_it_still_holds() -> None:
    live = ("a", "b", "c")
    t = targets(view("a", live, {}))
    owners = dict(t)
    mine = [s for s, o in owners.items() if o == "a"]
    assert plan(view("a", live, owners)) == [Action(Kind.OPEN, s) for s in mine]


def test_shards_held_by_a_dead_node_are_left_alone() -> None:
    owners = {s: "dead" for s in range(8)}
    assert plan(view("a", ("a", "b"), owners)) == []


def test_a_joining_node_makes_the_owner_close_before_release() -> None:
    t2 = targets(view("a", ("a", "b"), {}))
    owners = dict(t2)
    serving_a = {s for s, o in owners.items() if o == "a"}
    t3 = targets(view("a", ("a", "b", "c"), {}))
    moves = plan(view("a", ("a", "b", "c"), owners, serving_a))
    expected = [Action(Kind.MOVE_OUT, s) for s in sorted(serving_a) if t3[s] != "a"]
    assert moves == expected and moves  # something moves to the new node
    # The newcomer takes nothing until the old owner let go.
    assert plan(view("c", ("a", "b", "c"), owners)) == []
    freed = {s: o for s, o in owners.items() if Action(Kind.MOVE_OUT, s) not in moves}
    assert {a.shard_id for a in plan(view("c", ("a", "b", "c"), freed))} == {
        a.shard_id for a in moves if t3[a.shard_id] == "c"}


def test_sticky_placement_never_gives_up_a_held_shard() -> None:
    owners = {s: "a" for s in range(8)}
    assert plan(view("a", ("a", "b", "c"), owners, set(range(8)), sticky=True)) == []
    assert plan(view("b", ("a", "b", "c"), owners, sticky=True)) == []
    # Unowned shards are still placed.
    del owners[3]
    t = targets(view("a", ("a", "b", "c"), {}))
    assert plan(view(t[3], ("a", "b", "c"), owners, sticky=True)) == [Action(Kind.ACQUIRE, 3)]


def test_a_force_released_shard_stops_being_served() -> None:
    owners = {s: "a" for s in range(8)}
    del owners[5]
    acts = plan(view("a", ("a",), owners, set(range(8))))
    assert acts[0] == Action(Kind.STOP, 5)
    assert Action(Kind.ACQUIRE, 5) in acts  # and, as the only member, takes it again


def test_a_held_shard_placed_elsewhere_and_not_served_is_released() -> None:
    live = ("a", "b")
    t = targets(view("a", live, {}))
    theirs = next(s for s, o in t.items() if o == "b")
    assert plan(view("a", live, {theirs: "a"}))[0] == Action(Kind.RELEASE, theirs)


@settings(max_examples=200, deadline=None)
@given(
    live=st.lists(st.sampled_from("abcde"), min_size=1, max_size=5, unique=True),
    owner_of=st.lists(st.sampled_from(["", "a", "b", "c", "d", "e", "x"]), min_size=8,
                      max_size=8),
    serving=st.sets(st.integers(0, 7)),
    sticky=st.booleans(),
)
def test_plan_only_touches_own_or_free_shards(live, owner_of, serving, sticky) -> None:
    me = live[0]
    owners = {s: o for s, o in enumerate(owner_of) if o}
    acts = plan(view(me, tuple(live), owners, serving, sticky))
    seen = set()
    gave_up = False
    for a in acts:
        assert (a.shard_id, a.kind) not in seen
        seen.add((a.shard_id, a.kind))
        if a.kind in (Kind.MOVE_OUT, Kind.RELEASE, Kind.OPEN):
            assert owners.get(a.shard_id) == me
        if a.kind is Kind.ACQUIRE:
            assert a.shard_id not in owners
        if a.kind is Kind.STOP:
            assert a.shard_id in serving and owners.get(a.shard_id) != me
        if a.kind in (Kind.MOVE_OUT, Kind.STOP):
            assert a.shard_id in serving
        if a.kind in (Kind.OPEN, Kind.ACQUIRE):
            assert a.shard_id not in serving or (a.shard_id, Kind.STOP) in seen
            gave_up = True
        else:
            assert not gave_up, "give-ups come before takes"
    if sticky:
        assert not any(a.kind in (Kind.MOVE_OUT, Kind.RELEASE) for a in acts)


def test_survivors_do_not_reshuffle_while_a_node_is_down() -> None:
    live = ("a", "b", "c")
    owners = dict(targets(view("a", live, {})))
    for survivor in ("a", "b"):
        serving = {s for s, o in owners.items() if o == survivor}
        assert plan(view(survivor, ("a", "b"), owners, serving)) == []
    # Once the down node's shards are force-released, the survivors take them.
    freed = {s: o for s, o in owners.items() if o != "c"}
    taken = [a for n in ("a", "b") for a in plan(view(n, ("a", "b"), freed,
                                                     {s for s, o in freed.items() if o == n}))
             if a.kind is Kind.ACQUIRE]
    assert sorted(a.shard_id for a in taken) == sorted(s for s, o in owners.items() if o == "c")


@settings(max_examples=200, deadline=None)
@given(
    live=st.lists(st.sampled_from("abcde"), min_size=1, max_size=5, unique=True),
    owner_of=st.lists(st.sampled_from(["", "a", "b", "c", "d", "e", "x"]), min_size=8,
                      max_size=8),
)
def test_every_unowned_shard_has_a_live_target(live, owner_of) -> None:
    owners = {s: o for s, o in enumerate(owner_of) if o}
    t = targets(view(live[0], tuple(live), owners))
    for s in range(8):
        if s not in owners:
            assert t[s] in live
