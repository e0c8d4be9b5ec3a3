"""A silo node: the shards this node serves and the shard map it routes by.

With coordination ``none`` (the embedded default) one node owns every shard; the map is created
on first start (``shards`` equal ranges) and kept in the data directory, so a restart finds the
same shards and their data.

With a :class:`~silo.cluster.coordinator.Coordinator` (coordination ``etcd``) the node is one
member of a cluster: its :class:`~silo.cluster.reconcile.Reconciler` alone opens and closes
shards, and the node serves a shard only while the reconciler says its membership is alive. A
request for a shard another live member owns answers NOT_FOUND "shard not found" with that
owner's address in the metadata; one for a shard with no live owner, or one this node is
acquiring or handing over, answers UNAVAILABLE.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from silo.cluster.coordinator import Coordinator
from silo.cluster.reconcile import ClusterView, Reconciler, ReconcileSettings
from silo.cluster.shard_map import ShardMap
from silo.errors import InvalidArgument, NotFound, Unavailable
from silo.model import LeasedTask
from silo.reply_size import max_reply_bytes, task_reply_bytes
from silo.runtime import Runtime
from silo.shard import JobShard, ShardConfig, open_shard
from silo.shard.validation import (
    check_max_tasks,
    check_task_group,
    check_worker_id,
    without_name_bounds,
)

SHARD_OWNER_METADATA = "silo-shard-owner"
"""Trailing metadata key carrying the address of the node that owns a requested shard."""

MAX_LEASE_WAIT_MS = 30_000

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

log = logging.getLogger("silo.node")

EMPTY_ROUNDS_RETRIED_MAX = 2
"""A LeaseTasks round that leased nothing while a shard reports ready tasks (they came in during
the round) is retried at once at most this many times in a row; then the call waits as if none
were ready (a wakeup, the next timer or its deadline), so no count that disagrees with what a
lease can take keeps a node's loop spinning."""

LONG_POLL_TASK_GROUPS_MAX = 10_000
"""Default of :attr:`NodeConfig.long_poll_task_groups_max`."""


@dataclass(frozen=True)
class NodeConfig:
    data_dir: str = "./silo-data"
    shards: int = 8
    node_id: str = "node-1"
    advertise_address: str = ""
    """The gRPC address clients use to reach this node (shown in the cluster info)."""
    shard: ShardConfig = field(default_factory=ShardConfig)
    max_reply_bytes: int = max_reply_bytes(DEFAULT_MAX_MESSAGE_BYTES)
    """Byte budget of the tasks in one LeaseTasks reply (the server's ``max_message_bytes``
    minus headroom): a lease round never leases more than fits."""
    long_poll_task_groups_max: int = LONG_POLL_TASK_GROUPS_MAX
    """The most task groups with a wakeup event at once (one event per task group that has a
    long poll waiting). A long poll for a further group still works, but polls the shards (at
    least once a second) instead of being woken."""


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
        """One wakeup event per task group with a long poll waiting on it (at most
        ``long_poll_task_groups_max``); an event is dropped once it is set or has no waiter."""
        self._lease_rotation = 0
        self._draining = False
        self.paused: dict[int, str] = {}
        """Shards that answer UNAVAILABLE (with the reason) while a split moves them."""
        self.closing = False
        self._nursery: trio.Nursery | None = None
        self._shard_closers: dict[int, tuple[trio.Event, trio.Event]] = {}
        """Per open shard: (ask it to close, it has closed)."""
        from silo.cluster.splitting import LocalSplitCoordination, Splitter

        self.splitter = Splitter(self, LocalSplitCoordination(runtime, config.data_dir))
        self.reconciler: Reconciler | None = None
        """Set with coordination etcd: the loop that decides which shards this node serves."""
        self.view: ClusterView | None = None
        """The reconciler's latest reading of the cluster (coordination etcd)."""

    # -- cluster (coordination etcd) --------------------------------------------------------

    @property
    def clustered(self) -> bool:
        return self.reconciler is not None

    @property
    def may_serve(self) -> bool:
        """False while a clustered node's membership lease is not known alive (fail closed)."""
        return self.reconciler is None or self.reconciler.alive

    async def join_cluster(self, address: str | None = None) -> None:
        """Start the reconcile loop (once the node's gRPC address is known: it is published
        in the membership record); returns after its first pass."""
        assert self.reconciler is not None and self._nursery is not None
        if address:
            self.advertise_address = address
            self.reconciler.settings = dataclasses.replace(self.reconciler.settings,
                                                           address=address)
        await self._nursery.start(self.reconciler.run)

    def serving(self) -> frozenset[int]:
        return frozenset(self.shards)

    def observe_view(self, view: ClusterView) -> None:
        self.view = view
        if view.shard_map.version > self.shard_map.version:
            # The map changed (a split, perhaps elsewhere): learn which old ids it retired.
            self.spawn(self.splitter.refresh_lineage)
        if view.shard_map.version >= self.shard_map.version:
            self.shard_map = view.shard_map

    def shard_path(self, shard_id: int) -> str:
        return f"{self.config.data_dir}/shards/{shard_id}"

    # -- shard lifecycle --------------------------------------------------------------------

    def spawn(self, fn, *args) -> None:  # noqa: ANN001 - a background task of the node
        """Run ``fn(*args)`` in the node's nursery (ends when the node closes)."""
        if self._nursery is not None and not self.closing:
            self._nursery.start_soon(fn, *args)

    async def open_shard(self, shard_id: int, *, recover: bool = True) -> JobShard:
        """Open ``shard_id`` (its directory under the data dir) and serve it until
        :meth:`close_shard` or the node's exit. In a cluster, first finish or undo a split a
        crash left touching it (:meth:`~silo.cluster.splitting.Splitter.prepare_open`; not
        when the split itself opens its children: ``recover=False``)."""
        if shard_id in self.shards:
            return self.shards[shard_id]
        if self._nursery is None or self.closing:
            raise Unavailable("the node is shutting down")
        if self.clustered and recover:
            await self.splitter.prepare_open(shard_id)
        shard: JobShard = await self._nursery.start(self._serve_shard, shard_id)
        if self.clustered:
            self.splitter.after_open(shard_id)
        return shard

    async def _serve_shard(self, shard_id: int, task_status: trio.TaskStatus[JobShard]) -> None:
        close, closed = trio.Event(), trio.Event()
        try:
            async with open_shard(
                self.runtime, self.shard_path(shard_id), shard_id=shard_id,
                config=self.config.shard,
            ) as shard:
                shard.on_ready = self._on_ready
                if shard.cleanup is not None:
                    shard.cleanup.on_done = lambda sid, marker: (
                        self.splitter.on_cleanup_done(sid))
                self.shards[shard_id] = shard
                self._shard_closers[shard_id] = (close, closed)
                task_status.started(shard)
                try:
                    await close.wait()
                finally:
                    if self.shards.get(shard_id) is shard:
                        del self.shards[shard_id]
        finally:
            self._shard_closers.pop(shard_id, None)
            closed.set()

    async def close_shard(self, shard_id: int) -> None:
        """Stop serving ``shard_id``: flush and close it; returns once it is closed."""
        pair = self._shard_closers.get(shard_id)
        if pair is None:
            return
        close, closed = pair
        close.set()
        await closed.wait()

    def pause(self, shard_id: int, reason: str) -> None:
        self.paused[shard_id] = reason

    def resume(self, shard_id: int) -> None:
        self.paused.pop(shard_id, None)

    def route(self, shard_id: int, tenant: str) -> int:
        """The shard a tenant-scoped request naming ``shard_id`` goes to: ``shard_id``, or,
        when it was split since the caller read the map, the child that owns the tenant."""
        if shard_id in self.shards or shard_id in self.paused:
            return shard_id
        return self.splitter.forward(shard_id, tenant)

    def shard_for_task(self, shard_id: int, task_id: str) -> JobShard:
        """The shard holding lease ``task_id`` of shard ``shard_id``: itself, or the child of a
        split that holds the lease now (else the first child: it answers "lease not found")."""
        if shard_id in self.shards or shard_id in self.paused:
            return self.shard(shard_id)
        children = self.splitter.descendants(shard_id)
        for child in children:
            if self.shards[child].holds_lease(task_id):
                return self.shards[child]
        if self.clustered:
            elsewhere = self._remote_descendant(shard_id, children)
            if elsewhere is not None:
                return self.shard(elsewhere)  # "shard not found" with its owner's address
        return self.shard(children[0] if children else shard_id)

    def _remote_descendant(self, shard_id: int, local: list[int]) -> int | None:
        """Cluster: the split descendant of ``shard_id`` (a shard of the map now, not open here)
        that a lease-addressed request (it names no tenant) is sent on to when no local
        descendant holds the lease: the smallest such id; None when every descendant is local
        (the lease is then truly gone). A lease that no descendant holds any more (expired)
        makes the hints go round until the client's retries run out; its job was retried by
        the reaper either way."""
        for leaf in self.splitter.leaves(shard_id):
            if leaf not in local and leaf not in self.shards and self.shard_map.get(leaf):
                return leaf
        return None

    @property
    def lease_ms(self) -> int:
        return self.config.shard.lease_ms

    def shard(self, shard_id: int) -> JobShard:
        """The open shard ``shard_id``; NOT_FOUND "shard not found" (with the owner's address in
        the error's metadata when known) otherwise."""
        reason = self.paused.get(shard_id)
        if reason is not None:
            raise Unavailable(f"shard {shard_id} is {reason}")
        if not self.may_serve:
            raise Unavailable(f"node {self.config.node_id} is not a live cluster member")
        shard = self.shards.get(shard_id)
        if shard is None and self.reconciler is not None:
            self._not_here(shard_id)
        if shard is None:
            meta = {}
            if self.shard_map.get(shard_id) is not None and self.advertise_address:
                meta[SHARD_OWNER_METADATA] = self.advertise_address
            raise NotFound(f"shard not found: {shard_id}", metadata=meta)
        return shard

    def _not_here(self, shard_id: int) -> None:
        """Raise the answer for a shard a clustered node does not serve."""
        view = self.view
        if view is None or view.shard_map.get(shard_id) is None:
            raise NotFound(f"shard not found: {shard_id}")
        owner = view.owners.get(shard_id)
        address = view.owner_address(shard_id)
        if owner is None:
            raise Unavailable(f"shard {shard_id} has no owner yet")
        if owner == self.config.node_id or address is None:
            state = "being acquired" if owner == self.config.node_id else (
                f"owned by {owner}, which is not a live member")
            raise Unavailable(f"shard {shard_id} is {state}")
        raise NotFound(f"shard not found: {shard_id} (owned by {owner})",
                       metadata={SHARD_OWNER_METADATA: address})

    def shard_for_tenant(self, tenant: str) -> JobShard:
        return self.shard(self.shard_map.shard_for_tenant(tenant).shard_id)

    def _on_ready(self, shard_id: int, task_group: str) -> None:
        event = self._ready_events.pop(task_group, None)
        if event is not None:
            event.set()

    def acks_by_shard(self, acks: Iterable[tuple[int, str]]) -> dict[int, list[str]]:
        """Delivery acknowledgements ``(shard, task_id)`` grouped by the local shard they
        belong to (in shard order, duplicates dropped); acks for shards this node does not
        serve are ignored (the lease, if any, is acknowledged by its heartbeats instead)."""
        out: dict[int, list[str]] = {}
        for shard_id, task_id in acks:
            if shard_id not in self.shards and shard_id not in self.paused:
                children = self.splitter.descendants(shard_id)
                shard_id = next((c for c in children if self.shards[c].holds_lease(task_id)),
                                shard_id)
            if shard_id in self.shards:
                ids = out.setdefault(shard_id, [])
                if task_id not in ids:
                    ids.append(task_id)
        return {s: out[s] for s in sorted(out)}

    def check_acks(self, acks: Sequence[tuple[int, str]]) -> None:
        """INVALID_ARGUMENT when a LeaseTasks carries more acks than one lease can hand out."""
        limit = self.config.shard.limits.max_tasks_per_lease
        if len(acks) > limit:
            raise InvalidArgument(
                f"{len(acks)} acks in one LeaseTasks; max_tasks_per_lease is {limit}"
            )

    async def lease_any(
        self, worker_id: str, task_group: str, max_tasks: int, wait_ms: int = 0, *,
        acks: Sequence[tuple[int, str]] = (),
    ) -> list[LeasedFromShard]:
        """Lease up to ``max_tasks`` from this node's shards, waiting up to ``wait_ms`` for work.

        Shards are visited in a rotating order so no shard starves another; the tasks of all of
        them share one reply byte budget (``max_reply_bytes``). ``acks`` acknowledge tasks this
        worker received earlier; they are applied before any wait, in the lease's own batch on
        each shard leased from. Once :meth:`stop_long_polls` has been called, waiting calls
        return at once.
        """
        limits = self.config.shard.limits
        check_worker_id(limits, worker_id)
        check_task_group(limits, task_group)
        check_max_tasks(limits, max_tasks)
        if not 0 <= wait_ms <= MAX_LEASE_WAIT_MS:
            raise InvalidArgument(f"wait_ms {wait_ms} is outside 0..{MAX_LEASE_WAIT_MS}")
        self.check_acks(acks)
        pending_acks = self.acks_by_shard(acks)
        deadline = trio.current_time() + wait_ms / 1000
        empty_rounds = 0
        while True:
            if self._draining:
                await self.apply_acks(worker_id, pending_acks)
                return []
            out = await self._lease_round(worker_id, task_group, max_tasks, pending_acks)
            pending_acks = {}
            remaining = deadline - trio.current_time()
            if out or remaining <= 0 or self._draining:
                if not out and wait_ms:
                    self.runtime.faults.sometimes("node.lease.empty_after_wait")
                return out
            event = self._wakeup_event(task_group)
            empty_rounds += 1
            if (empty_rounds <= EMPTY_ROUNDS_RETRIED_MAX
                    and any(s.has_ready_tasks(task_group) for s in self._ordered_shards())):
                continue  # tasks came in during the round
            wait_s = min(remaining, self._next_timer_s())
            if self.runtime.faults.buggify("node.lease.wake_early"):
                wait_s = min(wait_s, 0.001)
            empty_rounds = 0
            try:
                with trio.move_on_after(wait_s):
                    if event is None:
                        await trio.sleep_forever()
                    else:
                        await event.wait()
            finally:
                self._drop_unwaited(task_group, event)
            if event is not None and event.is_set():
                self.runtime.faults.sometimes("node.lease.long_poll_woken")

    def _wakeup_event(self, task_group: str) -> trio.Event | None:
        """The event that wakes long polls on ``task_group``; None when the node already tracks
        ``long_poll_task_groups_max`` other groups (the caller then polls)."""
        event = self._ready_events.get(task_group)
        if event is None and len(self._ready_events) < self.config.long_poll_task_groups_max:
            event = self._ready_events[task_group] = trio.Event()
        return event

    def _drop_unwaited(self, task_group: str, event: trio.Event | None) -> None:
        """Forget ``task_group``'s event once no long poll waits on it any more."""
        if event is not None and self._ready_events.get(task_group) is event:
            if event.statistics().tasks_waiting == 0:
                del self._ready_events[task_group]

    async def apply_acks(self, worker_id: str, acks: Mapping[int, Sequence[str]]) -> None:
        """Acknowledge ``acks`` on their shards (a shard that fails is logged and skipped: its
        leases are then acknowledged by their heartbeats)."""
        if not self.may_serve:
            return
        for shard_id, task_ids in acks.items():
            shard = self.shards.get(shard_id)
            if shard is None or not task_ids:
                continue
            try:
                await shard.acknowledge(worker_id, task_ids)
            except Exception as exc:  # noqa: BLE001 - one shard must not fail the others
                log.warning("shard %d: acknowledging %d tasks failed: %s", shard_id,
                            len(task_ids), exc)

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
        if not self.may_serve:
            return []
        return [self.shards[i] for i in sorted(self.shards) if i not in self.paused]

    async def _lease_round(
        self, worker_id: str, task_group: str, max_tasks: int,
        acks: Mapping[int, Sequence[str]] | None = None,
    ) -> list[LeasedFromShard]:
        """One pass over the shards. What was leased is returned even when a later shard
        fails (the failure is logged and that shard skipped): a committed lease that is not
        sent would be lost until it expires. Only when nothing was leased does the first
        failure reach the caller. Acks of shards not leased from are applied on their own."""
        acks = dict(acks or {})
        shards = self._ordered_shards()
        if not shards:
            return []
        self._lease_rotation = (self._lease_rotation + 1) % len(shards)
        shards = shards[self._lease_rotation :] + shards[: self._lease_rotation]
        out: list[LeasedFromShard] = []
        used_bytes = 0
        budget: int | None = self.config.max_reply_bytes
        if self.runtime.faults.mutation("unsized-lease-replies"):
            budget = None  # planted bug for the simulator: the reply is never sized
        first_error: Exception | None = None
        for shard in shards:
            if len(out) >= max_tasks or (budget is not None and used_bytes >= budget):
                break
            if not shard.has_ready_tasks(task_group):
                continue
            shard_acks = acks.pop(shard.shard_id, ())
            want = max_tasks - len(out)
            if want > 1 and self.runtime.faults.buggify("node.lease.fewer_tasks"):
                want = (want + 1) // 2
            try:
                tasks = await shard.lease_tasks(
                    worker_id, task_group, want, max_reply_bytes=budget,
                    reply_bytes_used=used_bytes, acks=shard_acks,
                )
            except Exception as exc:  # noqa: BLE001 - keep what earlier shards leased
                log.warning("shard %d: lease for task group %r failed: %s", shard.shard_id,
                            task_group, exc)
                first_error = first_error or exc
                if shard_acks:
                    acks[shard.shard_id] = shard_acks  # retried on their own below
                continue
            out.extend(LeasedFromShard(shard.shard_id, t) for t in tasks)
            used_bytes += sum(task_reply_bytes(t) for t in tasks)
        await self.apply_acks(worker_id, acks)
        if not out and first_error is not None:
            raise first_error
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


@dataclass(frozen=True)
class ClusterSettings:
    """How a clustered node takes part (see :class:`~silo.cluster.reconcile.ReconcileSettings`)."""

    membership_ttl_s: int = 5
    reconcile_interval_s: float = 1.0
    sticky: bool = False


@asynccontextmanager
async def open_node(
    runtime: Runtime, config: NodeConfig, coordinator: Coordinator | None = None,
    cluster: ClusterSettings | None = None,
) -> AsyncIterator[SiloNode]:
    """Open every shard of the map and serve them until exit; on exit every shard is flushed and
    closed. Splits a crash interrupted are finished (committed) or undone (not committed)
    first (see :mod:`silo.cluster.splitting`).

    With a ``coordinator`` the node is a cluster member instead: it serves nothing until
    :meth:`SiloNode.join_cluster` starts its reconcile loop, which alone opens and closes
    shards from then on; leaving the block closes every shard and leaves the cluster (the
    ownership keys stay: a restart with the same node id reclaims the shards)."""
    if runtime.faults.mutation("unchecked-name-lengths"):
        config = dataclasses.replace(config, shard=dataclasses.replace(
            config.shard, limits=without_name_bounds(config.shard.limits)))
    if coordinator is not None:
        async with _open_cluster_node(runtime, config, coordinator,
                                      cluster or ClusterSettings()) as node:
            yield node
        return
    shard_map = await load_or_create_shard_map(runtime, config.data_dir, config.shards)
    node = SiloNode(runtime, config, shard_map)
    todo = await node.splitter.recover_before_open()
    async with trio.open_nursery() as nursery:
        node._nursery = nursery
        try:
            for rng in shard_map.shards:
                await node.open_shard(rng.shard_id)
            await node.splitter.recover_after_open(todo)
            yield node
        finally:
            node.closing = True
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def _open_cluster_node(
    runtime: Runtime, config: NodeConfig, coordinator: Coordinator, cluster: ClusterSettings
) -> AsyncIterator[SiloNode]:
    node = SiloNode(runtime, config, ShardMap.even(config.shards, version=0))
    settings = ReconcileSettings(
        address=config.advertise_address, initial_shards=config.shards,
        membership_ttl_s=cluster.membership_ttl_s, interval_s=cluster.reconcile_interval_s,
        sticky=cluster.sticky,
    )
    node.reconciler = Reconciler(coordinator, node, settings, faults=runtime.faults)
    from silo.cluster.etcd_splits import EtcdSplitCoordination
    from silo.cluster.splitting import Splitter

    node.splitter = Splitter(node, EtcdSplitCoordination(coordinator))
    async with trio.open_nursery() as nursery:
        node._nursery = nursery
        try:
            yield node
        finally:
            node.closing = True
            nursery.cancel_scope.cancel()
