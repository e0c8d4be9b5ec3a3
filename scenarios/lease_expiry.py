"""A worker is cut off (partitioned away, or crashed) while it holds leases; its leases expire,
the reaper fails those attempts with WORKER_CRASHED, and another worker finishes the jobs.

Parameters: lease 1-3 s, jobs 2-8 each running 2-4 leases long (with retries left), mode
partition or crash, the cut-off lasting 3-6 leases plus the reap slack, the second worker
starting 0-2 s after the cut-off, shards 1-2.
"""

from __future__ import annotations

import random

import trio

from silo.errors import SiloError
from silo.model import RetryPolicy
from sim.checkers import REAP_SLACK_S
from sim.invariants import Invariant
from sim.simulator import Simulator
from sim.workload import make_handler


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    lease_ms = p("lease_ms", rng.randint(1000, 3000))
    shards = p("shards", rng.randint(1, 2))
    jobs = p("jobs", rng.randint(2, 8))
    mode = p("mode", rng.choice(["partition", "crash"]))
    concurrency = p("concurrency", rng.randint(1, 3))
    cut_s = p("cut_s", round(lease_ms / 1000 * rng.uniform(3.0, 6.0) + REAP_SLACK_S + 2, 3))
    second_delay_s = p("second_worker_delay_s", round(rng.uniform(0.0, 2.0), 3))
    durations = [p(f"duration_ms_{i}", int(lease_ms * rng.uniform(2.0, 4.0))) for i in range(jobs)]

    await sim.add_node("n1", shards=shards, lease_ms=lease_ms, write_latency_s=0.001)
    handler = make_handler(sim)
    wa = await sim.add_worker("wa", "tg0", handler, concurrency=concurrency,
                              lease_wait_ms=1000)
    client = sim.add_host("producer").client()
    ids: list[tuple[str, str]] = []
    for i, d in enumerate(durations):
        job_id = f"job-{i:03d}"
        while True:
            try:
                await client.enqueue("tg0", {"d": d, "k": 0}, id=job_id,
                                     retry=RetryPolicy(retry_count=3, initial_backoff_ms=100),
                                     tenant="t0")
                break
            except SiloError:
                await trio.sleep(0.5)
        sim.checker.on_ack_enqueue("t0", job_id)
        ids.append(("t0", job_id))

    # Wait until the first worker holds a lease.
    with trio.move_on_after(30):
        while not any(
            sim.checker.jobs[k].lease is not None
            and sim.checker.jobs[k].lease.worker_id.startswith("wa.")  # type: ignore[union-attr]
            for k in sim.checker.live_leases.values()
        ):
            await trio.sleep(0.05)
    victims = sorted(
        k for k in sim.checker.live_leases.values()
        if sim.checker.jobs[k].lease.worker_id.startswith("wa.")  # type: ignore[union-attr]
    )
    sim.trace.record(f"cutting off wa holding {victims}")
    if mode == "partition":
        sim.board.count("net.partition", f"n1|wa {cut_s:.3f}s")
        sim.net.partition("n1", "wa")
    else:
        sim.board.count("worker.crash", wa.worker_id)
        wa.crash()
    await trio.sleep(second_delay_s)
    await sim.add_worker("wb", "tg0", handler, concurrency=concurrency, lease_wait_ms=1000)
    await trio.sleep(max(0.0, cut_s - second_delay_s))
    await sim.heal()
    if not await sim.settle(120.0):
        return
    for key in victims:
        j = sim.checker.jobs[key]
        # The job was retried (not, say, left to the cut-off worker) and succeeded.
        if j.status != "SUCCEEDED" or len(j.attempts) < 2:
            sim.checker.fail(Invariant.REAP_AND_CANCEL,
                             f"job {key}, whose worker was cut off, ended {j.status} with "
                                f"attempts {j.attempts}: its expired lease was not reaped and "
                                f"retried", j.describe(), *j.history[-6:])
            return
