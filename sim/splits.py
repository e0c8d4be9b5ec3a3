"""Split operators for the split scenarios: ask a node to split a shard over the RPC, and crash
or cleanly stop the node at a seed-chosen point of the split (DESIGN §6 "Split").

An operator splits a shard it picks from the node's current map, at the median tenant hash
(the server's default) or at a random hash inside the range. ``crash_at`` names the split phase
(``requested``, ``paused``, ``cloned``, ``committed``, ``children_open``) right after which the
node crashes, ``cleanup`` to crash while a child's cleanup runs, or ``none``; the crash happens
once per run, while faults are on.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from silo.cluster.split import SplitPhase
from silo.errors import SiloError
from silo.wire import pb

if TYPE_CHECKING:
    from sim.hosts import NodeHost
    from sim.simulator import Simulator

CRASH_POINTS = ("none", "requested", "paused", "cloned", "committed", "children_open",
                "cleanup")


def node_host(sim: Simulator) -> NodeHost:
    return sim.nodes[sorted(sim.nodes)[0]]


async def wait_serving(sim: Simulator) -> NodeHost:
    while True:
        if sim.nodes:
            host = node_host(sim)
            if host.serving and host.node is not None:
                return host
        await trio.sleep(0.05)


def tune_cleanup(host: NodeHost, batch_keys: int, pause_s: float) -> None:
    """Make the node's next cleanups slow (small batches, pauses), so closes land mid-sweep."""
    assert host.node is not None
    shard = replace(host.config.shard, cleanup_batch_keys=batch_keys, cleanup_pause_s=pause_s)
    host.config = replace(host.config, shard=shard)
    host.node.config = host.config


async def request_split(sim: Simulator, client: object, host: NodeHost,
                        rng: random.Random, default_point: bool) -> None:
    assert host.node is not None
    shards = host.node.shard_map.shards
    target = rng.choice(shards)
    at_hash = 0 if default_point else rng.randrange(target.start + 1, target.end)
    sim.trace.record(f"split request shard={target.shard_id} at_hash={at_hash}")
    try:
        await client.call(  # type: ignore[attr-defined]
            "SplitShard", pb.SplitShardRequest(shard=target.shard_id, at_hash=at_hash),
            pb.SplitShardResponse, timeout=30.0)
        sim.count("split.done")
    except SiloError as exc:
        sim.count(f"split.refused.{exc.code.name}")


def arm_crash(sim: Simulator, host: NodeHost, point: str, rng: random.Random,
              fired: list[bool]) -> None:
    """Crash ``host`` once, right after the split phase ``point`` is recorded (``cleanup``:
    a moment after the children open, while their cleanup runs)."""
    if point == "none" or host.node is None:
        return

    def on_phase(record: object) -> None:
        phase = record.phase  # type: ignore[attr-defined]
        if fired or not sim.board.enabled:
            return
        if point == "cleanup" and phase == SplitPhase.CHILDREN_OPEN:
            fired.append(True)
            sim.spawn(_crash_later, sim, host, rng.uniform(0.0, 0.5),
                      rng.uniform(0.05, 2.0))
        elif phase.label == point:
            fired.append(True)
            sim.crash_host(host, rng.uniform(0.05, 2.0), f"split-{point}")

    host.node.splitter.on_phase = on_phase


async def _crash_later(sim: Simulator, host: NodeHost, after_s: float, delay: float) -> None:
    await trio.sleep(after_s)
    sim.crash_host(host, delay, "split-cleanup")


async def split_operator(sim: Simulator, rng: random.Random, splits: int, crash_at: str,
                         default_prob: float, start_s: tuple[float, float]) -> None:
    """``splits`` split requests during the fault phase, the first after ``start_s``."""
    client = sim.add_host("splitter").client()
    fired: list[bool] = []
    for _ in range(splits):
        await trio.sleep(rng.uniform(*start_s))
        host = await wait_serving(sim)
        tune_cleanup(host, rng.choice((3, 10, 50)), rng.choice((0.0, 0.01, 0.05)))
        arm_crash(sim, host, crash_at, rng, fired)
        await request_split(sim, client, host, rng, rng.random() < default_prob)


__all__ = ["CRASH_POINTS", "arm_crash", "request_split", "split_operator", "tune_cleanup",
           "wait_serving"]
