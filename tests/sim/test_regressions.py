"""Seeds that once failed, kept so that the bugs they found stay fixed.

Each entry names the scenario, the seed, and the bug. Scenario parameters may be retuned later
(a seed then draws a different run), so each bug also has a targeted test below that does not
depend on the scenarios.
"""

from __future__ import annotations

import random

import pytest
import trio

import scenarios
from silo.client.handlers import TaskContext
from silo.errors import AlreadyExists
from silo.model import NewJob
from silo.runtime import RandomSource, Runtime
from silo.shard import open_shard
from sim.clock import SimClock
from sim.disk import MemoryDisk
from sim.runner import run_one
from sim.simulator import Simulator

REGRESSIONS = [
    # An enqueue retried while the first try's batch was still being written was answered
    # ALREADY_EXISTS (which the client counts as success) before that batch was durable.
    ("high_latency", 54, "already-exists-before-durable"),
    # The liveness bound ignored hung handlers' timeouts and the max-1 queue every job of
    # grant_race waits on: ~20 hung first attempts, one at a time, hold the slot for 214-228 s
    # of timeouts, past the 149-155 s bound, while the shard granted every release at once.
    ("grant_race", 3965647, "liveness-bound-ignores-queue-max-and-hangs"),
    ("grant_race", 817401840, "liveness-bound-ignores-queue-max-and-hangs"),
    # The checker kept a timer's monotonic due time from before a backward wall step across a
    # restart; the new process re-based it on its wall clock when the shard opened (DESIGN §4
    # "Deadlines"), so the timer was not due yet when a lower-priority task was leased
    # (invariant 9 reported a skip that was legal; see test_checkers.py, invariant 9 re-base).
    ("chaos", 817402018, "timer-rebase-on-open"),
    # A timer promotion whose write failed removed the timer's monotonic deadline from the
    # in-memory index; the reload that follows brought the row back re-based on the wall clock,
    # which had stepped back since, so the due timer waited 2.3 s longer and a lower-priority
    # task was leased first (invariant 9; tests/shard/test_deadlines.py has the exact sequence,
    # and its forward-step twin, a lease reaped early after a failed heartbeat write).
    ("chaos", 82, "deadline-lost-on-failed-write"),
    # The retrying producer recomputed start times on each try, so a resent job differed from
    # the one its lost-answer try had created (ALREADY_EXISTS), and it counted that refusal as
    # acknowledging its whole group, though the group's other shard was never sent.
    ("chaos", 1919606572, "producer-retry-resends-a-different-job"),
    # A rate bucket forgot a reservation once the wall clock passed its slot + per_ms; the wall
    # clock then stepped back and the next reservation went at the stepped-back now, so three
    # tokens of a limit of two fell within one window of stored slots (invariant 13).
    ("chaos", 110, "rate-window-forgotten-before-backward-step"),
    # A poison job (zero backoff, a rate limit of 2 per 867 ms) kept the only worker busy one
    # task every 0.3-0.6 s for 440 s; after each task the SDK's backoff starts again at 10 ms,
    # about 4 empty replies per task, which the idle-polls bound (2 per task) did not allow.
    ("priority", 250, "idle-poll-bound-ignores-backoff-ramp"),
    # A cancelled job gave back a token whose slot equalled that of the bucket's latest
    # reservation; moving the latest job "into" it rewrote its timer row unchanged, and the
    # rewrite re-indexed the timer on the wall clock, which had stepped forward 1.3 s since:
    # the job was leased 1.3 s early on the monotonic clock (invariant 13).
    ("rate_limits", 127, "same-slot-token-move-rebases-timer"),
    # A worker acknowledged (and heartbeated as delivered) the tasks it prefetched before their
    # handlers started; killed while holding them, it left them to expire WORKER_CRASHED,
    # charged to their retry budget: with retry_count 0 a job failed without ever running.
    ("worker_stops", 10, "prefetched-task-acknowledged-before-it-started"),
    # Simulator harness: a member stopped (its restart pending, waiting for the old run's
    # lease revoke) was then picked to crash for good; the pending restart brought it back, so
    # its membership never expired, the operator's force-release never ran and the scenario
    # never left its fault phase (1800 simulated s).
    ("cluster_membership", 358, "restart-of-a-member-gone-for-good"),
    # A node crashed with its split of shard 2 (children 3, 4) recorded but not committed;
    # another node then split shard 0, also into 3 and 4 (child ids came from the map alone).
    # The first split's undo, when shard 2 next opened, tried to destroy shard 3's directory,
    # now a served shard, and shard 2 never opened again (tests/cluster/test_etcd_splits.py:
    # two splits planned at once never share a child).
    ("cluster_split", 90827600, "split-children-ids-collide"),
    # The worker sent a lease's next heartbeat an interval after the last one was answered, and
    # the server answers once the extension is durable: with a 500 ms lease, a 167 ms interval
    # and 25% of writes stalled 400 ms (and more behind them), the gap between two extensions
    # often passed the lease, so handlers of a few seconds lost their leases on almost every
    # attempt; 12 jobs, at up to 295 attempts, were still running 514 s after healing.
    ("wide", 1790228235, "heartbeats-paced-from-their-answers"),
    # Checker: a lease decided at monotonic 924 reached the checker only at 1362 (its write
    # stalled); meanwhile a forward wall step and a timer page-in had re-based a higher-priority
    # timer to be due at once, and invariant 9 judged the earlier lease on that later deadline
    # (tests/sim/test_checkers.py: a lease decided before a page-in is judged on the prior
    # deadline).
    ("wide", 96186921, "lease-judged-on-a-later-rebase"),
    # Liveness bound: a poison job (1,000 retries) named a rate bucket of 1 token per 1,441 ms;
    # every attempt takes a token, so its attempts alone need 1,441 s, but the bound counted
    # only slot time (0.5 s per attempt) and gave up at 1,186 s after healing with the job at
    # attempt 834 and still moving (tests/sim/test_workload.py: rate buckets bound the work).
    ("split", 200998, "liveness-bound-ignores-rate-buckets"),
    # Shard 1 split into 2 and 3, then 3 into 4 and 5 before the first split's cleanup ended;
    # after a crash, finishing the first split reopened child 3 (an empty store, its
    # directory deleted), which refused its old tenants' enqueues INVALID_ARGUMENT
    # ("belongs to shard 5") instead of forwarding them, and the first split never recorded
    # its cleanup done (tests/cluster/test_splitting.py: a child split again stays retired).
    ("split", 458, "retired-child-reopened"),
    # Audit: the cluster moved split child 8 (its sweep half done) to another node after the
    # final audit had begun; the audit saw no sweep pending while the shard was between owners
    # and compared its counters before the new owner's sweep finished (invariant 12).
    ("cluster_split", 110, "counters-judged-mid-sweep-after-a-move"),
]


@pytest.mark.parametrize(("scenario", "seed", "bug"), REGRESSIONS)
def test_regression_seed(scenario: str, seed: int, bug: str) -> None:
    r = run_one(scenario, seed)
    assert r.exit_code == 0, f"{bug}: {r.replay}\n{r.message}\n" + "\n".join(r.evidence)


async def test_already_exists_is_answered_only_once_durable(autojump_clock: object) -> None:
    """A second enqueue of an id whose first enqueue is still being written must not be told
    ALREADY_EXISTS until that write is durable: a crash in between would lose the job."""
    disk = MemoryDisk(random.Random(1), write_latency=0.05)
    rt = Runtime(clock=SimClock(), random=RandomSource(1), disk=disk)
    seen: list[tuple[str, float, bool]] = []
    async with open_shard(rt, "s/0") as shard:

        async def first() -> None:
            await shard.enqueue(NewJob("g", job_id="x"))
            seen.append(("first ok", trio.current_time(), True))

        async def second() -> None:
            await trio.sleep(0.01)  # the first write is in flight now
            with pytest.raises(AlreadyExists):  # a different job under the same id
                await shard.enqueue(NewJob("g", b"\x01", job_id="x"))
            durable = any(b"x" in k for k, _ in disk.durable_items("s/0"))
            seen.append(("second exists", trio.current_time(), durable))

        async with trio.open_nursery() as n:
            n.start_soon(first)
            n.start_soon(second)
    assert [s[0] for s in seen] == ["first ok", "second exists"] or seen[0][0] == "second exists"
    answered = next(s for s in seen if s[0] == "second exists")
    assert answered[2], "ALREADY_EXISTS was answered before the job was durable"
    assert answered[1] >= 0.05


def test_worker_lease_loops_starve_the_node_with_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by stale_routing seed 2008 with the workers' lease_wait_ms drawn (its 30 s edge):
    a worker follows four nodes with two slots; the loops long-polling the three nodes without
    the tenant's shard hold both slots for 30 s at a time, so the node serving it is asked about
    once per 30 s and 17 jobs are still not terminal 339 s after healing (invariant 7). Fixed:
    with several lease loops each poll takes a share of the slots and waits at most
    ``SHARED_LEASE_WAIT_MS`` (mutation ``hoard-slots-across-nodes`` puts the old way back)."""
    import sim.cluster_workload

    monkeypatch.setattr(sim.cluster_workload, "LEASE_WAIT_MS", None)
    r = run_one("stale_routing", 2008)
    assert r.exit_code == 0, f"{r.replay}\n{r.message}"


LONG_HANDLER_S = 4.0
HANDLER_RUNS: list[tuple[int, bool]] = []


async def _slow_writes_long_handler(sim: Simulator, rng: random.Random) -> None:
    """One job whose handler runs 4 s, a 500 ms lease (heartbeats every 167 ms), and a disk
    whose every write takes 400 ms: longer than the lease minus the interval, shorter than the
    lease minus the first heartbeat's delay (so the lease reply itself arrives in time)."""
    sim.board.buggify_rates = {}  # no forced paths: only the slow disk
    await sim.add_node("n1", shards=1, lease_ms=500, write_latency_s=0.4)
    client = sim.add_host("p").client()
    await client.enqueue("g", {"d": int(LONG_HANDLER_S * 1000)}, id="long")
    sim.checker.on_ack_enqueue("default", "long")
    await trio.sleep(1.0)  # the enqueue is durable: the lease is the only write in flight

    async def handler(ctx: TaskContext) -> str:
        HANDLER_RUNS.append((ctx.attempt, False))
        await trio.sleep(LONG_HANDLER_S)
        HANDLER_RUNS.append((ctx.attempt, True))
        return "done"

    await sim.add_worker("w0", "g", handler, concurrency=1)
    await sim.heal()
    await sim.settle(60.0)
    job = sim.checker.jobs[("default", "long")]
    HANDLER_RUNS.append((-1, job.status == "SUCCEEDED"))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_slow_heartbeat_answers_do_not_let_the_lease_lapse(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Found by wide seed 1790228235: every heartbeat's answer takes at least 400 ms (the
    extension is answered once durable), so a worker pacing each heartbeat from the previous
    answer let 400 + 167 ms pass between two extensions of a 500 ms lease and lost it. Paced
    from their sends (several in flight), the heartbeats keep arriving every 167 ms and the
    server, extending on arrival, keeps the lease for the whole 4 s handler."""
    HANDLER_RUNS.clear()
    monkeypatch.setitem(scenarios.SCENARIOS, "slow_writes_long_handler",
                        _slow_writes_long_handler)
    r = run_one("slow_writes_long_handler", seed)
    assert r.exit_code == 0, f"{r.replay}\n{r.message}\n" + "\n".join(r.evidence)
    assert HANDLER_RUNS == [(1, False), (1, True), (-1, True)], HANDLER_RUNS
