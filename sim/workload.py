"""Building blocks scenarios share: the workload drawer, a job mix, producers, workers' handler,
an operator, and the standard fault-phase / heal / liveness run.

:meth:`Workload.draw` draws every knob of :data:`KNOBS` from the seed, most at a typical value and
a few at an edge (FoundationDB-style), up to the input limits of
:class:`silo.shard.validation.ShardLimits`: retry policies over their whole valid range, payloads
and results from empty to their limit, 1-4 shared limits per job, start times from the past to years
ahead, ids and tenants of maximal length in odd Unicode, many tenants and task groups, and the
dishonest actors of :mod:`sim.actors`. A scenario is ``Workload.draw(rng, sim.param, **its
overrides)`` plus a fault plan.

Each job's payload is its own plan (how long its handler runs, how many attempts fail and how,
whether it ignores a cancel), drawn from the scenario's rng, so what a handler does depends only
on the seed, whichever worker runs it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import trio

from silo.client.types import Cancel, Fail, pack
from silo.client.worker import TaskContext
from silo.errors import Code, SiloError
from silo.model import ConcurrencyLimit, Limit, NewJob, RateLimit, RetryPolicy
from silo.shard.validation import ShardLimits
from sim.hosts import ClientHost
from sim.network import NetConfig
from sim.simulator import FaultPlan, Simulator

TYPICAL_PROB = 0.7
"""Each knob of a drawn workload is typical with this probability, else an edge value
(FoundationDB-style: most runs turn a few knobs to an extreme)."""

GATED_EDGES: frozenset[str] = frozenset({"hung_handler"})
"""Edges that wedge code without a fix for them: hung handlers hold their leases forever unless
jobs can carry a timeout (so they are drawn, each with a timeout, once the model and client take
``timeout_ms``). A gated edge is drawn (so seeds stay comparable) but replaced by a typical
value unless ``SILO_SIM_ALL_EDGES=1`` is set. The backoff overflow and the limit-order deadlock
were gated here until their fixes landed."""

DAY_MS = 24 * 3600 * 1000
YEAR_MS = 365 * DAY_MS
LIMITS = ShardLimits()

ODD_CHARS = (
    "é", "ß", "\u0301", "\u200b", "\u202e", "\ufeff", "🙂", "𝔘", "漢", "/", ":", " ", "\t",
    "'", '"', "\\", "%", "\x7f", "\x00", "\n", "#", "*",
)
"""Characters of edge-case names: combining marks, zero-width and bidi controls, astral plane,
separators a key encoder might use, controls and NUL."""


def gated(edge: str) -> bool:
    """True when ``edge`` is switched off (see :data:`GATED_EDGES`). Hung handlers are drawn
    once jobs can carry a timeout."""
    if edge == "hung_handler" and _model_has_timeouts():
        return False
    return edge in GATED_EDGES and os.environ.get("SILO_SIM_ALL_EDGES") != "1"


@dataclass(frozen=True)
class Span:
    """An override for :meth:`Workload.draw`: draw the knob uniformly from ``lo..hi`` (integers
    when both ends are ints), never an edge."""

    lo: float
    hi: float

    def draw(self, rng: random.Random) -> Any:
        if isinstance(self.lo, int) and isinstance(self.hi, int):
            return rng.randint(self.lo, self.hi)
        return round(rng.uniform(self.lo, self.hi), 3)


def odd_name(rng: random.Random, index: int, max_chars: int) -> str:
    """A unique name of exactly ``max_chars`` characters full of odd Unicode."""
    head = f"{index:03d}"
    return head + "".join(rng.choice(ODD_CHARS) for _ in range(max_chars - len(head)))


def _choice(*values: Any) -> Callable[[random.Random], Any]:
    return lambda rng: rng.choice(values)


def _span(lo: float, hi: float) -> Callable[[random.Random], Any]:
    return Span(lo, hi).draw


KNOBS: dict[str, tuple[Callable[[random.Random], Any], Callable[[random.Random], Any] | None]] = {
    # name: (typical draw, edge draw or None). Order matters (it is the order of the draws).
    "shards": (_span(1, 4), _choice(1, 8)),
    "lease_ms": (_span(1000, 5000), _choice(500, 12_000)),
    "write_latency_ms": (_span(0.2, 3.0), _choice(0.0, 20.0)),
    "producers": (_span(1, 4), _choice(1, 8)),
    "jobs": (_span(20, 80), _choice(1, 160)),
    "batch_prob": (_span(0.0, 0.4), _choice(1.0)),
    "batch_max": (lambda rng: 6, _choice(50, 200)),
    "spread_s": (_span(2.0, 15.0), _choice(0.0, 40.0)),
    "tenants": (_span(1, 5), _choice(1, 40)),
    "task_groups": (_span(1, 2), _choice(1, 6)),
    "workers": (_span(1, 4), _choice(1, 8)),
    "concurrency": (_span(1, 8), _choice(1, 32)),
    # Not 0: a worker with lease_wait_ms=0 polls in a busy loop (one LeaseTasks per round
    # trip while idle), which makes a run take minutes of wall time.
    "lease_wait_ms": (lambda rng: 2000, _choice(50, 30_000)),
    "priority": (lambda rng: (0, 99), _choice((0, 0), (99, 99), (0, 1), (98, 99))),
    "max_duration_ms": (_span(100, 2000), _choice(0, 8000)),
    "future_prob": (_span(0.0, 0.3), _choice(0.0, 0.6)),
    "start_mode": (lambda rng: "near", _choice("past", "far", "mixed")),
    "retry_mode": (lambda rng: "narrow", _choice("wide", "poison")),
    "fail_prob": (_span(0.0, 0.2), _choice(0.0, 0.7)),
    "payload_mode": (lambda rng: "small", _choice("empty", "max", "mixed")),
    "result_mode": (lambda rng: "small", _choice("empty", "max")),
    "limit_mode": (lambda rng: "none", _choice("ordered", "any_order")),
    "names": (lambda rng: "plain", _choice("odd", "max")),
    "timeout_mode": (lambda rng: "none", _choice("short", "long")),
    "zombie": (lambda rng: False, _choice(True)),
    "slow_worker": (lambda rng: False, _choice(True)),
    "vanisher": (lambda rng: False, _choice(True)),
    "retrying_client": (lambda rng: False, _choice(True)),
    "hung_prob": (lambda rng: 0.0, _choice(0.05, 0.3)),
    # Tasks a worker leases beyond its free slots (last: adding it left the draws above alone).
    "prefetch": (_span(0, 8), _choice(0, 64, 1000)),
}
"""Every drawn knob of a workload (see :meth:`Workload.draw`)."""


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
    batch_max: int = 6
    """Most jobs in one EnqueueBatch."""
    spread_s: float = 10.0
    """Producers spread their enqueues over this many simulated seconds."""
    tenants: int = 3
    task_groups: int = 1
    workers: int = 2
    concurrency: int = 4
    prefetch: int | None = None
    """Each worker's ``prefetch`` (None: the worker's default, its concurrency)."""
    lease_wait_ms: int = 2000
    priority: tuple[int, int] = (0, 99)
    duration_ms: tuple[int, int] = (0, 1500)
    future_prob: float = 0.1
    future_ms: tuple[int, int] = (500, 5000)
    start_mode: str = "near"
    """"near": scheduled jobs start ``future_ms`` ahead; "past": at a time long gone; "far":
    days to years ahead (expedited after healing so that liveness holds); "mixed": any."""
    retry_count: tuple[int, int] = (0, 2)
    backoff_ms: tuple[int, int] = (50, 500)
    retry_mode: str = "narrow"
    """"narrow": ``retry_count``/``backoff_ms`` with factor 2; "wide": the whole valid range
    (0..retry_count_max retries, zero to backoff_max_ms intervals, factor 1..100); "poison":
    as wide, plus a job with 1000 retries, factor 100, zero backoff that always fails."""
    fail_prob: float = 0.1
    error_prob: float = 0.02
    ignore_cancel_prob: float = 0.1
    hung_prob: float = 0.0
    """Share of jobs whose handler hangs (ignores cancels, sleeps ``HANG_S``) on its first
    attempt."""
    payload_mode: str = "small"
    """"small": plan plus 0-64 padding bytes; "empty": some jobs have an empty payload;
    "max": some jobs' payloads are exactly payload_max_bytes; "mixed": both."""
    result_mode: str = "small"
    """"empty", "small", or "max": some results (and error data) exactly at their limit."""
    limit_mode: str = "none"
    """Shared limits drawn by the workload itself when ``limits`` is None: "ordered" (1-4 of a
    few shared queues, in one global order), "any_order" (the same, in random orders)."""
    names: str = "plain"
    """"plain" ids, "odd" (odd Unicode), "max" (odd Unicode of the maximal length)."""
    timeout_mode: str = "none"
    """Per-job attempt timeouts (when the model has them): "none", "short", "long"."""
    zombie: bool = False
    """A zombie worker heartbeats and reports leases it does not own (sim.actors)."""
    slow_worker: bool = False
    """One worker heartbeats too rarely: its handlers outlive their leases."""
    vanisher: bool = False
    """A worker that leases tasks and vanishes before its first heartbeat."""
    retrying_client: bool = False
    """Producers retry enqueues and batches after ambiguous failures (same ids)."""
    workers_after_s: float = 0.0
    """Workers start this long after the producers: a backlog waits for them, so their first
    lease calls could take every free slot's worth of tasks at once."""
    operator_every_s: float | None = None
    operator_weights: dict[str, float] = field(
        default_factory=lambda: {"cancel": 4, "restart": 2, "expedite": 3, "delete": 1}
    )
    fault_s: float = 15.0
    bound_s: float = 120.0
    limits: Any = None
    """``limits(rng, tenant) -> tuple[Limit, ...]``: the limits a new job carries (None: as
    ``limit_mode`` says). Called once per job, after the job's other draws."""
    refresh_handler: Any = None
    """The workers' refresh handler for floating limits (None: none)."""
    tenant_names: list[str] = field(default_factory=list)
    task_group_names: list[str] = field(default_factory=list)
    edges_taken: tuple[str, ...] = ()
    """The knobs :meth:`draw` set to an edge value."""
    max_payloads_left: int = 40
    """How many more jobs may get a payload of exactly payload_max_bytes (memory bound; 40 is
    more than a 16 MiB lease reply holds)."""

    @classmethod
    def draw(cls, rng: random.Random, param: Callable[[str, Any], Any], *, edges: bool = True,
             **overrides: Any) -> Workload:
        """A workload with every knob of :data:`KNOBS` drawn from ``rng`` (each typical with
        :data:`TYPICAL_PROB`, else an edge, unless ``edges`` is False) and recorded through
        ``param``. An override fixes a knob (a plain value) or its range (a :class:`Span`; no
        edges); any other :class:`Workload` field can be overridden too."""
        values: dict[str, Any] = {}
        edged: list[str] = []
        for name, (typical, edge) in KNOBS.items():
            coin = rng.random()
            if name in overrides:
                o = overrides.pop(name)
                value = o.draw(rng) if isinstance(o, Span) else o
            elif edges and edge is not None and coin >= TYPICAL_PROB:
                value = edge(rng)
                edged.append(name)
            else:
                value = typical(rng)
            values[name] = value
        if values["hung_prob"] and gated("hung_handler"):
            values["hung_prob"] = 0.0
        if not _model_has_timeouts():
            values["timeout_mode"] = "none"
        if values["hung_prob"] == 0.0 and "hung_prob" in edged:
            edged.remove("hung_prob")
        if values["timeout_mode"] == "none" and "timeout_mode" in edged:
            edged.remove("timeout_mode")
        for name, value in values.items():
            param(name, value)
        values["edges_taken"] = tuple(param("edges_taken", edged))
        values["duration_ms"] = (0, values.pop("max_duration_ms"))
        for name, o in sorted(overrides.items()):
            values[name] = param(name, o.draw(rng)) if isinstance(o, Span) else o
        w = cls(**values)
        w.name_everything(rng)
        if w.limits is None and w.limit_mode != "none":
            w.limits = shared_limits(rng, w.limit_mode == "any_order")
        return w

    def name_everything(self, rng: random.Random) -> None:
        """Tenant and task-group names, as ``names`` says (plain names otherwise)."""
        if self.names == "plain":
            self.tenant_names = [f"tenant-{i}" for i in range(self.tenants)]
            self.task_group_names = [f"tg{i}" for i in range(self.task_groups)]
            return
        tmax = LIMITS.tenant_max_chars if self.names == "max" else 12
        gmax = LIMITS.task_group_max_chars if self.names == "max" else 12
        self.tenant_names = [odd_name(rng, i, tmax) for i in range(self.tenants)]
        self.task_group_names = [odd_name(rng, i, gmax) for i in range(self.task_groups)]

    def tenant(self, i: int) -> str:
        if not self.tenant_names:
            self.tenant_names = [f"tenant-{k}" for k in range(self.tenants)]
        return self.tenant_names[i]

    def task_group(self, i: int) -> str:
        if not self.task_group_names:
            self.task_group_names = [f"tg{k}" for k in range(self.task_groups)]
        return self.task_group_names[i]


def _model_has_timeouts() -> bool:
    """Per-job timeouts are drawn once both the model and the client take them."""
    import inspect

    from silo.client.client import SiloClient

    return "timeout_ms" in {f.name for f in fields(NewJob)} and (
        "timeout_ms" in inspect.signature(SiloClient.enqueue).parameters)


HANG_S = 3600.0
"""How long a hung handler sleeps (ignoring cancels; only its worker can stop it)."""
MANY_FAILURES = 150
"""Most planned failures of one job with zero backoff (the poison job aside): enough attempts to
pass every small bound, few enough for a run to stay short under message loss."""
SPREAD_MAX_FACTOR = 3.0
"""A producer's gaps add up to at most this many times ``spread_s``."""
FAR_AFTER_MS = 60_000
"""A job that may wait longer than this (start time or backoff) is expedited after healing."""


@dataclass
class JobPlan:
    tenant: str
    job_id: str
    task_group: str
    priority: int
    delay_ms: int
    retry: RetryPolicy
    payload: dict[str, Any] | None
    limits: tuple[Limit, ...] = ()
    far: bool = False
    """May wait past the liveness bound (far start, huge backoff): expedited after healing."""
    timeout_ms: int = 0

    def start_at(self, now_ms: int) -> int | None:
        if not self.delay_ms:
            return None
        return max(1, now_ms + self.delay_ms)

    def new_job(self, start_at_ms: int | None) -> NewJob:
        extra: dict[str, Any] = {"timeout_ms": self.timeout_ms} if self.timeout_ms else {}
        return NewJob(
            task_group=self.task_group, payload=b"" if self.payload is None else pack(
                self.payload), tenant=self.tenant, job_id=self.job_id, priority=self.priority,
            start_at_ms=start_at_ms or 0, retry=self.retry, limits=self.limits, **extra,
        )


def _wide_retry(rng: random.Random) -> RetryPolicy:
    cap = LIMITS.backoff_max_ms
    initial = rng.choice([0, rng.randint(1, 1000), rng.randint(1, cap), cap])
    return RetryPolicy(
        retry_count=rng.choice([0, 1, rng.randint(0, LIMITS.retry_count_max),
                                LIMITS.retry_count_max]),
        initial_backoff_ms=initial,
        max_backoff_ms=rng.choice([0, initial, rng.randint(0, cap), cap]),
        backoff_factor=rng.choice([1.0, round(rng.uniform(1.0, 100.0), 3), 100.0]),
        randomize=rng.random() < 0.5,
    )


def _fill(plan: dict[str, Any], limit: int) -> None:
    """Pad ``plan`` so that its packed size is exactly ``limit`` bytes."""
    plan["p"] = b""
    for _ in range(3):
        plan["p"] = b"\x00" * max(0, len(plan["p"]) + limit - len(pack(plan)))
    assert len(pack(plan)) <= limit


def shared_limits(rng: random.Random, any_order: bool) -> Any:
    """A ``Workload.limits`` drawing 1-4 of a few shared queues (concurrency max 1-3, one rate
    bucket), for 60-100% of the jobs, in one global order or in random orders."""
    nq = rng.randint(2, 4)
    maxes = [rng.randint(1, 3) for _ in range(nq)]
    rate = RateLimit("api", "shared", rng.randint(1, 20), rng.randint(100, 2000))
    share = round(rng.uniform(0.6, 1.0), 3)

    def draw(r: random.Random, tenant: str) -> tuple[Limit, ...]:
        if r.random() >= share:
            return ()
        pool: list[Limit] = [ConcurrencyLimit(f"q{i}", maxes[i]) for i in range(nq)]
        if r.random() < 0.3:
            pool.append(rate)
        picked = sorted(r.sample(range(len(pool)), r.randint(1, min(4, len(pool)))))
        if any_order:
            r.shuffle(picked)
        return tuple(pool[i] for i in picked)

    return draw


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
    ti = rng.randrange(w.tenants)
    tenant = w.tenant(ti) if w.tenant_names else f"tenant-{ti}"
    if durations and tenant in durations:
        payload["d"] = rng.randint(*durations[tenant])
    job_id = f"job-{n:04d}-{rng.getrandbits(32):08x}"
    plan = JobPlan(
        tenant=tenant,
        job_id=job_id,
        task_group=w.task_group(rng.randrange(w.task_groups)),
        priority=rng.randint(*w.priority),
        delay_ms=delay,
        retry=retry,
        payload=payload,
        limits=tuple(w.limits(rng, tenant)) if w.limits is not None else (),
    )
    _widen(rng, w, n, plan)
    return plan


def _widen(rng: random.Random, w: Workload, n: int, plan: JobPlan) -> None:
    """The whole-input-space draws for one job, as the workload's knobs say."""
    payload = plan.payload
    assert payload is not None
    if w.retry_mode in ("wide", "poison"):
        plan.retry = _wide_retry(rng)
        worst = max(plan.retry.initial_backoff_ms, plan.retry.max_backoff_ms)
        if payload["k"]:
            # Planned failures stay few unless retries are free, so a run stays bounded.
            cap = min(MANY_FAILURES, plan.retry.retry_count + 1) if worst == 0 else min(
                3, plan.retry.retry_count + 1)
            payload["k"] = rng.randint(1, cap)
            if payload["k"] > 3:
                payload["d"] = 0  # many attempts: each one instant
        plan.far = worst > FAR_AFTER_MS
        if w.retry_mode == "poison" and n == 0:
            plan.retry = RetryPolicy(LIMITS.retry_count_max, 0, 0, 100.0)
            payload["k"] = LIMITS.retry_count_max + 1
            payload["d"] = 0
    if plan.delay_ms and w.start_mode != "near":
        mode = w.start_mode if w.start_mode != "mixed" else rng.choice(["near", "past", "far"])
        if mode == "past":
            plan.delay_ms = -rng.choice([1, rng.randint(1, 10 * YEAR_MS)])
        elif mode == "far":
            plan.delay_ms = rng.choice([DAY_MS, rng.randint(DAY_MS, 10 * YEAR_MS)])
            plan.far = True
    if w.names != "plain":
        width = LIMITS.job_id_max_chars if w.names == "max" else 24
        plan.job_id = odd_name(rng, n, width)
    if w.payload_mode != "small":
        mode = w.payload_mode if w.payload_mode != "mixed" else rng.choice(["empty", "max"])
        x = rng.random()
        if mode == "empty" and x < 0.3:
            plan.payload = None
        elif mode == "max" and x < (0.6 if w.payload_mode == "max" else 0.15) and (
                w.max_payloads_left > 0):
            w.max_payloads_left -= 1
            payload["p"] = b""  # filled to the limit last, once every other field is in
    else:
        payload["p"] = b"\x00" * rng.randint(0, 64)
    if w.result_mode != "small" and plan.payload is not None:
        payload["r"] = 0 if w.result_mode == "empty" or rng.random() < 0.7 else (
            LIMITS.result_max_bytes)
    if w.hung_prob and plan.payload is not None and rng.random() < w.hung_prob:
        payload["h"] = 1
        # Only a timeout frees a hung handler's slot and lease (heartbeats go on regardless).
        plan.timeout_ms = rng.randint(200, 20_000)
    if w.timeout_mode != "none":
        x = rng.random()
        if x < 0.5 and not plan.timeout_ms:
            plan.timeout_ms = rng.randint(1, 2000) if w.timeout_mode == "short" else (
                rng.randint(10_000, 600_000))
    if plan.timeout_ms and payload.get("d", 0) >= plan.timeout_ms:
        # Only the first attempt outruns its timeout: a job that timed out on every attempt
        # would need all of a wide retry budget (up to 1,000 attempts) to end.
        payload["t1"] = 1
    if plan.payload is not None and payload.get("p") == b"":
        _fill(payload, LIMITS.payload_max_bytes)


def _padded(value: dict[str, Any], limit: int) -> dict[str, Any]:
    _fill(value, limit)
    return value


def make_handler(sim: Simulator) -> Any:
    """The workers' handler: a trio function that follows the job's plan."""

    async def handler(ctx: TaskContext) -> Any:
        plan = ctx.payload or {}
        start = trio.current_time()
        if plan.get("h") and ctx.attempt == 1:
            sim.count("worker.hung_handler")
            await trio.sleep(HANG_S)  # ignores ctx.cancelled; only its worker can stop it
        duration = 0.0 if plan.get("t1") and ctx.attempt > 1 else plan.get("d", 0) / 1000
        with trio.move_on_after(duration):
            await ctx.cancelled.wait()
        if ctx.cancelled.is_set():
            sim.count("worker.saw_cancel")
            if not plan.get("ic"):
                raise Cancel()
            await trio.sleep(max(0.0, start + duration - trio.current_time()))
        big = plan.get("r")
        if ctx.attempt <= plan.get("k", 0):
            if plan.get("x"):
                raise RuntimeError(f"planned handler crash on attempt {ctx.attempt}")
            data: dict[str, Any] = {"attempt": ctx.attempt}
            raise Fail("PLANNED", _padded(data, LIMITS.error_data_max_bytes) if big else data)
        result: dict[str, Any] = {"job": ctx.job_id, "attempt": ctx.attempt}
        return _padded(result, big) if big else result

    return handler


AMBIGUOUS = frozenset({Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.INTERNAL})
"""Failures after which an enqueue may or may not have happened."""
ENQUEUE_TRIES = 12


async def _enqueue_group(client: Any, group: list[JobPlan], now: int) -> None:
    """Send ``group`` as of ``now`` (ms): every try of one group sends the same jobs, start
    times included, so a retry is recognised as the same request."""
    if len(group) == 1:
        p = group[0]
        extra: dict[str, Any] = {}
        if p.timeout_ms:
            extra["timeout_ms"] = p.timeout_ms
        await client.enqueue(
            p.task_group, p.payload, tenant=p.tenant, id=p.job_id, priority=p.priority,
            start_at_ms=p.start_at(now), retry=p.retry, limits=p.limits, **extra,
        )
    else:
        await client.enqueue_jobs([p.new_job(p.start_at(now)) for p in group])


async def produce(
    sim: Simulator, host: ClientHost, plans: list[list[JobPlan]], gaps: list[float],
    done: list[int], retrying: bool = False,
) -> None:
    """Enqueue each group (one Enqueue, or one EnqueueBatch per shard) after its gap. A
    ``retrying`` producer sends the same request again (same ids) after an ambiguous failure,
    up to :data:`ENQUEUE_TRIES` times, and counts ALREADY_EXISTS on a retry as its own."""
    client = host.client()
    try:
        for group, gap in zip(plans, gaps, strict=True):
            await trio.sleep(gap)
            ids = [p.job_id for p in group]
            tries = ENQUEUE_TRIES if retrying else 1
            acked = False
            now = host.clock.now_ms()
            for attempt in range(tries):
                try:
                    await _enqueue_group(client, group, now)
                    acked = True
                    break
                except SiloError as exc:
                    sim.trace.record(f"enqueue failed {ids} try {attempt + 1}: {exc}")
                    # A group over several shards is several calls, and the client stops at
                    # the first refusal: ALREADY_EXISTS then vouches for one call's jobs only,
                    # not for those of the calls never sent, so the group stays unknown.
                    if attempt and exc.code == Code.ALREADY_EXISTS and len(group) == 1:
                        sim.count("enqueue.retry_already_exists", len(group))
                        acked = True
                        break
                    if exc.code not in AMBIGUOUS or attempt + 1 == tries:
                        break
                    sim.count("enqueue.retried", len(group))
                    await trio.sleep(min(0.1 * 2 ** attempt, 3.0))
            if not acked:
                sim.count("enqueue.unknown", len(group))
                continue
            sim.count("enqueue.acked", len(group))
            for p in group:
                sim.trace.record(f"ack enqueue {p.tenant!r}/{p.job_id!r}")
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
            sim.trace.record(f"operator {action} {tenant!r}/{job_id!r}: {exc.code.name}")
            sim.count(f"operator.{action}.refused")
        else:
            sim.trace.record(f"operator {action} {tenant!r}/{job_id!r}: OK")
            sim.count(f"operator.{action}.ok")


async def expedite_far(sim: Simulator, host: ClientHost, far: list[tuple[str, str]]) -> None:
    """After healing: the operator expedites every job that may wait past the liveness bound
    (far-future start, huge backoff) until it is terminal, so liveness still holds."""
    client = host.client()
    while True:
        for tenant, job_id in far:
            j = sim.checker.jobs.get((tenant, job_id))
            if j is None or j.deleted or j.status in ("SUCCEEDED", "FAILED", "CANCELLED"):
                continue
            try:
                await client.job(job_id, tenant).expedite()
                sim.count("operator.expedite_far.ok")
            except SiloError:
                sim.count("operator.expedite_far.refused")
        await trio.sleep(1.0)


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
            size = rng.randint(2, max(2, w.batch_max)) if rng.random() < w.batch_prob else 1
            groups.append(jobs[i:i + size])
            i += size
        mean_gap = w.spread_s / max(1, len(groups))
        gaps = [rng.expovariate(1.0 / mean_gap) if mean_gap > 0 else 0.0 for _ in groups]
        total = sum(gaps)
        if total > SPREAD_MAX_FACTOR * w.spread_s:
            # A producer with few calls can draw one huge gap and still be enqueueing when the
            # liveness bound runs out (floating seed 139): its calls end within the bound.
            gaps = [g * SPREAD_MAX_FACTOR * w.spread_s / total for g in gaps]
        out.append((groups, gaps))
    return out


async def run_workload(
    sim: Simulator, rng: random.Random, w: Workload, faults: FaultPlan,
    durations: dict[str, tuple[int, int]] | None = None, *,
    start_nodes: Callable[[], Any] | None = None,
    after_heal: Callable[[], Any] | None = None,
    nodes_done: Callable[[], bool] | None = None,
) -> None:
    """The standard run: one node, workers, producers (and an operator, and the actors the
    workload asks for), a fault phase of ``w.fault_s`` seconds, healing, and a liveness phase
    bounded by ``w.bound_s``. ``durations`` overrides the handler duration range per tenant.

    A cluster run (:mod:`sim.cluster_workload`) passes ``start_nodes`` (an async function that
    builds the cluster instead of the one node), ``after_heal`` (awaited right after healing)
    and ``nodes_done`` (what the liveness phase also waits for, e.g. every shard served)."""
    from sim import actors

    plans = plan_jobs(rng, w, durations)
    jobs = [p for groups, _ in plans for g in groups for p in g]
    sim.param("job_plan", (
        f"{len(jobs)} jobs in {sum(len(groups) for groups, _ in plans)} enqueue calls: "
        f"{sum(1 for p in jobs if p.payload and p.payload['k'] and not p.payload.get('x'))} "
        f"with planned failures, {sum(1 for p in jobs if p.payload and p.payload.get('x'))} "
        f"raising, {sum(1 for p in jobs if p.delay_ms)} scheduled, "
        f"{sum(1 for p in jobs if p.far)} far, "
        f"{sum(1 for p in jobs if p.payload and p.payload.get('ic'))} ignoring cancels, "
        f"{sum(1 for p in jobs if p.payload and p.payload.get('h'))} hanging"
    ))
    sim.set_network(NetConfig(latency_ms=w.latency_ms, reorder_ms=w.reorder_ms))
    if start_nodes is None:
        await sim.add_node("n1", shards=w.shards, lease_ms=w.lease_ms,
                           write_latency_s=w.write_latency_ms / 1000)
    else:
        await start_nodes()
    handler = make_handler(sim)

    async def add_workers(after_s: float) -> None:
        await trio.sleep(after_s)
        for i in range(max(w.workers, w.task_groups)):
            await sim.add_worker(
                f"w{i}", w.task_group(i % w.task_groups), handler, concurrency=w.concurrency,
                prefetch=w.prefetch, lease_wait_ms=w.lease_wait_ms,
                refresh_handler=w.refresh_handler,
            )
        if w.slow_worker:  # besides the honest ones, which finish what it lets lapse
            await sim.add_worker("slow", w.task_group(0), handler, concurrency=w.concurrency,
                                 prefetch=w.prefetch, lease_wait_ms=w.lease_wait_ms,
                                 refresh_handler=w.refresh_handler, heartbeat_fraction=1.5)

    if w.workers_after_s:
        sim.spawn(add_workers, w.workers_after_s)
    else:
        await add_workers(0.0)
    done = [0]
    for i, (groups, gaps) in enumerate(plans):
        sim.spawn(produce, sim, sim.add_host(f"p{i}"), groups, gaps, done, w.retrying_client)
    sim.start_faults(faults)
    if w.operator_every_s:
        sim.spawn_fault_phase(operate, sim, sim.add_host("op"), sim.random.stream("operator"),
                              w.operator_every_s, w.operator_weights)
    actors.start_actors(sim, w)
    await trio.sleep(w.fault_s)
    await sim.heal()
    if after_heal is not None:
        await after_heal()
    far = sorted({(p.tenant, p.job_id) for p in jobs if p.far})
    if far:
        sim.spawn(expedite_far, sim, sim.add_host("op-far"), far)
    await sim.settle(w.bound_s + work_bound_s(w, jobs), lambda: done[0] == len(plans) and (
        nodes_done is None or nodes_done()))


def work_bound_s(w: Workload, jobs: list[JobPlan]) -> float:
    """Extra liveness time for a run's own work: twice the slot time of every planned attempt
    (its handler time plus 0.5 s of RPCs, which message loss stretches; a hung first attempt
    holds its slot until its timeout) spread over all worker slots, or over the slots of the
    busiest concurrency queue (whose jobs run at most its max at a time, one after another for
    a max of 1), or of the longest job's attempts one after another, whichever is longest; plus
    lease expiries the actors cause."""
    chains = [job_slot_s(p) for p in jobs]
    slots = max(1, max(w.workers, w.task_groups) * w.concurrency)
    per_task_group = max(1, w.task_groups) if w.task_groups > w.workers else 1
    extra = 2 * max(
        sum(chains) * per_task_group / slots, max(chains, default=0.0),
        max(queue_work_s(jobs, chains).values(), default=0.0),
    )
    if w.zombie or w.vanisher or w.slow_worker:
        extra += 4 * (w.lease_ms / 1000 + 5.0)
    return round(extra, 3)


def job_slot_s(p: JobPlan) -> float:
    """How long a job's planned attempts hold a worker slot (and their concurrency slots), one
    after another: each attempt's handler time plus 0.5 s of RPCs, and a hung first attempt its
    whole timeout (only the worker's timeout ends it)."""
    plan = p.payload or {}
    s = planned_attempts(p) * (plan.get("d", 0) / 1000 + 0.5)
    if plan.get("h"):
        s += p.timeout_ms / 1000 + 0.5
    return s


def planned_attempts(p: JobPlan) -> int:
    """How many attempts a job's plan runs: its planned failures and the last one."""
    return (p.payload or {}).get("k", 0) + 1


def queue_work_s(jobs: list[JobPlan], chains: list[float]) -> dict[tuple[str, ...], float]:
    """Per concurrency queue ``(tenant, key)``: the slot time of the jobs holding it divided by
    its max (the smallest any of them gives; a floating queue counts as max 1, the least a
    refresh may set it to), i.e. how long those jobs take at best when only the queue limits
    them. Per rate bucket ``(tenant, name, key)``: every planned attempt of the jobs naming it
    takes one token, so they take at least their attempts times the slowest window a job gives
    (``per_ms / limit``)."""
    work: dict[tuple[str, ...], float] = {}
    least: dict[tuple[str, ...], int] = {}
    tokens: dict[tuple[str, ...], int] = {}
    token_s: dict[tuple[str, ...], float] = {}
    for p, s in zip(jobs, chains, strict=True):
        for limit in p.limits:
            if isinstance(limit, RateLimit):
                b = (p.tenant, limit.name, limit.key)
                tokens[b] = tokens.get(b, 0) + planned_attempts(p)
                token_s[b] = max(token_s.get(b, 0.0), limit.per_ms / 1000 / max(1, limit.limit))
                continue
            q = (p.tenant, limit.key)
            m = limit.max_concurrency if isinstance(limit, ConcurrencyLimit) else 1
            least[q] = max(1, min(least.get(q, m), m))
            work[q] = work.get(q, 0.0) + s
    out = {q: work[q] / least[q] for q in work}
    out.update({b: tokens[b] * token_s[b] for b in tokens})
    return out


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
