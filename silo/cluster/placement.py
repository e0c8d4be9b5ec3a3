"""Which live member should own each shard: bounded-load rendezvous hashing (pure).

Every (member, shard) pair has a fixed weight, ``xxh64("{member}/{shard}")``; each member ranks
shards by it. Shards are placed one at a time in a fixed order (by ``xxh64("{shard}")``, then id)
on their highest-weight member that still has room, where room is a capacity of
``ceil(shards / members) + slack``. So:

- no member holds more than ``ceil(shards / members) + slack`` shards, and every shard is placed
  (the capacities add up to at least the shard count); silo uses slack 0 or 1, within the bound
  ``ceil(shards / members) + 1`` of DESIGN §6;
- the result depends only on the sets of shards and members, never on their order;
- with enough slack that no capacity binds, it is plain rendezvous hashing: a member leaving moves
  only its own shards, and a member joining takes shards only from others;
- with binding capacity, a change moves few shards beyond those (each displaced shard falls to
  its next-ranked member).
"""

from __future__ import annotations

from collections.abc import Iterable

import xxhash

MAX_SHARDS = 65_536
MAX_MEMBERS = 4096


def weight(member: str, shard: int) -> int:
    """The rendezvous weight of ``member`` for ``shard``."""
    return xxhash.xxh64_intdigest(f"{member}/{shard}".encode(), seed=0)


def capacity(shard_count: int, member_count: int, slack: int = 0) -> int:
    """The most shards one member may hold: ``ceil(shards / members) + slack``."""
    return -(-shard_count // member_count) + slack


def assign(shards: Iterable[int], members: Iterable[str], *, slack: int = 0) -> dict[int, str]:
    """Map every shard to one of ``members``; empty when there are no members.

    Raises ``ValueError`` for more than ``MAX_SHARDS`` shards or ``MAX_MEMBERS`` members, a
    negative slack, or an empty member name.
    """
    shard_ids = sorted(set(shards))
    names = sorted(set(members))
    if len(shard_ids) > MAX_SHARDS:
        raise ValueError(f"{len(shard_ids)} shards exceed 'max_shards' {MAX_SHARDS}")
    if len(names) > MAX_MEMBERS:
        raise ValueError(f"{len(names)} members exceed 'max_members' {MAX_MEMBERS}")
    if slack < 0:
        raise ValueError(f"slack {slack} is negative")
    if any(not n for n in names):
        raise ValueError("member names must not be empty")
    if not names:
        return {}
    cap = capacity(len(shard_ids), len(names), slack)
    load = dict.fromkeys(names, 0)
    order = sorted(shard_ids, key=lambda s: (xxhash.xxh64_intdigest(str(s).encode()), s))
    result: dict[int, str] = {}
    for shard in order:
        ranked = sorted(names, key=lambda m: (-weight(m, shard), m))
        for member in ranked:
            if load[member] < cap:
                result[shard] = member
                load[member] += 1
                break
    return dict(sorted(result.items()))


__all__ = ["MAX_MEMBERS", "MAX_SHARDS", "assign", "capacity", "weight"]
