"""A split child's cleanup is interrupted by a clean close mid-sweep (and sometimes a crash);
the node reopens, the cleanup resumes from its checkpoint and finishes, and no in-range row is
ever deleted.

Parameters: one split 1-4 s into a 10-20 s fault phase, cleanup batches of 2-5 rows with
10-50 ms pauses (so the sweep is long), the close 0-0.5 s after the children open, a second
interruption (close or crash) in half the runs; 1 shard, 4-12 tenants, single jobs per enqueue.
"""

from __future__ import annotations

import random

import trio

from silo.cluster.split import SplitPhase
from sim.simulator import FaultPlan, Simulator
from sim.splits import request_split, tune_cleanup, wait_serving
from sim.workload import Span, Workload, run_workload


async def interrupt_cleanup(sim: Simulator, rng: random.Random, start_s: float,
                            batch_keys: int, pause_s: float, second: str) -> None:
    client = sim.add_host("splitter").client()
    await trio.sleep(start_s)
    host = await wait_serving(sim)
    tune_cleanup(host, batch_keys, pause_s)
    await request_split(sim, client, host, rng, True)
    for how in ("close", second):
        if how == "none":
            return
        await trio.sleep(rng.uniform(0.0, 0.5))
        host = await wait_serving(sim)
        node = host.node
        assert node is not None
        running = [s for _, s in sorted(node.shards.items())
                   if s.split_marker() is not None and not s.split_marker().done]
        if not running:
            sim.count("split.cleanup_finished_before_interrupt")
            return
        sim.count(f"split.cleanup_interrupted.{how}")
        if how == "close":
            sim.stop_host(host, rng.uniform(0.05, 1.0), "split-cleanup")
        else:
            sim.crash_host(host, rng.uniform(0.05, 1.0), "split-cleanup")
        await trio.sleep(1.5)
        host = await wait_serving(sim)
        tune_cleanup(host, batch_keys, pause_s)
        if host.node is not None and any(r.phase == SplitPhase.CHILDREN_OPEN
                                         for r in host.node.splitter.records.values()):
            sim.count("split.cleanup_resumed")


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload.draw(rng, p,
        shards=1, tenants=Span(4, 12), jobs=Span(30, 80), batch_prob=0.0,
        fault_s=Span(10.0, 20.0), bound_s=150.0,
    )
    start_s = p("split_after_s", round(rng.uniform(1.0, 4.0), 3))
    batch_keys = p("cleanup_batch_keys", rng.randint(2, 5))
    pause_s = p("cleanup_pause_s", rng.choice((0.01, 0.02, 0.05)))
    second = p("second_interrupt", rng.choice(("none", "close", "crash")))
    sim.spawn_fault_phase(interrupt_cleanup, sim, sim.random.stream("splitter"), start_s,
                          batch_keys, pause_s, second)
    await run_workload(sim, rng, w, FaultPlan())
