"""Building blocks scenarios share: a job mix, producers, workers' handler, an operator, and the
standard fault-phase / heal / liveness run.

Each job's payload is its own plan (how long its handler runs, how many attempts fail and how,
whether it ignores a cancel), drawn from the scenario's rng, so what a handler does depends only
on the seed, whichever worker runs it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import trio

from silo.client.types import Cancel, Fail, pack
from silo.client.worker import TaskContext
from silo.errors import SiloError
from silo.model import ConcurrencyLimit, Limit, NewJob, RetryPolicy
from sim.hosts import ClientHost
from sim.network import NetConfig
from sim.simulator import FaultPlan, Simulator


@dataclass
class Workload:
    shards: int = 2
    lease_ms: int = 3000
    write_latency_ms: float = 1.0
    latency_ms: tuple[float, float] = (0.2, 3.0)
    reorder_ms: tuple[float, float] = (20.0, 300.0)
    producers: int = 2
    jobs: int = 40
    batch_prob: float = 0.0
    """Chance that an enqueue carries several jobs (EnqueueBatch)."""
    spread_s: float = 10.0
    """Producers spread their enqueues over this many simulated seconds."""
    tenants: int = 3
    task_groups: int = 1
    workers: int = 2
    concurrency: int = 4
    lease_wait_ms: int = 2000
    priority: tuple[int, int] = (0, 99)
    duration_ms: tuple[int, int] = (0, 1500)
    future_prob: float = 0.1
    future_ms: tuple[int, int] = (500, 5000)
    retry_count: tuple[int, int] = (0, 2)
    backoff_ms: tuple[int, int] = (50, 500)
    fail_prob: float = 0.1
    error_prob: float = 0.02
    ignore_cancel_prob: float = 0.1
    operator_every_s: float | None = None
    operator_weights: dict[str, float] = field(
        default_factory=lambda: {"cancel": 4, "restart": 2, "expedite": 3, "delete": 1}
    )
    fault_s: float = 15.0
    bound_s: float = 120.0
    limits: Any = None
    """``limits(rng, tenant) -> tuple[Limit, ...]``: the limits a new job carries (None: none).
    Called once per job, after the job's other draws."""
    refresh_handler: Any = None
    """The workers' refresh handler for floating limits (None: none)."""


@dataclass
class JobPlan:
    tenant: str
    job_id: str
    task_group: str
    priority: int
    delay_ms: int
    retry: RetryPolicy
    payload: dict[str, Any]
    limits: tuple[Limit, ...] = ()

    def new_job(self, start_at_ms: int) -> NewJob:
        return NewJob(
            task_group=self.task_group, payload=pack(self.payload), tenant=self.tenant,
            job_id=self.job_id, priority=self.priority, start_at_ms=start_at_ms,
            retry=self.retry, limits=self.limits,
        )


def draw_job(rng: random.Random, w: Workload, n: int,
             durations: dict[str, tuple[int, int]] | None = None) -> JobPlan:
    retries = rng.randint(*w.retry_count)
    fails = 0
    crash = False
    if rng.random() < w.fail_prob:
        fails = rng.randint(1, retries + 1)
    elif rng.random() < w.error_prob:
        fails, crash = 1, True
    backoff = rng.randint(*w.backoff_ms)
    retry = RetryPolicy(
        retry_count=retries, initial_backoff_ms=backoff, max_backoff_ms=backoff * 4,
        backoff_factor=2.0, randomize=rng.random() < 0.5,
    )
    payload: dict[str, Any] = {"d": rng.randint(*w.duration_ms), "k": fails}
    if crash:
        payload["x"] = 1
    if rng.random() < w.ignore_cancel_prob:
        payload["ic"] = 1
    delay = rng.randint(*w.future_ms) if rng.random() < w.future_prob else 0
    tenant = f"tenant-{rng.randrange(w.tenants)}"
    if durations and tenant in durations:
        payload["d"] = rng.randint(*durations[tenant])
    return JobPlan(
        tenant=tenant,
        job_id=f"job-{n:04d}-{rng.getrandbits(32):08x}",
        task_group=f"tg{rng.randrange(w.task_groups)}",
        priority=rng.randint(*w.priority),
        delay_ms=delay,
        retry=retry,
        payload=payload,
        limits=tuple(w.limits(rng, tenant)) if w.limits is not None else (),
    )


def make_handler(sim: Simulator) -> Any:
    """The workers' handler: a trio function that follows the job's plan."""

    async def handler(ctx: TaskContext) -> Any:
        plan = ctx.payload or {}
        start = trio.current_time()
        duration = plan.get("d", 0) / 1000
        with trio.move_on_after(duration):
            await ctx.cancelled.wait()
        if ctx.cancelled.is_set():
            sim.count("worker.saw_cancel")
            if not plan.get("ic"):
                raise Cancel()
            await trio.sleep(max(0.0, start + duration - trio.current_time()))
        if ctx.attempt <= plan.get("k", 0):
            if plan.get("x"):
                raise RuntimeError(f"planned handler crash on attempt {ctx.attempt}")
            raise Fail("PLANNED", {"attempt": ctx.attempt})
        return {"job": ctx.job_id, "attempt": ctx.attempt}

    return handler


async def produce(
    sim: Simulator, host: ClientHost, plans: list[list[JobPlan]], gaps: list[float],
    done: list[int],
) -> None:
    """Enqueue each group (one Enqueue, or one EnqueueBatch per shard) after its gap."""
    client = host.client()
    try:
        for group, gap in zip(plans, gaps, strict=True):
            await trio.sleep(gap)
            now = host.clock.now_ms()
            try:
                if len(group) == 1:
                    p = group[0]
                    await client.enqueue(
                        p.task_group, p.payload, tenant=p.tenant, id=p.job_id,
                        priority=p.priority,
                        start_at_ms=now + p.delay_ms if p.delay_ms else None, retry=p.retry,
                        limits=p.limits,
                    )
                else:
                    await client.enqueue_jobs(
                        [p.new_job(now + p.delay_ms if p.delay_ms else 0) for p in group]
                    )
            except SiloError as exc:
                sim.count("enqueue.unknown", len(group))
                sim.trace.record(f"enqueue failed {[p.job_id for p in group]}: {exc}")
                continue
            sim.count("enqueue.acked", len(group))
            for p in group:
                sim.trace.record(f"ack enqueue {p.tenant}/{p.job_id}")
                sim.checker.on_ack_enqueue(p.tenant, p.job_id)
    finally:
        done[0] += 1


async def operate(sim: Simulator, host: ClientHost, rng: random.Random, every_s: float,
                  weights: dict[str, float]) -> None:
    """An operator cancelling, restarting, expediting and deleting random known jobs."""
    client = host.client()
    actions = sorted(weights)
    while True:
        await trio.sleep(rng.expovariate(1.0 / every_s))
        known = [k for k, j in sorted(sim.checker.jobs.items()) if not j.deleted]
        if not known:
            continue
        tenant, job_id = rng.choice(known)
        action = rng.choices(actions, [weights[a] for a in actions])[0]
        handle = client.job(job_id, tenant)
        try:
            await getattr(handle, action)()
        except SiloError as exc:
            sim.trace.record(f"operator {action} {tenant}/{job_id}: {exc.code.name}")
            sim.count(f"operator.{action}.refused")
        else:
            sim.trace.record(f"operator {action} {tenant}/{job_id}: OK")
            sim.count(f"operator.{action}.ok")


def plan_jobs(
    rng: random.Random, w: Workload, durations: dict[str, tuple[int, int]] | None = None
) -> list[tuple[list[list[JobPlan]], list[float]]]:
    """Per producer: its enqueue groups and the gap before each."""
    per: list[list[JobPlan]] = [[] for _ in range(w.producers)]
    for n in range(w.jobs):
        per[n % w.producers].append(draw_job(rng, w, n, durations))
    out = []
    for jobs in per:
        groups: list[list[JobPlan]] = []
        i = 0
        while i < len(jobs):
            size = rng.randint(2, 6) if rng.random() < w.batch_prob else 1
            groups.append(jobs[i:i + size])
            i += size
        mean_gap = w.spread_s / max(1, len(groups))
        gaps = [rng.expovariate(1.0 / mean_gap) if mean_gap > 0 else 0.0 for _ in groups]
        out.append((groups, gaps))
    return out


async def run_workload(
    sim: Simulator, rng: random.Random, w: Workload, faults: FaultPlan,
    durations: dict[str, tuple[int, int]] | None = None,
) -> None:
    """The standard run: one node, workers, producers (and an operator), a fault phase of
    ``w.fault_s`` seconds, healing, and a liveness phase bounded by ``w.bound_s``.
    ``durations`` overrides the handler duration range per tenant."""
    plans = plan_jobs(rng, w, durations)
    jobs = [p for groups, _ in plans for g in groups for p in g]
    sim.param("job_plan", (
        f"{len(jobs)} jobs in {sum(len(groups) for groups, _ in plans)} enqueue calls: "
        f"{sum(1 for p in jobs if p.payload['k'] and not p.payload.get('x'))} with planned "
        f"failures, {sum(1 for p in jobs if p.payload.get('x'))} raising, "
        f"{sum(1 for p in jobs if p.delay_ms)} scheduled ahead, "
        f"{sum(1 for p in jobs if p.payload.get('ic'))} ignoring cancels"
    ))
    sim.set_network(NetConfig(latency_ms=w.latency_ms, reorder_ms=w.reorder_ms))
    await sim.add_node("n1", shards=w.shards, lease_ms=w.lease_ms,
                       write_latency_s=w.write_latency_ms / 1000)
    handler = make_handler(sim)
    for i in range(w.workers):
        await sim.add_worker(f"w{i}", f"tg{i % w.task_groups}", handler,
                             concurrency=w.concurrency, lease_wait_ms=w.lease_wait_ms,
                             refresh_handler=w.refresh_handler)
    if w.task_groups > w.workers:
        for g in range(w.workers, w.task_groups):
            await sim.add_worker(f"w{g}", f"tg{g}", handler, concurrency=w.concurrency,
                                 lease_wait_ms=w.lease_wait_ms, refresh_handler=w.refresh_handler)
    done = [0]
    for i, (groups, gaps) in enumerate(plans):
        sim.spawn(produce, sim, sim.add_host(f"p{i}"), groups, gaps, done)
    sim.start_faults(faults)
    if w.operator_every_s:
        sim.spawn_fault_phase(operate, sim, sim.add_host("op"), sim.random.stream("operator"),
                              w.operator_every_s, w.operator_weights)
    await trio.sleep(w.fault_s)
    await sim.heal()
    await sim.settle(w.bound_s, lambda: done[0] == len(plans))


def concurrency_mix(maxes: list[int], limited_prob: float, *, max_per_job: int = 1,
                    prefix: str = "q", any_order: bool = False) -> Any:
    """A ``Workload.limits`` drawing 1..``max_per_job`` of the queues ``{prefix}{i}`` (each with
    its fixed max ``maxes[i]``) for ``limited_prob`` of the jobs, in queue order, or with
    ``any_order`` in a random order (the shard acquires them in one canonical order whatever
    the order given, so no two jobs can each hold a slot the other waits for)."""

    def draw(rng: random.Random, tenant: str) -> tuple[Limit, ...]:
        if rng.random() >= limited_prob:
            return ()
        k = rng.randint(1, min(max_per_job, len(maxes)))
        picked = sorted(rng.sample(range(len(maxes)), k))
        if any_order:
            rng.shuffle(picked)
        return tuple(ConcurrencyLimit(f"{prefix}{i}", maxes[i]) for i in picked)

    return draw
