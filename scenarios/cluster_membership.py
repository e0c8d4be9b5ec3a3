"""Cluster members join, crash and restart with the same id, lose etcd, and are force-released
while the reconcile loops move shards; at most one node serves a shard at any instant.

Runs the real reconcile loop and etcd coordinator of each member against the etcd model over
the simulated network (sim/cluster.py; the shards are stand-ins that record when they are open).
Invariant 10 is checked on every open and release; after the faults every shard must be served
by a live member that holds its ownership key.

Parameters: 2-3 members at the start, 1-2 joining during a 15-35 s fault phase (at least one),
8-16 shards, membership TTL 1-3 s, reconcile interval 0.1-0.5 s, a fault every 1-4 s (a crash
or a clean stop and a restart after 0.2-4 s, a partition from etcd for 0.5-5 s, or a join); in
half the runs one member crashes for good and an operator force-releases its shards once its
membership expired.
"""

from __future__ import annotations

import random

import trio

from silo.cluster.coordinator import EtcdCoordinator
from silo.cluster.etcd import EtcdClient
from sim.cluster import ETCD_RETRY, ClusterMember, Ownership, force_release_gone
from sim.etcd import EtcdHost
from sim.invariants import Invariant
from sim.simulator import Simulator

SETTLE_BOUND_S = 60.0


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    initial = p("members", rng.randint(2, 3))
    joins = p("joins", rng.randint(1, 2))
    shards = p("shards", rng.randint(8, 16))
    ttl_s = p("membership_ttl_s", rng.randint(1, 3))
    interval_s = p("reconcile_interval_s", round(rng.uniform(0.1, 0.5), 3))
    fault_s = p("fault_s", round(rng.uniform(15.0, 35.0), 3))
    fault_every_s = p("fault_every_s", round(rng.uniform(1.0, 4.0), 3))
    gone_for_good = p("gone_for_good", rng.random() < 0.5)

    etcd = EtcdHost(sim)
    await etcd.start()
    ownership = Ownership(sim, etcd)
    members: dict[str, ClusterMember] = {}

    async def add(name: str) -> ClusterMember:
        m = ClusterMember(sim, ownership, name, shards=shards, ttl_s=ttl_s,
                          interval_s=interval_s)
        members[name] = m
        await m.start()
        return m

    for i in range(initial):
        await add(f"n{i + 1}")
    await trio.sleep(ttl_s + 1.0)

    operator = await _operator(sim, etcd, ownership)
    gone: set[str] = set()
    joined = 0
    end = trio.current_time() + fault_s
    forced = False
    while trio.current_time() < end and sim.ok:
        await trio.sleep(rng.uniform(0.5, 2 * fault_every_s))
        live = [m for _, m in sorted(members.items()) if m.name not in gone]
        roll = rng.random()
        if joined < joins and (roll < 0.25 or trio.current_time() > end - fault_s / 3):
            joined += 1
            await add(f"n{len(members) + 1}")
            sim.count("cluster.join")
        elif roll < 0.6 and live:
            victim = rng.choice(live)
            victim.crash()
            sim.count("cluster.crash")
            # Only a running member goes for good: one stopped or crashed earlier has a restart
            # on its way, which may already be waiting for the old run to end.
            if gone_for_good and not gone and len(live) > 1 and victim.running:
                gone.add(victim.name)
                sim.count("cluster.gone")
                sim.trace.record(f"cluster {victim.name} gone for good")
            else:
                sim.spawn(_restart_later, victim, rng.uniform(0.2, 4.0), gone)
        elif roll < 0.72 and live:
            victim = rng.choice(live)
            victim.stop()
            sim.count("cluster.stop")
            sim.spawn(_restart_later, victim, rng.uniform(0.2, 4.0), gone)
        elif live:
            victim = rng.choice(live)
            victim.cut_off()
            sim.count("cluster.cut_off")
            sim.spawn(_reconnect_later, victim, rng.uniform(0.5, 5.0))
        if gone and not forced:
            forced = await force_release_gone(sim, operator, sorted(gone))

    sim.trace.record("cluster heal")
    sim.net.heal_all()
    for _, m in sorted(members.items()):
        m.reconnect()
        if m.name not in gone:
            await m.start()
    while gone and not forced and sim.ok:
        forced = await force_release_gone(sim, operator, sorted(gone))
        if not forced:
            await trio.sleep(0.5)
    await _settle(sim, etcd, ownership, members, gone, shards)
    for _, m in sorted(members.items()):
        m.crash()


async def _restart_later(m: ClusterMember, delay: float, gone: set[str]) -> None:
    """Restart ``m`` after ``delay``, unless it was declared gone for good meanwhile."""
    await trio.sleep(delay)
    if m.name not in gone:
        await m.start()


async def _reconnect_later(m: ClusterMember, delay: float) -> None:
    await trio.sleep(delay)
    m.reconnect()


async def _operator(sim: Simulator, etcd: EtcdHost, ownership: Ownership) -> EtcdCoordinator:
    channel = await sim.net.connector("operator").connect(etcd.address)
    client = EtcdClient(channel, rng=sim.random.stream("host/operator"), retry=ETCD_RETRY)
    return EtcdCoordinator(client, ownership.keys, "operator")


async def _settle(sim: Simulator, etcd: EtcdHost, ownership: Ownership,
                  members: dict[str, ClusterMember], gone: set[str], shards: int) -> None:
    """Liveness: every shard served by a live member that holds its ownership key."""
    deadline = trio.current_time() + SETTLE_BOUND_S
    while sim.ok:
        served = ownership.served()
        owners = {s: ownership.key_owner(s) for s in range(shards)}
        if len(served) == shards and all(owners[s] == n for s, n in served.items()):
            sim.trace.record(f"cluster settled: {served}")
            sim.count("cluster.moves", ownership.moves)
            return
        if trio.current_time() >= deadline:
            missing = [s for s in range(shards) if s not in served]
            sim.checker.fail(
                Invariant.LIVENESS,
                f"{len(missing)} shard(s) not served {SETTLE_BOUND_S:.0f}s after healing: "
                f"{missing[:8]}", f"owners {owners}", f"served {served}",
                f"gone for good {sorted(gone)}")
            return
        await trio.sleep(0.2)
