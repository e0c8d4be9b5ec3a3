"""Workload.draw: every drawn value within the input limits, edges reached, overrides obeyed."""

from __future__ import annotations

import random

import pytest

from silo.client.types import pack
from silo.model import (
    ConcurrencyLimit,
    FloatingConcurrencyLimit,
    Limit,
    RateLimit,
    RetryPolicy,
)
from silo.shard.validation import ShardLimits, check_job_limits, check_retry
from sim.workload import (
    GATED_EDGES,
    KNOBS,
    TYPICAL_PROB,
    JobPlan,
    Span,
    Workload,
    _model_has_timeouts,
    gated,
    plan_jobs,
    work_bound_s,
)

LIMITS = ShardLimits()
SEEDS = range(120)


def _draw(seed: int, **overrides: object) -> tuple[Workload, dict[str, object]]:
    params: dict[str, object] = {}

    def param(name: str, value: object) -> object:
        params[name] = value
        return value

    return Workload.draw(random.Random(seed), param, **overrides), params


def test_every_drawn_job_is_within_the_input_limits() -> None:
    for seed in SEEDS:
        w, _ = _draw(seed)
        rng = random.Random(seed)
        for groups, _gaps in plan_jobs(rng, w):
            for group in groups:
                assert len(group) <= LIMITS.max_jobs_per_batch
                for p in group:
                    payload = b"" if p.payload is None else pack(p.payload)
                    assert len(payload) <= LIMITS.payload_max_bytes
                    assert 0 < len(p.job_id) <= LIMITS.job_id_max_chars
                    assert 0 < len(p.tenant) <= LIMITS.tenant_max_chars
                    assert 0 < len(p.task_group) <= LIMITS.task_group_max_chars
                    assert LIMITS.priority_min <= p.priority <= LIMITS.priority_max
                    check_retry(LIMITS, p.retry)
                    check_job_limits(LIMITS, p.limits)
                    assert len(p.limits) <= 4


def test_edges_are_reached_and_most_knobs_stay_typical() -> None:
    edged = {name: 0 for name in KNOBS}
    for seed in SEEDS:
        w, params = _draw(seed)
        assert list(w.edges_taken) == params["edges_taken"]
        for name in w.edges_taken:
            edged[name] += 1
    off = {"hung_prob"} if gated("hung_handler") else set()
    if not _model_has_timeouts():
        off.add("timeout_mode")
    for name, n in edged.items():
        if name in off:
            assert n == 0, name
            continue
        assert n > 0, f"knob {name} never took an edge value in {len(SEEDS)} seeds"
        assert n < len(SEEDS) * (1 - TYPICAL_PROB) * 1.6, (name, n)
    per_run = sum(edged.values()) / len(SEEDS)
    assert 0.2 * len(KNOBS) < per_run < 0.4 * len(KNOBS)  # a few extreme knobs per run


def test_payloads_reach_their_limit_and_empty() -> None:
    sizes: list[int] = []
    empty = 0
    for seed in SEEDS:
        w, _ = _draw(seed, payload_mode="mixed", jobs=40)
        for groups, _ in plan_jobs(random.Random(seed), w):
            for p in (p for g in groups for p in g):
                if p.payload is None:
                    empty += 1
                else:
                    sizes.append(len(pack(p.payload)))
    assert max(sizes) == LIMITS.payload_max_bytes
    assert empty > 0


def test_overrides_fix_a_knob_or_its_range() -> None:
    for seed in range(30):
        w, params = _draw(seed, shards=3, jobs=Span(5, 7), bound_s=99.0)
        assert w.shards == 3 and params["shards"] == 3
        assert 5 <= w.jobs <= 7
        assert w.bound_s == 99.0


def test_no_edges_when_asked() -> None:
    for seed in range(30):
        w, params = _draw(seed, edges=False)
        assert w.edges_taken == ()
        assert params["retry_mode"] == "narrow" and params["names"] == "plain"
        assert not (w.zombie or w.vanisher or w.slow_worker or w.retrying_client)


def test_gated_edges_stay_off_by_default() -> None:
    assert GATED_EDGES
    for seed in SEEDS:
        _, params = _draw(seed)
        if gated("hung_handler"):
            assert params["hung_prob"] == 0.0


def test_gated_edges_switch_on_with_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SILO_SIM_ALL_EDGES", "1")
    assert any(_draw(seed)[1]["hung_prob"] for seed in SEEDS)


def test_odd_names_are_unique_and_maximal() -> None:
    w, _ = _draw(0, names="max", tenants=5, task_groups=3)
    assert len(set(w.tenant_names)) == 5
    assert all(len(t) == LIMITS.tenant_max_chars for t in w.tenant_names)
    assert all(len(g) == LIMITS.task_group_max_chars for g in w.task_group_names)
    assert any(ord(c) > 0xFFFF for t in w.tenant_names for c in t) or any(
        not c.isascii() for t in w.tenant_names for c in t)


def _job(n: int, *, hung_ms: int = 0, limits: tuple[Limit, ...] = (), tenant: str = "t",
         failures: int = 0) -> JobPlan:
    payload: dict[str, object] = {"k": failures, "d": 10}
    if hung_ms:
        payload["h"] = 1
    return JobPlan(tenant, f"j{n}", "g", 0, 0, RetryPolicy(retry_count=1), payload,
                   limits=limits, timeout_ms=hung_ms)


def test_work_bound_counts_hung_handlers_until_their_timeout() -> None:
    w = Workload(workers=4, concurrency=4)
    plain = work_bound_s(w, [_job(0)])
    hung = work_bound_s(w, [_job(0, hung_ms=20_000)])
    assert hung >= plain + 2 * 20.0


def test_work_bound_serialises_the_jobs_of_a_queue_by_its_max() -> None:
    """grant_race seeds 3965647 and 817401840: every job on one queue of max 1, a third of them
    hung for up to 20 s; they run one after another whatever the number of worker slots."""
    w = Workload(workers=8, concurrency=4)
    q1 = (ConcurrencyLimit("q", 1),)
    jobs = [_job(n, hung_ms=10_000, limits=q1) for n in range(20)]
    assert work_bound_s(w, jobs) >= 2 * 20 * 10.0
    q2 = (ConcurrencyLimit("q", 2),)
    half = work_bound_s(w, [_job(n, hung_ms=10_000, limits=q2) for n in range(20)])
    assert 2 * 10 * 10.0 <= half < work_bound_s(w, jobs)
    # Per tenant: each tenant's queue of max 1 runs its own jobs in parallel with the other's.
    split = [_job(n, hung_ms=10_000, limits=q1, tenant=f"t{n % 2}") for n in range(20)]
    assert work_bound_s(w, split) == pytest.approx(half)
    # A floating queue counts as max 1 (a refresh may set it that low).
    floating = (FloatingConcurrencyLimit("f", 3, 1000),)
    assert work_bound_s(w, [_job(n, hung_ms=10_000, limits=floating) for n in range(20)]) == (
        pytest.approx(work_bound_s(w, jobs)))


def test_work_bound_spaces_every_attempt_of_a_rate_bucket_by_its_window() -> None:
    """split seed 200998: a poison job of 1,000 attempts on a bucket of 1 token per 1,441 ms
    takes 1,441 s whatever its slot time; tokens are per (tenant, name, key), and the slowest
    window any job gives for a bucket counts."""
    w = Workload(workers=4, concurrency=4)
    slow = (RateLimit("api", "shared", 1, 1441),)
    poison = _job(0, limits=slow, failures=999)
    assert work_bound_s(w, [poison]) >= 2 * 1000 * 1.441
    fast = (RateLimit("api", "shared", 10, 1441),)
    assert work_bound_s(w, [_job(0, limits=fast, failures=999)]) < work_bound_s(w, [poison])
    # Two jobs on one bucket share its tokens; in two tenants they have a bucket each.
    shared = work_bound_s(w, [_job(n, limits=slow, failures=499) for n in range(2)])
    assert shared >= 2 * 1000 * 1.441
    apart = work_bound_s(w, [_job(n, limits=slow, failures=499, tenant=f"t{n}") for n in range(2)])
    assert apart == pytest.approx(shared / 2)
    mixed = [_job(0, limits=fast, failures=499), _job(1, limits=slow, failures=499)]
    assert work_bound_s(w, mixed) == pytest.approx(shared)
