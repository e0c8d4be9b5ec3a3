"""The standard workload (:func:`sim.workload.run_workload`: producers, workers, an operator, the
actors, every checker) on a cluster of real nodes (:mod:`sim.cluster_nodes`), with a cluster
fault driver of the scenario's choosing.

:func:`draw_cluster` draws the cluster's own knobs; :func:`run_cluster_workload` builds etcd, the
shared data root and the nodes, waits until every shard is served, runs the driver through the
fault phase, and after healing force-releases the shards of the nodes decommissioned for good,
then waits (besides every job being terminal) for every shard to be served again.

The drivers' moves (:class:`Moves`): a new node joins; a node leaves gracefully and comes back;
a node is decommissioned (leaves, and an operator force-releases its shards); a node crashes and
restarts with the same id; a node is cut off from etcd (and perhaps its peers and clients);
etcd becomes unavailable.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from sim.cluster_nodes import ClusterNodeHost, ClusterWorld
from sim.invariants import Invariant
from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload

LEASE_WAIT_MS: int | None = None
"""The workers' ``lease_wait_ms`` in the cluster scenarios (None: drawn like any knob, up to its
30 s edge). A worker runs one lease loop per node; while there are several, each poll takes a
share of the slots and waits at most ``silo.client.worker.SHARED_LEASE_WAIT_MS``, so the loops of
nodes without work cannot keep the slots from a node with due tasks (stale_routing seed 2008 in
``tests/sim/test_regressions.py``; mutation ``hoard-slots-across-nodes``)."""

SERVED_BOUND_S = 60.0
"""Simulated seconds the cluster gets to serve every shard once its nodes started."""

Driver = Callable[[Simulator, ClusterWorld, random.Random], Awaitable[None]]


@dataclass
class ClusterKnobs:
    nodes: int
    ttl_s: int
    interval_s: float
    discover_s: float | None


def workload_overrides() -> dict[str, Any]:
    """The :meth:`Workload.draw` overrides every cluster scenario passes."""
    return {} if LEASE_WAIT_MS is None else {"lease_wait_ms": LEASE_WAIT_MS}


TRAFFIC: dict[str, Any] = {
    "shards": Span(4, 10), "lease_ms": Span(1000, 5000), "jobs": Span(20, 60),
    "workers": Span(1, 4), "concurrency": Span(2, 8), "retry_mode": "narrow",
    "fault_s": Span(10.0, 20.0), "bound_s": 150.0,
}
"""The job traffic of the cluster scenarios: 4-10 shards, lease 1-5 s, 20-60 jobs, 1-4 workers
of concurrency 2-8, narrow retry policies, a 10-20 s fault phase, a 150 s liveness bound."""


def draw_traffic(rng: random.Random, param: Callable[[str, Any], Any],
                 **changes: Any) -> Workload:
    """:meth:`Workload.draw` with :data:`TRAFFIC` and :func:`workload_overrides`, then
    ``changes`` on top."""
    return Workload.draw(rng, param, **(TRAFFIC | workload_overrides() | changes))


def draw_message_loss(rng: random.Random, param: Callable[[str, Any], Any]) -> FaultPlan:
    """Request and response loss of 0-1% each, as one drawn ``message_loss`` rate."""
    loss = param("message_loss", round(rng.uniform(0.0, 0.01), 4))
    return FaultPlan(rates={"net.drop.request": loss, "net.drop.response": loss})


def draw_cluster(rng: random.Random, param: Callable[[str, Any], Any], *,
                 nodes: tuple[int, int] = (2, 3), ttl_s: tuple[int, int] = (1, 3),
                 discover_s: float | None = -1.0) -> ClusterKnobs:
    """The cluster's knobs: nodes at the start, membership TTL, reconcile interval, and how
    often workers look for nodes that gained shards (``discover_s`` -1: drawn 0.5-3 s)."""
    n = param("nodes", rng.randint(*nodes))
    ttl = param("membership_ttl_s", rng.randint(*ttl_s))
    # The etcd watch wakes the loop on every change; the interval is only its fallback (and
    # each pass is three etcd reads per node: the bulk of a cluster run's wall time).
    interval = param("reconcile_interval_s", round(rng.uniform(0.3, 1.0), 3))
    if discover_s is not None and discover_s < 0:
        discover_s = round(rng.uniform(0.5, 3.0), 3)
    return ClusterKnobs(n, ttl, interval, param("worker_discover_s", discover_s))


async def wait_served(sim: Simulator, world: ClusterWorld, bound_s: float, why: str) -> bool:
    """Wait until every shard is served by a live node holding its key (liveness)."""
    deadline = trio.current_time() + bound_s
    while sim.ok:
        if world.all_served():
            return True
        if trio.current_time() >= deadline:
            sim.checker.fail(Invariant.LIVENESS,
                             f"shards not served {bound_s:.0f}s {why}: "
                             f"{world.liveness_report()}")
            return False
        await trio.sleep(0.2)
    return False


async def run_cluster_workload(
    sim: Simulator, rng: random.Random, w: Workload, faults: FaultPlan, knobs: ClusterKnobs,
    driver: Driver | None, durations: dict[str, tuple[int, int]] | None = None,
) -> None:
    world: list[ClusterWorld] = []
    sim.worker_discover_interval_s = knobs.discover_s

    async def start_nodes() -> None:
        cw = await sim.start_cluster(shards=w.shards, ttl_s=knobs.ttl_s,
                                     interval_s=knobs.interval_s, lease_ms=w.lease_ms,
                                     write_latency_s=w.write_latency_ms / 1000)
        world.append(cw)
        for i in range(knobs.nodes):
            await sim.add_cluster_node(f"n{i + 1}")
        await wait_served(sim, cw, SERVED_BOUND_S, "after the nodes started")
        sim.trace.record(f"cluster served: {cw.ownership.served()}")
        if driver is not None:
            sim.spawn_fault_phase(driver, sim, cw, sim.random.stream("cluster/driver"))

    async def after_heal() -> None:
        cw = world[0]
        if cw.gone:
            await cw.force_release_until_done(sorted(cw.gone))

    def nodes_done() -> bool:
        return bool(world) and world[0].all_served()

    await run_workload(sim, rng, w, faults, durations, start_nodes=start_nodes,
                       after_heal=after_heal, nodes_done=nodes_done)
    if world and sim.ok:
        sim.count("cluster.moves", world[0].ownership.moves)


class Moves:
    """The cluster moves a driver makes (each counted in the run's stats as ``cluster.*``)."""

    def __init__(self, sim: Simulator, world: ClusterWorld, rng: random.Random) -> None:
        self.sim = sim
        self.world = world
        self.rng = rng
        self.joined = 0

    def up(self) -> list[ClusterNodeHost]:
        return [n for n in self.world.nodes() if n.serving and n.name not in self.world.gone]

    def owners(self) -> list[ClusterNodeHost]:
        """Live nodes that serve at least one shard."""
        return [n for n in self.up() if n.open]

    async def join(self) -> ClusterNodeHost:
        self.joined += 1
        name = f"n{len(self.world.nodes()) + 1}"
        self.sim.count("cluster.join")
        self.sim.trace.record(f"cluster join {name}")
        return await self.world.add_node(name)

    async def leave_and_return(self, node: ClusterNodeHost, away_s: float) -> None:
        """A graceful leave (close every shard, revoke the membership; the keys stay) and a
        restart with the same node id ``away_s`` later."""
        self.sim.count("cluster.leave")
        self.sim.board.count("node.restart", f"{node.name} leave {away_s:.3f}s")
        node.begin_stop()
        self.sim.spawn(self._back_later, node, away_s, True)

    async def _back_later(self, node: ClusterNodeHost, delay: float, clean: bool) -> None:
        if clean:
            await node.stop()
        await trio.sleep(delay)
        if node.name not in self.world.gone:
            await node.start()

    async def decommission(self, node: ClusterNodeHost) -> None:
        """Leave for good: a clean stop, then the operator force-releases its shards (once
        its membership is gone), so the others take them."""
        self.sim.count("cluster.decommission")
        self.world.gone.add(node.name)
        self.sim.trace.record(f"cluster decommission {node.name}")
        await node.stop()
        await self.world.force_release_until_done([node.name])

    def crash(self, node: ClusterNodeHost, down_s: float) -> None:
        self.sim.board.count("node.crash", f"{node.name} cluster")
        node.crash()
        self.sim.spawn(self._back_later, node, down_s, False)

    def cut_off(self, node: ClusterNodeHost, *, peers: bool, clients: bool) -> list[str]:
        """Partition ``node`` from etcd (and from the other nodes, and the clients and
        workers); returns the hosts it was cut from."""
        others = [self.world.etcd.name]
        if peers:
            others += [n.name for n in self.world.nodes() if n is not node]
        if clients:
            others += sorted([*self.sim.hosts, *self.sim.workers])
        self.sim.board.count("net.partition", f"{node.name} cut off from {len(others)} hosts")
        for other in others:
            self.sim.net.partition(node.name, other)
        return others

    def reconnect(self, node: ClusterNodeHost, others: list[str]) -> None:
        for other in others:
            self.sim.net.heal(node.name, other)
        self.sim.trace.record(f"cluster {node.name} reconnected")


__all__ = ["LEASE_WAIT_MS", "ClusterKnobs", "Moves", "draw_cluster", "run_cluster_workload",
           "wait_served", "workload_overrides"]
