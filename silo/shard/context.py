"""The parts one shard's operations share, built once by :class:`~silo.shard.shard.JobShard`.

Each room of the shard (leasing, operator operations, reads) is a :class:`ShardRoom` over the
same :class:`ShardContext`: one store, one mirror, one commit protocol (and its lock), one seeded
random stream and one set of in-memory statistics.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from silo.runtime import Runtime
from silo.shard.commit import CommitProtocol
from silo.shard.limiter import Limiter
from silo.shard.mirror import ShardMirror
from silo.shard.rows import JobRows
from silo.shard.store import ShardStore
from silo.shard.validation import ShardLimits


@dataclass(frozen=True)
class ShardContext:
    runtime: Runtime
    store: ShardStore
    mirror: ShardMirror
    shard_id: int
    limits: ShardLimits
    lease_ms: int
    rng: random.Random
    rows: JobRows
    limiter: Limiter
    commit: CommitProtocol
    stats: dict[str, int]
    """Operation counts since open: enqueued, leased, retried, reaped, undelivered."""
    completed: dict[str, int]
    """Jobs that reached each terminal status since open."""


class ShardRoom:
    """Base of the shard's rooms: the shared parts as attributes."""

    def __init__(self, ctx: ShardContext) -> None:
        self._rt = ctx.runtime
        self._store = ctx.store
        self._mirror = ctx.mirror
        self.shard_id = ctx.shard_id
        self._limits = ctx.limits
        self._lease_ms = ctx.lease_ms
        self._rng = ctx.rng
        self._rows = ctx.rows
        self._limiter = ctx.limiter
        self._commit = ctx.commit
        self._lock = ctx.commit.lock
        self._stats = ctx.stats
        self._completed = ctx.completed
