"""Where the client sends each call: the seed addresses, the shard map and each shard's owner.
Pure state and decisions, no I/O; the map arrives from GetClusterInfo answers.

A tenant hashes (xxh64) to its shard through the map; a call for a shard goes to the shard's
known owner, else to a seed. Owner hints from "shard not found" answers replace the owner
until the next map fetch; an owner that keeps failing with transient errors is forgotten, so
the next try goes to a seed (which answers with a hint or the map is fetched again).
"""

from __future__ import annotations

from collections.abc import Sequence

from silo.cluster.shard_map import HASH_SPACE, ShardMap, ShardRange
from silo.errors import Code
from silo.wire import pb


def is_shard_not_found(code: int, message: str) -> bool:
    """Whether a status says the node does not own (or know) the shard asked for."""
    return code == Code.NOT_FOUND and message.startswith("shard not found")


def shard_map_from_info(info: pb.GetClusterInfoResponse) -> ShardMap:
    ranges = tuple(
        ShardRange(s.id, s.range_start, HASH_SPACE if s.range_end_max else s.range_end)
        for s in info.shards
    )
    return ShardMap(info.map_version, ranges)


class Routing:
    """The client's view of the cluster (see the module docstring)."""

    def __init__(self, seeds: Sequence[str]) -> None:
        if not seeds:
            raise ValueError("at least one server address is required")
        self.seeds = list(seeds)
        self.shard_map: ShardMap | None = None
        self.owners: dict[int, str] = {}

    def seed(self, attempt: int) -> str:
        """The seed for try number ``attempt`` (round robin)."""
        return self.seeds[attempt % len(self.seeds)]

    def address_for(self, shard_id: int | None, attempt: int) -> str:
        """Where try ``attempt`` of a call for ``shard_id`` goes (None: any node)."""
        if shard_id is not None:
            owner = self.owners.get(shard_id)
            if owner:
                return owner
        return self.seed(attempt)

    def learn(self, info: pb.GetClusterInfoResponse) -> ShardMap:
        """Take the map and owners of a GetClusterInfo answer (replacing hints)."""
        self.shard_map = shard_map_from_info(info)
        self.owners = {s.id: s.owner_address for s in info.shards if s.owner_address}
        return self.shard_map

    def follow_hint(self, shard_id: int, hint: str) -> None:
        self.owners[shard_id] = hint

    def forget_owner(self, shard_id: int) -> None:
        self.owners.pop(shard_id, None)

    def owner_or_seed(self, shard_id: int) -> str:
        return self.owners.get(shard_id) or self.seeds[shard_id % len(self.seeds)]

    def owner_addresses(self) -> list[str]:
        """Distinct addresses of the nodes that own shards (the seeds when none are known)."""
        found = sorted(set(self.owners.values()))
        return found or list(self.seeds)
