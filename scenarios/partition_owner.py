"""A node that owns shards is cut off from etcd and its peers (in half the runs from its clients
and workers too) under job traffic: it must fail closed, and once its membership lease expired
an operator force-releases its shards and the others take them over; healed, it rejoins.

Runs the standard workload on a cluster of real nodes with coordination etcd
(sim/cluster_nodes.py). Besides invariant 10 on every store open and key release, the moment
etcd drops the cut-off node's membership the node must already consider it lost (it may not
serve past its lease), and its shards must be served elsewhere soon after the force-release.

Parameters: 3-4 nodes, 4-10 shards, membership TTL 1-3 s, reconcile interval 0.3-1 s,
workers rediscovering the nodes every 0.5-3 s, 1-2 partitions of an owner during a 10-20 s fault
phase (1-3 s apart, each healed 0-3 s after the takeover), message loss 0-1%, lease 1-5 s, jobs
20-60, worker concurrency 2-8, narrow retry policies.

The job traffic is ``sim.cluster_workload.TRAFFIC`` where not said otherwise; every other knob
(the workers' long poll among them, up to its 30 s edge) is drawn by ``Workload.draw`` (typical,
or at an edge).
"""

from __future__ import annotations

import random

import trio

from sim.cluster_nodes import ClusterNodeHost, ClusterWorld
from sim.cluster_workload import (
    Moves,
    draw_cluster,
    draw_message_loss,
    draw_traffic,
    run_cluster_workload,
)
from sim.invariants import Invariant
from sim.simulator import Simulator

TAKEOVER_BOUND_S = 20.0
"""Simulated seconds the survivors get to serve the force-released shards."""


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    knobs = draw_cluster(rng, p, nodes=(3, 4))
    w = draw_traffic(rng, p)
    partitions = p("partitions", rng.randint(1, 2))
    clients_too = p("cut_clients_too", rng.random() < 0.5)
    faults = draw_message_loss(rng, p)

    async def driver(sim: Simulator, world: ClusterWorld, rng: random.Random) -> None:
        moves = Moves(sim, world, rng)
        for _ in range(partitions):
            await trio.sleep(rng.uniform(1.0, 3.0))
            owners = moves.owners()
            if len(owners) < 2 or not sim.ok:
                continue
            victim = rng.choice(owners)
            held = sorted(victim.open)
            sim.count("cluster.partition_owner")
            sim.trace.record(f"cluster cut off owner {victim.name} (shards {held})")
            cut = moves.cut_off(victim, peers=True, clients=clients_too)
            await _membership_gone(sim, world, victim)
            if await world.force_release_until_done([victim.name], bound_s=30.0):
                await _taken_over(sim, world, victim, held)
            await trio.sleep(rng.uniform(0.0, 3.0))
            moves.reconnect(victim, cut)

    await run_cluster_workload(sim, rng, w, faults, knobs, driver)


async def _membership_gone(sim: Simulator, world: ClusterWorld, node: ClusterNodeHost) -> None:
    """Wait until etcd dropped ``node``'s membership key; the node must have stopped
    considering itself a member by then (fail closed)."""
    key = world.keys.member(node.name)
    while sim.ok and key in world.etcd.model.kv:
        await trio.sleep(0.05)
    if node.alive:
        sim.checker.fail(Invariant.SINGLE_OWNER,
                         f"{node.name}'s membership expired in etcd while {node.name} still "
                         f"considered it alive (serving shards {sorted(node.open)})")


async def _taken_over(sim: Simulator, world: ClusterWorld, node: ClusterNodeHost,
                      held: list[int]) -> None:
    """The shards ``node`` held are served by the other nodes within the bound."""
    deadline = trio.current_time() + TAKEOVER_BOUND_S
    while sim.ok:
        served = world.ownership.served()
        if all(served.get(s) not in (None, node.name) for s in held):
            sim.count("cluster.taken_over", len(held))
            return
        if trio.current_time() >= deadline:
            sim.checker.fail(Invariant.LIVENESS,
                             f"shards {held} of the cut-off {node.name} not served by another "
                             f"node {TAKEOVER_BOUND_S:.0f}s after their force-release",
                             world.liveness_report())
            return
        await trio.sleep(0.2)
