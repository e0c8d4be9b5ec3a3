"""A dishonest worker: it heartbeats and reports task ids it never owned.

It learns task ids from the durable ``task_leased`` events (as a worker that once saw another
worker's lease, or a stale process from before a reap, would know them) and sends, through the
public API, heartbeats and outcome reports for them under its own worker id. Every such call
must be refused (FAILED_PRECONDITION or NOT_FOUND) and change nothing: the checker's fencing
check catches any that is answered OK or that causes a lease event.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import trio

from silo.errors import SiloError
from silo.pb.silo import v1 as pb

if TYPE_CHECKING:
    from sim.simulator import Simulator

ZOMBIE_WORKER_ID = "zombie.1"
LIVE_PROB = 0.8
"""Chance a call targets a lease that is live now (else any task id ever leased)."""


async def run_zombie(sim: Simulator, rng: random.Random, every_s: float) -> None:
    """Until cancelled (the fault phase ends): every ~``every_s`` simulated seconds, heartbeat
    or report one task id leased to another worker."""
    while not sim.nodes:
        await trio.sleep(0.1)
    client = sim.add_host("zombie").client()
    while True:
        await trio.sleep(rng.expovariate(1.0 / every_s))
        live = sorted(sim.checker.live_leases)
        known = sorted(sim.checker.task_owner)
        pool = live if live and rng.random() < LIVE_PROB else known
        if not pool:
            continue
        task_id = rng.choice(pool)
        owner = sim.checker.task_owner.get(task_id)
        if owner is None:
            continue
        try:
            if rng.random() < 0.5:
                await client.call(
                    "Heartbeat",
                    pb.HeartbeatRequest(shard=owner.shard, worker_id=ZOMBIE_WORKER_ID,
                                        task_id=task_id),
                    pb.HeartbeatResponse, shard_id=owner.shard,
                )
                what = "heartbeat"
            else:
                outcome = pb.Outcome(
                    shard=owner.shard, worker_id=ZOMBIE_WORKER_ID, task_id=task_id,
                    tenant=owner.tenant, job_id=owner.job_id, attempt=owner.attempt,
                    success=b"\x91\xa6zombie",
                )
                await client.call("ReportOutcome", pb.ReportOutcomeRequest(outcome=outcome),
                                  pb.ReportOutcomeResponse, shard_id=owner.shard)
                what = "report"
        except SiloError as exc:
            sim.count(f"zombie.refused.{exc.code.name}")
            continue
        sim.count(f"zombie.{what}.ok")


__all__ = ["ZOMBIE_WORKER_ID", "run_zombie"]
