"""The shard map: which shard owns which slice of the tenant hash space.

Tenants are routed by ``xxh64(tenant, seed=0)`` into half-open ranges ``[start, end)`` over
``[0, 2**64)``. A valid map's ranges never overlap and together cover the whole space. The map
is versioned; a changed map always carries a higher version.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import xxhash

HASH_SPACE = 1 << 64


def tenant_hash(tenant: str) -> int:
    """The routing hash of a tenant: xxh64 of its UTF-8 bytes with seed 0."""
    return xxhash.xxh64_intdigest(tenant.encode("utf-8"), seed=0)


@dataclass(frozen=True, slots=True)
class ShardRange:
    """Shard ``shard_id`` owns hashes ``start <= h < end`` (``end`` may be ``2**64``)."""

    shard_id: int
    start: int
    end: int

    def contains(self, h: int) -> bool:
        return self.start <= h < self.end


class InvalidShardMap(ValueError):
    """A shard map whose ranges overlap, leave gaps, or repeat a shard id."""


@dataclass(frozen=True, slots=True)
class ShardMap:
    version: int
    shards: tuple[ShardRange, ...]

    def __post_init__(self) -> None:
        ordered = sorted(self.shards, key=lambda s: s.start)
        if not ordered:
            raise InvalidShardMap("a shard map needs at least one shard")
        ids = [s.shard_id for s in ordered]
        if len(set(ids)) != len(ids):
            raise InvalidShardMap("shard ids repeat")
        expected = 0
        for s in ordered:
            if s.start != expected:
                raise InvalidShardMap(
                    f"shard {s.shard_id} starts at {s.start}, expected {expected}"
                )
            if s.end <= s.start:
                raise InvalidShardMap(f"shard {s.shard_id} has an empty range")
            expected = s.end
        if expected != HASH_SPACE:
            raise InvalidShardMap("the shard ranges do not cover the whole hash space")
        object.__setattr__(self, "shards", tuple(ordered))

    @classmethod
    def even(cls, count: int, version: int = 1) -> ShardMap:
        """``count`` shards (ids 0..count-1) splitting the hash space into equal ranges."""
        if not 1 <= count <= 4096:
            raise InvalidShardMap(f"shard count {count} is outside 1..4096")
        bounds = [i * HASH_SPACE // count for i in range(count)] + [HASH_SPACE]
        return cls(version, tuple(ShardRange(i, bounds[i], bounds[i + 1]) for i in range(count)))

    def shard_for_hash(self, h: int) -> ShardRange:
        lo, hi = 0, len(self.shards) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.shards[mid].start <= h:
                lo = mid
            else:
                hi = mid - 1
        return self.shards[lo]

    def shard_for_tenant(self, tenant: str) -> ShardRange:
        return self.shard_for_hash(tenant_hash(tenant))

    def get(self, shard_id: int) -> ShardRange | None:
        for s in self.shards:
            if s.shard_id == shard_id:
                return s
        return None

    def encode(self) -> bytes:
        return msgpack.packb(
            [1, self.version, [[s.shard_id, s.start, s.end - 1] for s in self.shards]]
        )

    @classmethod
    def decode(cls, data: bytes) -> ShardMap:
        try:
            fmt, version, shards = msgpack.unpackb(data)
            if fmt != 1:
                raise InvalidShardMap(f"unknown shard map format {fmt}")
            return cls(
                int(version), tuple(ShardRange(int(a), int(b), int(c) + 1) for a, b, c in shards)
            )
        except (ValueError, TypeError) as exc:
            raise InvalidShardMap(f"unreadable shard map: {exc}") from exc
