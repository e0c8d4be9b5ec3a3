"""Running one seed of one scenario: a fresh ``trio.run`` under a MockClock with autojump and
deterministic scheduling seeded from the scenario seed.

Exit status: 0 pass, 1 invariant violated, 2 liveness bound missed, 3 crash of the simulator or of
the code under test (including a livelock: trio time stuck while tasks keep running).
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing
from trio.abc import Instrument

from sim.invariants import Invariant
from sim.simulator import Simulator

EXIT_PASS, EXIT_VIOLATION, EXIT_LIVENESS, EXIT_CRASH = 0, 1, 2, 3

MUTATIONS: dict[str, str] = {
    "double-lease": "leasing leaves the task in the ready queue",
    "ack-before-durable": "a write is acknowledged before it is durable",
    "no-reaper": "expired leases are never reaped",
    "lost-cancel": "heartbeats never report a cancel",
    "ignore-priority": "leases hand out the lowest priority first",
    "timer-page-skips-row": "reading a page of timers back into memory skips its first row (the "
                            "frontier moves past it)",
    "ready-page-skips-row": "reading a page of a task group's ready rows back into memory skips "
                            "its first row (the frontier moves past it)",
    "request-page-skips-row": "reading a page of a concurrency queue's parked requests back into "
                              "memory skips its first row (the frontier moves past it)",
    "skip-release-on-cancel": "cancelling a scheduled job leaves its task queued",
    "counter-drift": "enqueue counts every job twice in the total",
    "over-grant": "a concurrency queue grants one slot beyond its max",
    "leak-holder": "releasing a concurrency slot leaves its holder row behind",
    "no-fencing": "heartbeats and reports skip the lease owner check",
    "lease-before-due": "timers (start times, retry backoffs, rate-token waits) fall due a "
                        "second early",
    "charge-undelivered": "an undelivered attempt is charged to the job's retry budget",
    "charge-released": "a lease handed back unstarted is charged to the job's retry budget",
    "release-started": "a stopping worker hands back its running tasks as unstarted",
    "ack-waiting": "a worker acknowledges a prefetched task on arrival, before its handler "
                   "starts",
    "poison-retry-overflow": "retry backoff uses the unguarded float power, which overflows for "
                             "large factors and retry numbers",
    "drop-reports": "the last outcome report of a batch is answered OK but never recorded",
    "limits-given-order": "a job acquires its limits in the order given, not the canonical one",
    "recreate-deleted-on-retry": "a later try of an enqueue call re-creates the job an earlier "
                                 "try of it created, deleted since",
    "cleanup-deletes-in-range": "a split child's cleanup treats a tenant hashing exactly to its "
                                "range start (the default split point) as outside the range",
    "skip-split-pause": "a split clones the parent while it still serves, and closes it only "
                        "after the commit",
    "split-at-tenant-string": "split points and cleanup place tenants by their string's first "
                              "bytes instead of their routing hash",
    "split-ignores-reserved-ids": "a split plans its children above the ids in the shard map "
                                  "only, ignoring those reserved by splits not committed",
    "reopen-split-parent": "a node restarting with a committed split still to finish opens "
                           "the split's parent again beside its children",
    "rate-token-returned-in-place": (
        "a cancelled job's rate token is given back but the latest job keeps its later time"
    ),
    # The fixes of the lost, unrun and wedged work defects, each reverted (README "Simulation").
    "unsized-lease-replies": "LeaseTasks commits as many leases as asked without sizing the "
                             "reply, which can then exceed the max message size",
    "reports-dropped-on-error": "the worker abandons a report batch whose call failed, with no "
                                "retry and no logged reason",
    "wall-clock-deadlines": "lease expiries and timers follow the wall clock, not the "
                            "monotonic clock",
    "unchecked-name-lengths": "ids, tenants, task groups and keys are not checked against "
                              "their length limits",
    "no-handler-timeout": "the worker ignores per-job timeouts: a hung handler keeps its slot "
                          "and lease forever",
    "no-empty-lease-backoff": "with lease_wait_ms below 1 s the worker asks again at once after "
                              "an empty lease reply",
    "split-brain": "the reconcile loop ignores other nodes' ownership keys and opens the shards "
                   "placement gives it even when its acquire fails",
    "release-before-close": "a shard moving away has its ownership key released before the "
                            "old owner closes it",
    "trust-lease-past-ttl": "a confirmed membership renewal is trusted for twice its TTL, so a "
                            "node cut off from etcd serves past its lease's expiry",
    "hoard-slots-across-nodes": "a worker leasing from several nodes lets each node's long poll "
                                "take every free slot for the whole lease_wait_ms",
}

STALL_STEPS = 100_000
"""Scheduler iterations at one instant of trio time after which the run counts as livelocked."""


@dataclass
class RunResult:
    scenario: str
    seed: int
    mutation: str | None
    exit_code: int
    digest: str
    sim_seconds: float
    wall_seconds: float
    fired: dict[str, int] = field(default_factory=dict)
    buggified: dict[str, int] = field(default_factory=dict)
    """Forced rare paths (BUGGIFY points) taken, by point."""
    probes: dict[str, int] = field(default_factory=dict)
    """Coverage probes reached, by probe."""
    params: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    invariant: Invariant | None = None
    message: str = ""
    evidence: list[str] = field(default_factory=list)
    events: int = 0

    @property
    def replay(self) -> str:
        cmd = f"silo-sim run {self.scenario} --seed {self.seed}"
        if self.mutation:
            cmd += f" --mutation {self.mutation}"
        return cmd

    @property
    def verdict(self) -> str:
        return {0: "PASS", 1: "VIOLATION", 2: "LIVENESS", 3: "CRASH"}[self.exit_code]


def _read_virtual_time_directly(clock: trio.testing.MockClock) -> None:
    """Make ``clock.current_time()`` answer its virtual base without reading the real clock.

    At rate 0 (a run never changes it) ``MockClock`` computes ``base + 0.0 * (real -
    real_base)``, which is exactly ``base`` (never -0.0: it starts at 0.0 and only jumps
    forward), so every time seen in a run is the same; trio and the code under test ask for the
    time on every scheduler step and at almost every operation."""
    assert clock.rate == 0.0

    def current_time() -> float:
        return clock._virtual_base  # type: ignore[no-any-return]

    clock.current_time = current_time  # type: ignore[method-assign]


class _StallGuard(Instrument):
    def __init__(self, sim: Simulator, clock: trio.abc.Clock) -> None:
        self.sim = sim
        self.clock = clock
        self.last = -1.0
        self.steps = 0

    def before_io_wait(self, timeout: float) -> None:
        now = self.clock.current_time()  # what trio.current_time() answers
        if now != self.last:
            self.last = now
            self.steps = 0
            return
        self.steps += 1
        if self.steps == STALL_STEPS and self.sim.ok:
            self.sim.crash_report = (f"livelock: {STALL_STEPS} scheduler steps at trio time "
                                     f"{now:.6f} without time advancing")
            self.sim.stop()


def _leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def scenario_for_seed(seed: int) -> str:
    from scenarios import SCENARIOS

    names = list(SCENARIOS)
    return names[seed % len(names)]


def run_one(
    scenario: str,
    seed: int,
    mutation: str | None = None,
    *,
    echo: Callable[[str], None] | None = None,
    trace_echo: Callable[[str], None] | None = None,
    strict_acks: bool = True,
) -> RunResult:
    """Run one seed in a fresh ``trio.run``; never raises for failures of the code under test."""
    from scenarios import SCENARIOS

    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    if mutation is not None and mutation not in MUTATIONS:
        raise ValueError(f"unknown mutation {mutation!r}; known: {', '.join(MUTATIONS)}")
    out = echo or (lambda line: None)
    out(f"silo-sim run {scenario} --seed {seed}" + (f" --mutation {mutation}" if mutation else ""))
    out(f"seed {seed} scenario {scenario} mutation {mutation or 'none'}")
    sim = Simulator(seed, mutations=(mutation,) if mutation else (), echo=echo,
                    trace_echo=trace_echo)
    sim.checker.strict_acks = strict_acks
    rng = random.Random(seed)
    core = trio._core._run  # type: ignore[attr-defined]
    saved = (core._ALLOW_DETERMINISTIC_SCHEDULING, core._r)
    core._ALLOW_DETERMINISTIC_SCHEDULING = True
    core._r = random.Random(f"trio-scheduler/{seed}")
    clock = trio.testing.MockClock(autojump_threshold=0)
    _read_virtual_time_directly(clock)
    sim_end = [0.0]

    async def main() -> None:
        try:
            await sim.main(SCENARIOS[scenario], rng)
        finally:
            sim_end[0] = trio.current_time()

    t0 = time.perf_counter()
    try:
        trio.run(main, clock=clock, instruments=[_StallGuard(sim, clock)])
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a crash of the code under test or of the simulator
        if sim.ok:
            sim.crash_report = f"crash: {_leaf(exc)!r}\n" + "".join(
                traceback.format_exception(exc)
            )
    finally:
        core._ALLOW_DETERMINISTIC_SCHEDULING, core._r = saved
    wall = time.perf_counter() - t0
    result = RunResult(
        scenario=scenario, seed=seed, mutation=mutation, exit_code=EXIT_PASS,
        digest=sim.trace.digest(), sim_seconds=sim_end[0], wall_seconds=wall,
        fired=dict(sorted(sim.board.fired.items())), params=dict(sim.params),
        buggified=dict(sorted(sim.board.buggified.items())),
        probes=dict(sorted(sim.board.probes.items())),
        stats=dict(sorted(sim.stats.items())), events=sim.checker.events,
    )
    if sim.violation is not None:
        v = sim.violation
        # Invariant 17: the code under test could not process a request or a record.
        result.exit_code = EXIT_CRASH if v.invariant == Invariant.NO_NODE_DEATH else EXIT_VIOLATION
        result.invariant = v.invariant
        result.message = f"{v.title}: {v.message}"
        result.evidence = list(v.evidence)
    elif sim.crash_report is not None:
        result.exit_code = EXIT_CRASH
        result.invariant = sim.crash_invariant
        result.message = sim.crash_report
    elif sim.liveness_report is not None:
        result.exit_code = EXIT_LIVENESS
        result.invariant = Invariant.LIVENESS
        result.message = "invariant 7 (every job reaches a terminal state once faults stop): " \
            + sim.liveness_report
    return result


def report_lines(r: RunResult) -> list[str]:
    """What ``silo-sim run`` prints after the run (the digest line last)."""
    lines = [
        f"result {r.verdict} exit={r.exit_code} sim={r.sim_seconds:.1f}s "
        f"wall={r.wall_seconds:.2f}s events={r.events}",
        "faults fired: " + (", ".join(f"{k}={v}" for k, v in r.fired.items()) or "none"),
        "forced paths: " + (", ".join(f"{k}={v}" for k, v in r.buggified.items()) or "none"),
        "probes: " + (", ".join(f"{k}={v}" for k, v in r.probes.items()) or "none"),
        "stats: " + (", ".join(f"{k}={v}" for k, v in r.stats.items()) or "none"),
    ]
    if r.exit_code:
        lines.append(("FAILED " + r.message).rstrip())
        lines.extend(f"  evidence: {e}" for e in r.evidence)
        lines.append(f"replay: {r.replay}")
    lines.append(f"digest {r.digest}")
    return lines
