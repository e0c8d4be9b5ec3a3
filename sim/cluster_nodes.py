"""A simulated cluster of real nodes: each host runs the real ``open_node`` with coordination
etcd (the real :class:`~silo.cluster.coordinator.EtcdCoordinator` and
:class:`~silo.cluster.reconcile.Reconciler`) against the etcd model over the simulated network,
with real shards, served by the real ``SiloService`` to the real clients and workers.

Storage follows the shard (DESIGN §6): every node opens a shard's directory from one shared data
root (:meth:`sim.disk.MemoryDisk.host_view`). A store is open on at most one node at a time
(LevelDB's LOCK), and a node's crash loses only the unsynced writes of the stores it had open.

The checkers see the shared root as one host, :class:`DataRoot` (a job stays in the same
store whichever node serves its shard), fed by the events of whichever node has the shard open.
Invariant 10 (:class:`sim.cluster.Ownership`) is checked on the real node's store opens (the
opener holds the shard's ownership key, and no other node with a live membership has it open)
and before each release of an ownership key (the releasing node has closed the store).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from silo.cluster.coordinator import EtcdCoordinator
from silo.cluster.etcd import EtcdClient
from silo.cluster.layout import ClusterKeys
from silo.cluster.shard_map import ShardMap
from silo.node import ClusterSettings, NodeConfig, SiloNode, open_node
from silo.runtime import Runtime
from sim.audit import ShardImage, image_of
from sim.clock import SimClock
from sim.cluster import ETCD_RETRY, PREFIX, CheckedCoordinator, Ownership, force_release_gone
from sim.disk import MemoryDisk
from sim.etcd import EtcdHost
from sim.hosts import DATA_DIR, NodeHost
from sim.invariants import Invariant

if TYPE_CHECKING:
    from sim.simulator import Simulator

SHARDS_DIR = f"{DATA_DIR}/shards/"


def shard_of_store(path: str) -> int | None:
    """The shard id of a store path ``data/shards/<id>`` (None for any other path)."""
    if not path.startswith(SHARDS_DIR):
        return None
    tail = path[len(SHARDS_DIR):]
    return int(tail) if tail.isdigit() else None


class DataRoot:
    """The shared data root as the checkers see it: one host whose shards are served by
    whichever node has them open (the checkers' ``host`` for every job of the cluster)."""

    name = "root"

    def __init__(self, world: ClusterWorld) -> None:
        self.world = world
        self.disk = world.root
        self.config = NodeConfig(data_dir=DATA_DIR)
        self.clock = SimClock()
        self.generation = 0
        """Bumped at every store open, whichever node opens it."""

    @property
    def serving(self) -> bool:
        return bool(self.world.ownership.served())

    def serves(self, shard: int) -> bool:
        """Whether ``shard`` is open on a node whose membership is alive now."""
        return shard in self.world.ownership.served()

    def shard_map(self) -> ShardMap | None:
        """The shard map in etcd (None before the first node created it)."""
        kv = self.world.etcd.model.kv.get(self.world.keys.shard_map)
        return None if kv is None else ShardMap.decode(kv.value)

    def shard_paths(self) -> list[str]:
        """Stores of the shards in the map (a split parent's left-over directory or a split's
        clones before its commit are not served, so they are not audited)."""
        shard_map = self.shard_map()
        out = []
        for p in self.disk.store_paths():
            shard = shard_of_store(p)
            if shard is not None and (shard_map is None or shard_map.get(shard) is not None):
                out.append(p)
        return out

    def shard_image(self, path: str) -> ShardImage:
        return image_of(self.disk.durable_items(path), self.shard_of_path(path))

    @staticmethod
    def shard_of_path(path: str) -> int:
        return int(path.rsplit("/", 1)[1])


class ClusterWorld:
    """The etcd host, the shared data root, ownership (invariant 10) and the operator."""

    def __init__(self, sim: Simulator, *, shards: int, ttl_s: int, interval_s: float,
                 lease_ms: int, write_latency_s: float) -> None:
        self.sim = sim
        self.shards = shards
        self.ttl_s = ttl_s
        self.interval_s = interval_s
        self.lease_ms = lease_ms
        self.write_latency_s = write_latency_s
        self.etcd = EtcdHost(sim)
        self.keys = ClusterKeys(PREFIX)
        self.root = MemoryDisk(sim.random.stream("disk/root"))
        self.ownership = Ownership(sim, self.etcd)
        self.site = DataRoot(self)
        self.gone: set[str] = set()
        """Nodes decommissioned for good (their shards force-released)."""
        self._operator: EtcdCoordinator | None = None

    async def start(self) -> None:
        await self.etcd.start()

    def nodes(self) -> list[ClusterNodeHost]:
        return [n for _, n in sorted(self.sim.nodes.items()) if isinstance(n, ClusterNodeHost)]

    async def add_node(self, name: str) -> ClusterNodeHost:
        host = ClusterNodeHost(self.sim, self, name)
        self.sim.nodes[name] = host
        await host.start()
        return host

    # -- checks -----------------------------------------------------------------------------

    def all_served(self) -> bool:
        """Every shard of the map served by a live node that holds its ownership key."""
        shard_map = self.site.shard_map()
        if shard_map is None:
            return False
        served = self.ownership.served()
        return all(served.get(r.shard_id) is not None
                   and self.ownership.key_owner(r.shard_id) == served[r.shard_id]
                   for r in shard_map.shards)

    def unserved(self) -> list[int]:
        shard_map = self.site.shard_map()
        served = self.ownership.served()
        return [] if shard_map is None else [r.shard_id for r in shard_map.shards
                                             if r.shard_id not in served]

    def resync_after_crash(self, host: ClusterNodeHost, paths: list[str]) -> None:
        """Right after ``host`` crashed: audit the durable image of each shard it had open,
        check it against the model and adopt it; then every acknowledged enqueue must be
        durable in some shard of the shared root."""
        sim = self.sim
        shard_map = self.site.shard_map()
        if shard_map is not None:
            sim.checker.adopt_map(self.site, shard_map)
        for path in paths:
            img = self.site.shard_image(path)
            sim.checker.resync_shard(self.site, self.site.shard_of_path(path), img,
                                     f"{host.name}:{path}")
        present: set[tuple[str, str]] = set()
        for path in self.site.shard_paths():
            present.update(self.site.shard_image(path).states)
        sim.checker.check_acked_present(self.site, present, host.name)

    # -- operator ---------------------------------------------------------------------------

    async def operator(self) -> EtcdCoordinator:
        if self._operator is None:
            channel = await self.sim.net.connector("operator").connect(self.etcd.address)
            client = EtcdClient(channel, rng=self.sim.random.stream("host/operator"),
                                retry=ETCD_RETRY)
            self._operator = EtcdCoordinator(client, self.keys, "operator")
        return self._operator

    async def force_release(self, gone: list[str]) -> bool:
        """``siloctl shard force-release`` of every shard the ``gone`` nodes own, once their
        memberships expired (refused while a gone node is a live member). True when done."""
        return await force_release_gone(self.sim, await self.operator(), gone)

    async def force_release_until_done(self, gone: list[str], bound_s: float = 60.0) -> bool:
        deadline = trio.current_time() + bound_s
        while self.sim.ok and trio.current_time() < deadline:
            if await self.force_release(gone):
                return True
            await trio.sleep(0.5)
        return False

    async def heal(self) -> None:
        """Healing: etcd answers again."""
        self.etcd.set_unavailable(False) if self.etcd.unavailable else None
        await self.etcd.start()

    def liveness_report(self) -> str:
        return (f"shards not served: {self.unserved()[:8]}; owners "
                f"{ {s: self.ownership.key_owner(s) for s in self.unserved()[:8]} }; served "
                f"{self.ownership.served()}")


class ClusterNodeHost(NodeHost):
    """A real clustered node on the simulated runtime (restart keeps its node id; its disk is
    its view of the shared root)."""

    def __init__(self, sim: Simulator, world: ClusterWorld, name: str) -> None:
        super().__init__(sim, name, shards=world.shards, lease_ms=world.lease_ms,
                         write_latency_s=world.write_latency_s)
        self.world = world
        self.ownership = world.ownership
        self.disk = world.root.host_view(self.random.stream("disk"), self.faults,
                                         write_latency=world.write_latency_s)
        self.disk.on_open = self._on_store_open
        self.disk.on_opened = self._on_store_opened
        self.disk.on_close = self._on_store_closed
        self.cluster = ClusterSettings(membership_ttl_s=world.ttl_s,
                                       reconcile_interval_s=world.interval_s)
        self.open: set[int] = set()
        """Shards whose store this node has open."""

    # -- invariant 10 -----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """The process runs and its membership is known alive (it may serve)."""
        node = self.node
        return (not self.crashed and node is not None and node.reconciler is not None
                and node.reconciler.alive)

    def _on_store_open(self, path: str) -> None:
        shard = shard_of_store(path)
        if shard is not None:
            shard_map = self.world.site.shard_map()
            mapped = shard_map is None or shard_map.get(shard) is not None
            self.ownership.check_open(self, shard, mapped=mapped)

    def _on_store_opened(self, path: str) -> None:
        shard = shard_of_store(path)
        if shard is not None:
            self.open.add(shard)
            self.world.site.generation += 1
            self.ownership.record_open(self, shard)

    def _on_store_closed(self, path: str) -> None:
        shard = shard_of_store(path)
        if shard is not None and shard in self.open:
            self.open.discard(shard)
            self.ownership.on_close(self, shard)

    # -- what the simulator audits ----------------------------------------------------------

    def shard_map(self) -> ShardMap | None:
        return self.world.site.shard_map()

    def shard_paths(self) -> list[str]:
        """The stores this node has open."""
        return [p for p in self.disk.open_paths() if shard_of_store(p) is not None]

    def _sink(self, gen: int) -> Any:
        def sink(kind: str, fields: dict[str, Any]) -> None:
            if self.generation == gen and not self.crashed:
                self.sim.on_event(self.world.site, kind, fields, origin=self.name)

        return sink

    # -- lifecycle --------------------------------------------------------------------------

    @asynccontextmanager
    async def _open_node(self, runtime: Runtime) -> AsyncIterator[SiloNode]:
        channel = await self.sim.net.connector(self.name).connect(self.world.etcd.address)
        client = EtcdClient(channel, rng=self.random.stream("etcd"), retry=ETCD_RETRY,
                            faults=self.faults)
        coordinator = CheckedCoordinator(EtcdCoordinator(client, self.world.keys, self.name), self)
        async with open_node(runtime, self.config, coordinator,  # type: ignore[arg-type]
                             self.cluster) as node:
            yield node

    async def _serve(self, node: SiloNode) -> None:
        # Serving RPCs (UNAVAILABLE until the reconcile loop opens shards), as the real server
        # does while it joins.
        await node.join_cluster(self.address)
        await trio.sleep_forever()

    def crash(self) -> None:
        """Crash now: the stores this node has open lose their unsynced writes (the other
        nodes' stores are untouched); its membership lease expires by itself in etcd and its
        ownership keys stay."""
        if not self.serving:
            return
        self.crashed = True
        self.serving = False
        paths = self.shard_paths()
        report = self.disk.crash()
        self.sim.trace.record(
            f"host {self.name} crash gen={self.generation} "
            + " ".join(f"{p}:{k}/{n}" for p, (k, n) in report.items())
        )
        self.sim.net.host_down(self)
        self.world.resync_after_crash(self, paths)
        if self._scope is not None:
            self._scope.cancel()

    def check_served_alone(self) -> None:
        """Invariant 10 on this node's live state: no shard it serves (open with a live
        membership) has an ownership key naming another node."""
        if not self.alive:
            return
        for shard in sorted(self.open):
            owner = self.ownership.key_owner(shard)
            if owner is not None and owner != self.name:
                self.sim.checker.fail(
                    Invariant.SINGLE_OWNER,
                    f"{self.name} serves shard {shard} but its ownership key names {owner}")
                return


__all__ = ["ClusterNodeHost", "ClusterWorld", "DataRoot", "shard_of_store"]
