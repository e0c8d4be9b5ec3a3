"""The reconcile loop: which shards this node should serve, and the effects that get it there.

:func:`plan` is the decision, pure: from the live members, the shard map, the ownership keys and
what this node serves now, the ordered list of :class:`Action` to take. :class:`Reconciler` is
the one loop per node that carries the actions out (never two at once) through a
:class:`ShardHost` (the node's shard opener) and a :class:`~silo.cluster.coordinator.Coordinator`.

Rules (DESIGN §6):

- a node serves a shard only while it holds the shard's ownership key and its membership lease
  is alive; when the lease is lost it closes every shard at once (fail closed) and keeps the
  keys (they carry no TTL), so the same node id reclaims them when it is back;
- a shard moves only by its old owner closing (flushing) it, then deleting its ownership key;
  the new owner acquires the key (put-if-absent), then opens it;
- a shard owned by a node that is not a live member stays where it is until the node returns or
  an operator force-releases it;
- with ``sticky`` placement a node never gives up a shard it holds: placement only decides who
  takes a shard nobody holds.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import trio

from silo.cluster.coordinator import Coordinator, Membership
from silo.cluster.layout import MemberInfo
from silo.cluster.placement import assign
from silo.cluster.shard_map import ShardMap
from silo.errors import SiloError
from silo.runtime.faults import NO_FAULTS, Faults

log = logging.getLogger("silo.cluster.reconcile")

PLACEMENT_SLACK = 0
"""Bounded-load slack: no member holds more than ``ceil(shards / members)`` shards (within
DESIGN §6's bound of one more; with slack 1, three members and eight shards, plain rendezvous
left one member empty often enough to matter)."""


class Kind(Enum):
    MOVE_OUT = "close, then release"
    """Placement wants the shard on another live member: close (flush) it, then delete the key."""
    STOP = "close"
    """This node serves a shard whose key no longer names it (force-released): close it."""
    RELEASE = "release"
    """This node holds a key for a shard it does not serve and should not: delete the key."""
    OPEN = "open"
    """This node holds the key of a shard it should serve but does not (a restart reclaiming)."""
    ACQUIRE = "acquire, then open"
    """Nobody holds the shard and placement picks this node: put-if-absent, then open."""


@dataclass(frozen=True, slots=True)
class Action:
    kind: Kind
    shard_id: int


@dataclass(frozen=True)
class ClusterView:
    """One consistent-enough reading of the cluster, the input of :func:`plan`."""

    node_id: str
    members: Mapping[str, MemberInfo]
    shard_map: ShardMap
    owners: Mapping[int, str]
    serving: frozenset[int] = frozenset()
    sticky: bool = False

    def owner_address(self, shard_id: int) -> str | None:
        """The address of ``shard_id``'s owner when that owner is a live member."""
        owner = self.owners.get(shard_id)
        info = self.members.get(owner) if owner is not None else None
        return info.address if info is not None else None


def targets(view: ClusterView) -> dict[int, str]:
    """Where placement wants each shard of the map: bounded-load rendezvous over the live
    members plus the nodes that are down but still hold ownership keys. A node that is down
    (restarting, or waiting for a force-release) keeps its place, so the survivors do not
    reshuffle their own shards around the ones it holds and shuffle them back when it returns;
    a shard whose turn falls to a down node goes to a live one if nobody holds it."""
    shard_ids = [s.shard_id for s in view.shard_map.shards]
    live = sorted(view.members)
    down = sorted({o for o in view.owners.values() if o not in view.members})
    pinned = assign(shard_ids, live + down, slack=PLACEMENT_SLACK)
    fallback: dict[int, str] | None = None
    out: dict[int, str] = {}
    for shard in sorted(shard_ids):
        target = pinned.get(shard)
        if target is None or target in view.members:
            if target is not None:
                out[shard] = target
            continue
        if shard in view.owners:
            out[shard] = view.owners[shard]
            continue
        if fallback is None:
            fallback = assign(shard_ids, live, slack=PLACEMENT_SLACK)
        if shard in fallback:
            out[shard] = fallback[shard]
    return out


def plan(view: ClusterView) -> list[Action]:
    """What this node should do now, in order: everything that gives shards up first (so a
    shard this node hands over is free as early as possible), then everything that takes them,
    each group by shard id. Only this node's own shards and unowned shards are ever touched."""
    me = view.node_id
    target = targets(view)
    in_map = {s.shard_id for s in view.shard_map.shards}
    give: list[Action] = []
    take: list[Action] = []
    for shard in sorted(view.serving):
        owner = view.owners.get(shard)
        if owner != me:
            give.append(Action(Kind.STOP, shard))
        elif shard not in in_map:
            give.append(Action(Kind.MOVE_OUT, shard))
        elif not view.sticky and target.get(shard, me) != me:
            give.append(Action(Kind.MOVE_OUT, shard))
    for shard in sorted(view.owners):
        if view.owners[shard] != me or shard in view.serving:
            continue
        if shard not in in_map:
            give.append(Action(Kind.RELEASE, shard))
        elif view.sticky or target.get(shard) == me or me not in view.members:
            take.append(Action(Kind.OPEN, shard))
        else:
            give.append(Action(Kind.RELEASE, shard))
    for shard in sorted(in_map):
        if shard not in view.owners and target.get(shard) == me:
            take.append(Action(Kind.ACQUIRE, shard))
    return give + take


class ShardHost(Protocol):
    """What the loop drives: the node's shards and its view of where the others are."""

    def serving(self) -> frozenset[int]:
        """The shards open here now."""
        ...

    async def open_shard(self, shard_id: int) -> object: ...

    async def close_shard(self, shard_id: int) -> None:
        """Flush and close; returns once closed (nothing if not open)."""
        ...

    def pause(self, shard_id: int, reason: str) -> None: ...

    def resume(self, shard_id: int) -> None: ...

    def observe_view(self, view: ClusterView) -> None:
        """The latest reading (for routing hints and cluster info)."""
        ...


@dataclass
class ReconcileStats:
    passes: int = 0
    failed_passes: int = 0
    acquired: int = 0
    released: int = 0
    opened: int = 0
    closed: int = 0
    fail_closed: int = 0
    memberships: int = 0
    errors: list[str] = field(default_factory=list)

    def note_error(self, text: str) -> None:
        self.errors = [*self.errors[-9:], text]


@dataclass(frozen=True)
class ReconcileSettings:
    address: str
    initial_shards: int = 8
    membership_ttl_s: int = 5
    interval_s: float = 1.0
    sticky: bool = False
    rejoin_backoff_s: float = 0.5
    watch: bool = True
    """Also run a pass as soon as any cluster key changes (etcd watch), not only every
    ``interval_s``: a released shard is taken, and a joining node seen, at once."""


class Reconciler:
    """Runs :func:`plan` and its effects for one node until cancelled (see the module
    docstring). Only this object opens, closes, acquires or releases shards; a lock makes sure
    no two effects overlap."""

    def __init__(self, coordinator: Coordinator, host: ShardHost,
                 settings: ReconcileSettings, *, faults: Faults = NO_FAULTS) -> None:
        self.coordinator = coordinator
        self.faults = faults
        self.host = host
        self.settings = settings
        self.stats = ReconcileStats()
        self.membership: Membership | None = None
        self.view: ClusterView | None = None
        self._lock = trio.Lock()
        self._wake = trio.Event()
        self._generation = 0
        """Bumped by every :meth:`exclusive` block: a pass planned before one stops (the next
        pass plans again from a fresh reading)."""

    @property
    def node_id(self) -> str:
        return self.coordinator.node_id

    @property
    def alive(self) -> bool:
        """Whether this node may serve: its membership lease is known alive."""
        m = self.membership
        return m is not None and m.alive

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold off the loop's effects while the block runs (a split changes the map and the
        ownership of the shards it touches); the loop re-plans afterwards."""
        async with self._lock:
            try:
                yield
            finally:
                self._generation += 1
                self.wake()

    def wake(self) -> None:
        """Run the next pass now instead of at the next interval."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Join, reconcile until the membership is lost, close everything, rejoin; forever.
        ``task_status.started()`` after the first pass (or the first failure to join)."""
        started = False
        while True:
            try:
                async with self.coordinator.membership(
                    self.settings.address, self.settings.membership_ttl_s
                ) as membership:
                    self.membership = membership
                    self.stats.memberships += 1
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._fail_closed_on_loss, membership,
                                               nursery.cancel_scope)
                            if self.settings.watch:
                                nursery.start_soon(self._wake_on_changes)
                            while membership.alive:
                                await self.reconcile_once(membership)
                                if not started:
                                    started = True
                                    task_status.started()
                                with trio.move_on_after(self.settings.interval_s):
                                    await self._wake.wait()
                                self._wake = trio.Event()
                            nursery.cancel_scope.cancel()
                    finally:
                        # Close every shard before the membership lease is revoked.
                        self.membership = None
                        with trio.CancelScope(shield=True):
                            await self._close_all("leaving the cluster")
            except SiloError as exc:
                self.stats.note_error(str(exc))
                log.warning("node %s: cluster membership failed: %s", self.node_id, exc)
            finally:
                self.membership = None
                with trio.CancelScope(shield=True):
                    await self._close_all("membership ended")
            if not started:
                started = True
                task_status.started()
            await trio.sleep(self.settings.rejoin_backoff_s)

    async def _wake_on_changes(self) -> None:
        """Wake the loop whenever a key of the cluster changes; the interval is the fallback
        while the watch is broken (it is reopened after ``rejoin_backoff_s``)."""
        while True:
            try:
                async with self.coordinator.watch(0) as watch:
                    async for _revision, _events in watch:
                        self.wake()
            except SiloError as exc:
                log.info("node %s: cluster watch ended (%s); reopening", self.node_id, exc)
            await trio.sleep(self.settings.rejoin_backoff_s)

    async def _fail_closed_on_loss(self, membership: Membership,
                                   scope: trio.CancelScope) -> None:
        await membership.lost.wait()
        log.warning("node %s: membership lost (%s); closing every shard", self.node_id,
                    membership.loss_reason)
        self.stats.fail_closed += 1
        with trio.CancelScope(shield=True):
            await self._close_all("membership lost")
        scope.cancel()

    async def _close_all(self, why: str) -> None:
        async with self._lock:
            for shard in sorted(self.host.serving()):
                self.host.pause(shard, "not served: " + why)
                try:
                    await self.host.close_shard(shard)
                    self.stats.closed += 1
                finally:
                    self.host.resume(shard)

    async def read_view(self) -> ClusterView:
        coord = self.coordinator
        members = await coord.members()
        current = await coord.read_shard_map()
        shard_map = current.map
        if shard_map is None:
            shard_map = (await coord.create_shard_map(
                ShardMap.even(self.settings.initial_shards))).map
            assert shard_map is not None
        owners = await coord.owners()
        return ClusterView(self.node_id, members, shard_map, owners,
                           self.host.serving(), self.settings.sticky)

    async def reconcile_once(self, membership: Membership) -> list[Action]:
        """One pass: read, decide, act. Errors end the pass (the next one retries)."""
        self.stats.passes += 1
        try:
            generation = self._generation
            view = await self.read_view()
            self.view = view
            self.host.observe_view(view)
            if self.faults.mutation("split-brain"):
                # Planted bug for the simulator: other nodes' ownership keys are not looked at.
                view = dataclasses.replace(view, owners={
                    s: o for s, o in view.owners.items() if o == self.node_id})
            actions = plan(view)
            for action in actions:
                async with self._lock:
                    if not membership.alive or generation != self._generation:
                        return actions
                    await self._apply(action)
            if actions:
                self.view = await self.read_view()
                self.host.observe_view(self.view)
            return actions
        except SiloError as exc:
            self.stats.failed_passes += 1
            self.stats.note_error(str(exc))
            log.warning("node %s: reconcile pass failed: %s", self.node_id, exc)
            return []

    async def _apply(self, action: Action) -> None:
        shard, kind = action.shard_id, action.kind
        coord = self.coordinator
        if kind in (Kind.MOVE_OUT, Kind.STOP):
            self.host.pause(shard, "moving")
            try:
                if kind is Kind.MOVE_OUT and self.faults.mutation("release-before-close"):
                    await coord.release(shard)  # planted bug for the simulator
                await self.host.close_shard(shard)
                self.stats.closed += 1
                if kind is Kind.MOVE_OUT and not self.faults.mutation("release-before-close"):
                    await coord.release(shard)
                if kind is Kind.MOVE_OUT:
                    self.stats.released += 1
            finally:
                self.host.resume(shard)
            log.info("node %s: %s shard %d", self.node_id, kind.value, shard)
        elif kind is Kind.RELEASE:
            await coord.release(shard)
            self.stats.released += 1
            log.info("node %s: released shard %d", self.node_id, shard)
        else:
            if kind is Kind.ACQUIRE:
                ownership = await coord.acquire(shard)
                if not ownership.acquired and not self.faults.mutation("split-brain"):
                    return
                self.stats.acquired += 1
            await self._open(shard)

    async def _open(self, shard: int) -> None:
        try:
            await self.host.open_shard(shard)
        except SiloError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. LevelDB's LOCK held: retried next pass
            self.stats.note_error(f"opening shard {shard}: {exc}")
            log.warning("node %s: opening shard %d failed: %s", self.node_id, shard, exc)
            return
        self.stats.opened += 1
        log.info("node %s: serving shard %d", self.node_id, shard)


def owners_by_node(owners: Mapping[int, str]) -> dict[str, list[int]]:
    """Shard ids by owning node (both sorted)."""
    out: dict[str, list[int]] = {}
    for shard in sorted(owners):
        out.setdefault(owners[shard], []).append(shard)
    return dict(sorted(out.items()))


__all__ = ["Action", "ClusterView", "Kind", "ReconcileSettings", "ReconcileStats",
           "Reconciler", "ShardHost", "owners_by_node", "plan", "targets"]
