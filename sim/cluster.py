"""Simulated cluster members: the real :class:`~silo.cluster.reconcile.Reconciler` and
:class:`~silo.cluster.coordinator.EtcdCoordinator` of each member, over the simulated network
to the etcd model (:class:`sim.etcd.EtcdHost`), and the checker of invariant 10.

A member's shards are stand-ins that only record when they are open: what is checked here is
who serves which shard when, not the jobs inside (those are the single-node scenarios' work).

Invariant 10: at most one node serves a shard at any instant, and a node closes a shard before
it releases the shard's ownership key. "Serves" is "has it open while its membership is known
alive" (a node whose lease is in doubt refuses every request, see
:attr:`silo.node.SiloNode.may_serve`). So:

- a node opening a shard must hold its ownership key in etcd at that moment, and no other node
  may have the shard open with a live membership;
- a node releasing a shard's key must not have it open.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from silo.cluster.coordinator import EtcdCoordinator
from silo.cluster.etcd import EtcdClient, EtcdRetry
from silo.cluster.layout import ClusterKeys
from silo.cluster.reconcile import ClusterView, Reconciler, ReconcileSettings
from silo.errors import SiloError
from silo.runtime import RandomSource
from sim.invariants import Invariant

if TYPE_CHECKING:
    from sim.etcd import EtcdHost
    from sim.simulator import Simulator

PREFIX = "/silo"
ETCD_RETRY = EtcdRetry(attempts=3, initial_backoff_s=0.05, max_backoff_s=0.3, call_timeout_s=0.5)


class Ownership:
    """Which member has which shard open; checks invariant 10 on every open and release."""

    def __init__(self, sim: Simulator, etcd: EtcdHost) -> None:
        self.sim = sim
        self.etcd = etcd
        self.keys = ClusterKeys(PREFIX)
        self.open_by: dict[int, ClusterMember] = {}
        self.moves = 0
        """Opens by another node than the shard's previous one."""
        self.last: dict[int, str] = {}

    def key_owner(self, shard: int) -> str | None:
        kv = self.etcd.model.kv.get(self.keys.owner(shard))
        return None if kv is None else kv.value.decode(errors="replace")

    def on_open(self, member: Any, shard: int) -> None:
        self.check_open(member, shard)
        self.record_open(member, shard)

    def check_open(self, member: Any, shard: int, *, mapped: bool = True) -> None:
        """Invariant 10 when ``member`` opens ``shard`` (its name, ``alive``): it holds the
        ownership key, and no other member with a live membership has the shard open. A store
        of a shard not in the map (``mapped`` False: a split's child, opened before the commit
        to mark the clone) is served by nobody yet: only the second rule applies."""
        owner = self.key_owner(shard)
        if mapped and owner != member.name:
            self.sim.checker.fail(
                Invariant.SINGLE_OWNER,
                f"{member.name} opens shard {shard} but its ownership key names {owner}")
        other = self.open_by.get(shard)
        if other is not None and other is not member and other.alive:
            self.sim.checker.fail(
                Invariant.SINGLE_OWNER,
                f"{member.name} opens shard {shard} while {other.name} serves it")

    def record_open(self, member: Any, shard: int) -> None:
        if self.last.get(shard, member.name) != member.name:
            self.moves += 1
        self.last[shard] = member.name
        self.open_by[shard] = member
        self.sim.trace.record(f"cluster {member.name} open shard {shard}")

    def on_close(self, member: Any, shard: int) -> None:
        if self.open_by.get(shard) is member:
            del self.open_by[shard]
        self.sim.trace.record(f"cluster {member.name} close shard {shard}")

    def before_release(self, member: Any, shard: int) -> None:
        if shard in member.open:
            self.sim.checker.fail(
                Invariant.SINGLE_OWNER,
                f"{member.name} releases shard {shard} while it still has it open")

    def served(self) -> dict[int, str]:
        """Shards served now (open by a member whose membership is alive)."""
        return {s: m.name for s, m in sorted(self.open_by.items()) if m.alive}


class _Shards:
    """The :class:`~silo.cluster.reconcile.ShardHost` of one member (stand-in shards)."""

    def __init__(self, member: ClusterMember) -> None:
        self.member = member

    def serving(self) -> frozenset[int]:
        return frozenset(self.member.open)

    async def open_shard(self, shard_id: int) -> object:
        await trio.sleep(self.member.rng.uniform(0.001, 0.02))
        self.member.ownership.on_open(self.member, shard_id)
        self.member.open.add(shard_id)
        return None

    async def close_shard(self, shard_id: int) -> None:
        if shard_id not in self.member.open:
            return
        await trio.sleep(self.member.rng.uniform(0.001, 0.02))  # the flush
        self.member.open.discard(shard_id)
        self.member.ownership.on_close(self.member, shard_id)

    def pause(self, shard_id: int, reason: str) -> None:
        pass

    def resume(self, shard_id: int) -> None:
        pass

    def observe_view(self, view: ClusterView) -> None:
        pass


class CheckedCoordinator:
    """A member's real coordinator, with invariant 10 checked before each release (``member``
    has ``ownership`` and the set ``open`` of the shards it has open)."""

    def __init__(self, inner: EtcdCoordinator, member: Any) -> None:
        self._inner = inner
        self._member = member
        self.node_id = inner.node_id

    async def release(self, shard_id: int) -> str | None:
        self._member.ownership.before_release(self._member, shard_id)
        return await self._inner.release(shard_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ClusterMember:
    """One node's reconcile loop, which the scenario can crash (its calls stop reaching etcd and
    its shards vanish, no graceful leave) and restart with the same node id."""

    def __init__(self, sim: Simulator, ownership: Ownership, name: str, *, shards: int,
                 ttl_s: int, interval_s: float, sticky: bool = False) -> None:
        self.sim = sim
        self.ownership = ownership
        self.name = name
        self.random = RandomSource(sim.random.stream(f"host/{name}").getrandbits(64))
        self.rng = self.random.stream("member")
        self.faults = sim.board.faults_for(self.random.stream("faults"), sim.mutations, name)
        self.settings = ReconcileSettings(address=f"{name}:7450", initial_shards=shards,
                                          membership_ttl_s=ttl_s, interval_s=interval_s,
                                          sticky=sticky, rejoin_backoff_s=0.2)
        self.open: set[int] = set()
        self._cut = False
        self.reconciler: Reconciler | None = None
        self.running = False
        self.generation = 0
        self._scope: trio.CancelScope | None = None
        self._done = trio.Event()
        self._done.set()

    @property
    def alive(self) -> bool:
        return self.running and self.reconciler is not None and self.reconciler.alive

    async def start(self) -> None:
        if self.running:
            return
        await self._done.wait()
        if self.running:  # another start ran while this one waited for the old run to end
            return
        self.generation += 1
        self.running = True
        self._set_cut(False)
        self.sim.trace.record(f"cluster {self.name} start gen={self.generation}")
        channel = await self.sim.net.connector(self.name).connect(self.ownership.etcd.address)
        client = EtcdClient(channel, rng=self.random.stream("etcd"), retry=ETCD_RETRY)
        coord = CheckedCoordinator(
            EtcdCoordinator(client, self.ownership.keys, self.name), self)
        self.reconciler = Reconciler(coord, _Shards(self), self.settings,  # type: ignore[arg-type]
                                     faults=self.faults)
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        assert self.sim.nursery is not None
        self.sim.nursery.start_soon(self._run, self.reconciler, self._scope, self._done)

    async def _run(self, reconciler: Reconciler, scope: trio.CancelScope,
                   done: trio.Event) -> None:
        try:
            with scope:
                await reconciler.run()
        finally:
            done.set()

    def crash(self) -> None:
        """Die now: nothing more reaches etcd (the lease expires by itself, the ownership keys
        stay) and every open shard is gone with the process."""
        if not self.running:
            return
        self.running = False
        self.sim.trace.record(f"cluster {self.name} crash gen={self.generation}")
        self._set_cut(True)
        for shard in sorted(self.open):
            self.ownership.on_close(self, shard)
        self.open.clear()
        assert self._scope is not None
        self._scope.cancel()

    def stop(self) -> None:
        """A clean stop: the loop closes every shard, then revokes its membership lease (the
        ownership keys stay)."""
        if not self.running:
            return
        self.running = False
        self.sim.trace.record(f"cluster {self.name} stop gen={self.generation}")
        assert self._scope is not None
        self._scope.cancel()

    def cut_off(self) -> None:
        """A partition between this member and etcd (it must fail closed)."""
        self.sim.trace.record(f"cluster {self.name} cut off from etcd")
        self._set_cut(True)

    def reconnect(self) -> None:
        if self.running:
            self._set_cut(False)

    def _set_cut(self, cut: bool) -> None:
        if cut and not self._cut:
            self.sim.net.partition(self.name, self.ownership.etcd.name)
        elif self._cut and not cut:
            self.sim.net.heal(self.name, self.ownership.etcd.name)
        self._cut = cut


async def force_release_gone(sim: Simulator, operator: EtcdCoordinator, gone: list[str]) -> bool:
    """``siloctl shard force-release`` for the shards of members gone for good, once their
    membership has expired (the RPC refuses it for a live member). True when done."""
    try:
        members = await operator.members()
        if any(name in members for name in gone):
            return False
        owners = await operator.owners()
        for shard, owner in sorted(owners.items()):
            if owner in gone:
                await operator.force_release(shard, owner)
                sim.count("cluster.force_release")
                sim.trace.record(f"cluster operator force-released shard {shard} of {owner}")
    except SiloError:
        return False
    return True


__all__ = ["ETCD_RETRY", "PREFIX", "CheckedCoordinator", "ClusterMember", "Ownership",
           "force_release_gone"]
