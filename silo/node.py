"""A silo node: the shards this node serves and the shard map it routes by.

With coordination ``none`` (the embedded default) one node owns every shard; the map is created
on first start (``shards`` equal ranges) and kept in the data directory, so a restart finds the
same shards and their data.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import trio

from silo.cluster.shard_map import ShardMap
from silo.errors import InvalidArgument, NotFound
from silo.model import LeasedTask
from silo.runtime import Runtime
from silo.shard import JobShard, ShardConfig, open_shard
from silo.shard.validation import check_max_tasks, check_task_group, check_worker_id

SHARD_OWNER_METADATA = "silo-shard-owner"
"""Trailing metadata key carrying the address of the node that owns a requested shard."""

MAX_LEASE_WAIT_MS = 30_000


@dataclass(frozen=True)
class NodeConfig:
    data_dir: str = "./silo-data"
    shards: int = 8
    node_id: str = "node-1"
    advertise_address: str = ""
    """The gRPC address clients use to reach this node (shown in the cluster info)."""
    shard: ShardConfig = field(default_factory=ShardConfig)


@dataclass(frozen=True)
class LeasedFromShard:
    shard_id: int
    task: LeasedTask


class SiloNode:
    """Routes operations to the shards this node has open."""

    def __init__(self, runtime: Runtime, config: NodeConfig, shard_map: ShardMap) -> None:
        self.runtime = runtime
        self.config = config
        self.shard_map = shard_map
        self.shards: dict[int, JobShard] = {}
        self.advertise_address = config.advertise_address
        self._ready_events: dict[str, trio.Event] = {}
        self._lease_rotation = 0
        self._draining = False

    @property
    def lease_ms(self) -> int:
        return self.config.shard.lease_ms

    def shard(self, shard_id: int) -> JobShard:
        """The open shard ``shard_id``; NOT_FOUND "shard not found" (with the owner's address in
        the error's metadata when known) otherwise."""
        shard = self.shards.get(shard_id)
        if shard is None:
            meta = {}
            if self.shard_map.get(shard_id) is not None and self.advertise_address:
                meta[SHARD_OWNER_METADATA] = self.advertise_address
            raise NotFound(f"shard not found: {shard_id}", metadata=meta)
        return shard

    def shard_for_tenant(self, tenant: str) -> JobShard:
        return self.shard(self.shard_map.shard_for_tenant(tenant).shard_id)

    def _on_ready(self, shard_id: int, task_group: str) -> None:
        event = self._ready_events.pop(task_group, None)
        if event is not None:
            event.set()

    async def lease_any(
        self, worker_id: str, task_group: str, max_tasks: int, wait_ms: int = 0
    ) -> list[LeasedFromShard]:
        """Lease up to ``max_tasks`` from this node's shards, waiting up to ``wait_ms`` for work.

        Shards are visited in a rotating order so no shard starves another. Once
        :meth:`stop_long_polls` has been called, waiting calls return at once.
        """
        limits = self.config.shard.limits
        check_worker_id(limits, worker_id)
        check_task_group(limits, task_group)
        check_max_tasks(limits, max_tasks)
        if not 0 <= wait_ms <= MAX_LEASE_WAIT_MS:
            raise InvalidArgument(f"wait_ms {wait_ms} is outside 0..{MAX_LEASE_WAIT_MS}")
        deadline = trio.current_time() + wait_ms / 1000
        while True:
            if self._draining:
                return []
            out = await self._lease_round(worker_id, task_group, max_tasks)
            remaining = deadline - trio.current_time()
            if out or remaining <= 0 or self._draining:
                if not out and wait_ms:
                    self.runtime.faults.sometimes("node.lease.empty_after_wait")
                return out
            event = self._ready_events.setdefault(task_group, trio.Event())
            if any(s.has_ready_tasks(task_group) for s in self._ordered_shards()):
                continue
            wait_s = min(remaining, self._next_timer_s())
            if self.runtime.faults.buggify("node.lease.wake_early"):
                wait_s = min(wait_s, 0.001)
            with trio.move_on_after(wait_s):
                await event.wait()
            if event.is_set():
                self.runtime.faults.sometimes("node.lease.long_poll_woken")

    def stop_long_polls(self) -> None:
        """Shutdown is starting: answer every waiting :meth:`lease_any` now (with no tasks) and
        make later calls return without waiting, so in-flight long polls do not hold up the
        server's drain for their whole ``wait_ms``."""
        self._draining = True
        events, self._ready_events = self._ready_events, {}
        for event in events.values():
            event.set()

    def _next_timer_s(self) -> float:
        now = self.runtime.clock.now_ms()
        best = math.inf
        for shard in self._ordered_shards():
            due = shard.next_timer_due_ms()
            if due is not None:
                best = min(best, max(0.0, (due - now) / 1000))
        return min(best, 1.0)

    def _ordered_shards(self) -> list[JobShard]:
        return [self.shards[i] for i in sorted(self.shards)]

    async def _lease_round(
        self, worker_id: str, task_group: str, max_tasks: int
    ) -> list[LeasedFromShard]:
        shards = self._ordered_shards()
        if not shards:
            return []
        self._lease_rotation = (self._lease_rotation + 1) % len(shards)
        shards = shards[self._lease_rotation :] + shards[: self._lease_rotation]
        out: list[LeasedFromShard] = []
        for shard in shards:
            if len(out) >= max_tasks:
                break
            if not shard.has_ready_tasks(task_group):
                continue
            want = max_tasks - len(out)
            if want > 1 and self.runtime.faults.buggify("node.lease.fewer_tasks"):
                want = (want + 1) // 2
            tasks = await shard.lease_tasks(worker_id, task_group, want)
            out.extend(LeasedFromShard(shard.shard_id, t) for t in tasks)
        if len({leased.shard_id for leased in out}) > 1:
            self.runtime.faults.sometimes("node.lease.across_shards")
        return out


async def load_or_create_shard_map(runtime: Runtime, data_dir: str, shards: int) -> ShardMap:
    path = f"{data_dir}/shard_map"
    raw = await runtime.disk.read_file(path)
    if raw is not None:
        return ShardMap.decode(raw)
    shard_map = ShardMap.even(shards)
    await runtime.disk.makedirs(data_dir)
    await runtime.disk.write_file(path, shard_map.encode())
    return shard_map


@asynccontextmanager
async def open_node(runtime: Runtime, config: NodeConfig) -> AsyncIterator[SiloNode]:
    """Open every shard of the map and serve them until exit; on exit every shard is flushed and
    closed."""
    shard_map = await load_or_create_shard_map(runtime, config.data_dir, config.shards)
    node = SiloNode(runtime, config, shard_map)
    async with AsyncExitStack() as stack:
        for rng in shard_map.shards:
            shard = await stack.enter_async_context(
                open_shard(
                    runtime,
                    f"{config.data_dir}/shards/{rng.shard_id}",
                    shard_id=rng.shard_id,
                    config=config.shard,
                )
            )
            shard.on_ready = node._on_ready
            node.shards[rng.shard_id] = shard
        yield node
