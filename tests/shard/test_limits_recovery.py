"""Limits across crashes (DESIGN §5): random programs of limited jobs (concurrency, floating and
rate limits, changing maxes, two tenants) on the simulator's MemoryDisk, crashed while writes are
in flight and reopened. After every operation and every reopen, the holder counts in memory equal
the holder rows on disk, the holder and request rows are exactly those the job states call for,
no queue leaves a waiting request ungranted below its max, no fixed queue exceeds its max, and
the counters equal a recount. At the end, once every job is terminal, no slot is held."""

from __future__ import annotations

import random
from collections import Counter

import msgpack
import pytest
import trio
from trio.testing import MockClock

from silo import keys
from silo.errors import FailedPrecondition, NotFound, SiloError
from silo.keys import Prefix
from silo.model import (
    PARKED,
    Cancelled,
    ConcurrencyLimit,
    Failure,
    FloatingConcurrencyLimit,
    JobInfo,
    JobState,
    JobStatus,
    LeasedTask,
    NewJob,
    OutcomeReport,
    RateLimit,
    RetryPolicy,
    Success,
    concurrency_key,
)
from silo.runtime import DiskError, Faults, RandomSource, Runtime
from silo.shard import JobShard, ShardConfig, open_shard
from sim.disk import MemoryDisk
from tests.shard.support import EPOCH_MS

S = JobStatus
PATH = "/node-1/shards/0"
GROUP = "g"
LEASE_MS = 30_000
CONFIG = ShardConfig(lease_ms=LEASE_MS)
WRITE_LATENCY_S = 0.001
TENANTS = ["default", "t2"]
REFRESH_VALUES = [None, 0, 1, 2, 3]

A = ConcurrencyLimit("A", 1)
B = ConcurrencyLimit("B", 2)
C1 = ConcurrencyLimit("C", 1)  # two jobs with different maxes: C's max changes both ways
C2 = ConcurrencyLimit("C", 2)
F = FloatingConcurrencyLimit("F", 1, 5000)
R = RateLimit("api", "k", 2, 1000)
# Queues are always acquired in the order A, F, C, B (no cycle, so the final drain terminates).
LIMIT_SETS = [(), (A,), (B,), (A, B), (R, A), (A, R), (F,), (F, B), (C1,), (C2,), (C1, B)]
# The most holders a queue may ever have (max over the values its max can take).
MAX_EVER = {"A": 1, "B": 2, "C": 2, "F": max(v for v in REFRESH_VALUES if v is not None)}


class WallClock:
    def __init__(self) -> None:
        self.ms = EPOCH_MS

    def now_ms(self) -> int:
        return self.ms

    def monotonic_ms(self) -> int:
        return self.ms - EPOCH_MS


async def check_limits(shard: JobShard) -> None:
    """Every limit invariant, on the store as the shard sees it (durable + being written)."""
    async with shard._lock:
        rows = await shard._store.scan(b"", None)
        holders: dict[bytes, tuple[str, str, str]] = {}
        requests: dict[bytes, tuple[str, str, str]] = {}
        infos: dict[tuple[str, str], JobInfo] = {}
        states: dict[tuple[str, str], JobState] = {}
        for k, v in rows:
            prefix, parts = keys.parse(k)
            if prefix == Prefix.CONCURRENCY_HOLDER:
                tenant, queue, task_id = (str(p) for p in parts)
                _granted_at, job_id, _attempt = msgpack.unpackb(v)
                holders[k] = (tenant, queue, task_id)
            elif prefix == Prefix.CONCURRENCY_REQUEST:
                requests[k] = (str(parts[0]), str(parts[1]), str(parts[4]))
            elif prefix == Prefix.JOB:
                infos[(str(parts[0]), str(parts[1]))] = JobInfo.decode(k, v)
            elif prefix == Prefix.STATUS:
                states[(str(parts[0]), str(parts[1]))] = JobState.decode(k, v)
        mirror = shard._mirror
        # The in-memory holder counts are the holder rows.
        assert set(mirror.holder_keys) == set(holders)
        per_queue = Counter((t, q) for t, q, _ in holders.values())
        assert mirror.holders == dict(per_queue)
        assert set(mirror.requests) == set(requests)
        # The rows are exactly what the job states call for.
        want_holders: set[tuple[str, str, str]] = set()
        want_requests: set[tuple[str, str, str]] = set()
        for ref, state in states.items():
            info = infos[ref]
            tenant, job_id = ref
            if state.status == S.RUNNING:
                task_id = state.lease_task_id
                assert state.held == len(info.limits)
            elif state.status == S.SCHEDULED:
                assert state.task is not None
                task_id = state.task[3]
                if state.task[2] == PARKED:
                    queue = concurrency_key(info.limits[state.held])
                    assert queue is not None
                    want_requests.add((tenant, queue, job_id))
            else:
                assert state.task is None and state.held == 0
                continue
            for limit in info.limits[: state.held]:
                queue = concurrency_key(limit)
                if queue is not None:
                    assert task_id is not None
                    want_holders.add((tenant, queue, task_id))
        assert set(holders.values()) == want_holders
        assert set(requests.values()) == want_requests
        # No request waits below its queue's max; a queue never has more than it may.
        for (tenant, queue), n in per_queue.items():
            assert n <= MAX_EVER[queue], (tenant, queue, n)
            if queue in ("A", "B"):
                assert n <= mirror.queues[(tenant, queue)].max_concurrency
        for tenant, queue, _ in requests.values():
            assert per_queue[(tenant, queue)] >= mirror.queues[(tenant, queue)].max_concurrency
    recount = await shard.recount()  # under the shard lock, then at once:
    assert shard.counters() == recount


class Program:
    """One seed's random program: sessions of operations, each ended cleanly or by a crash."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.disk = MemoryDisk(random.Random(seed), Faults(), write_latency=WRITE_LATENCY_S)
        self.clock = WallClock()
        self.runtime = Runtime(clock=self.clock, random=RandomSource(seed), disk=self.disk)
        self.job_ids: list[tuple[str, str]] = []
        self.running: list[LeasedTask] = []
        self.next_id = 0
        self.crashes = 0

    def session(self, body) -> None:  # noqa: ANN001
        async def main() -> None:
            async with open_shard(self.runtime, PATH, config=CONFIG) as shard:
                await check_limits(shard)  # the state rebuilt by the open
                await body(shard)

        try:
            trio.run(main, clock=MockClock(autojump_threshold=0))
        except* (DiskError, SiloError):
            pass  # the disk crashed under the shard

    # -- operations -------------------------------------------------------------------------

    def new_jobs(self) -> list[NewJob]:
        jobs = []
        for _ in range(self.rng.randint(1, 3)):
            self.next_id += 1
            tenant = self.rng.choice(TENANTS)
            job_id = f"j{self.next_id:03d}"
            delay = self.rng.choice([0, 0, 0, 2000])
            jobs.append(NewJob(
                GROUP, b"p", tenant, job_id, self.rng.choice([10, 50, 50]),
                self.clock.ms + delay if delay else 0,
                RetryPolicy(self.rng.choice([0, 1, 2]), 1000, 60_000, 2.0, False),
                limits=self.rng.choice(LIMIT_SETS),
            ))
            self.job_ids.append((tenant, job_id))
        return jobs

    def pick_op(self, shard: JobShard):  # noqa: ANN201
        """A random operation as a coroutine factory (so that it can also be run and crashed)."""
        rng = self.rng
        kind = rng.choice(["enqueue", "enqueue", "lease", "lease", "report", "report", "report",
                           "cancel", "restart", "expedite", "advance"])
        if kind == "enqueue" or not self.job_ids:
            jobs = self.new_jobs()
            return lambda: shard.enqueue_batch(jobs)
        if kind == "lease":
            n = rng.randint(1, 4)

            async def do_lease() -> None:
                self.running += await shard.lease_tasks("w", GROUP, n)

            return do_lease
        if kind == "report" and self.running:
            task = self.running.pop(rng.randrange(len(self.running)))
            if task.refresh is not None:
                value = rng.choice(REFRESH_VALUES)
                return lambda: shard.report_refresh("w", task.task_id, value)
            outcome = rng.choice([Success(), Failure("E"), Cancelled()])
            rep = OutcomeReport("w", task.task_id, outcome, task.tenant, task.job_id,
                                task.attempt)
            return lambda: shard.report_outcome(rep)
        if kind in ("cancel", "restart", "expedite"):
            tenant, job_id = rng.choice(self.job_ids)
            return lambda: getattr(shard, kind)(tenant, job_id)
        ms = rng.choice([500, 1000, 2500, 5000, LEASE_MS])

        async def advance() -> None:
            self.clock.ms += ms
            await shard.reap_expired()
            await shard.promote_due()

        return advance

    async def run_ops(self, shard: JobShard) -> None:
        for _ in range(self.rng.randint(1, 6)):
            op = self.pick_op(shard)
            try:
                await op()
            except (FailedPrecondition, NotFound):
                pass  # not in a state for it, or lost to an earlier crash
            await check_limits(shard)

    async def run_and_crash(self, shard: JobShard) -> None:
        await self.run_ops(shard)
        op = self.pick_op(shard)

        async def run_op() -> None:
            try:
                await op()
            except (SiloError, DiskError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_op)
            await trio.sleep(self.rng.choice([WRITE_LATENCY_S / 2, WRITE_LATENCY_S * 2.5]))
            self.disk.crash()
            self.crashes += 1

    async def drain(self, shard: JobShard) -> None:
        """Cancel everything, let the running attempts expire: every slot must come back."""
        start, end = keys.prefix_range(Prefix.STATUS)
        jobs = [keys.parse(k)[1] for k, _ in await shard._store.scan(start, end)]
        # (An enqueue cut short by a crash may have left no job behind.)
        assert {(str(t), str(j)) for t, j in jobs} <= set(self.job_ids)
        for tenant, job_id in jobs:
            try:
                await shard.cancel(str(tenant), str(job_id))
            except SiloError as exc:
                assert exc.code.name == "FAILED_PRECONDITION", exc
        self.clock.ms += LEASE_MS
        while await shard.reap_expired():
            pass
        await check_limits(shard)
        for tenant, job_id in jobs:
            assert (await shard.get_job(str(tenant), str(job_id))).state.status.terminal
        assert shard._mirror.holders == {}
        assert shard._mirror.requests_per_queue == {}
        assert [k for k, _ in await shard._store.scan(b"", None)
                if k[0] in (Prefix.CONCURRENCY_HOLDER, Prefix.CONCURRENCY_REQUEST)] == []

    def run(self, sessions: int) -> None:
        for _ in range(sessions):
            if self.rng.random() < 0.4:
                self.session(self.run_and_crash)
            else:
                self.session(self.run_ops)
        self.session(self.drain)


@pytest.mark.parametrize("seed", range(30))
def test_limits_survive_random_programs_with_crashes(seed: int) -> None:
    program = Program(seed)
    program.run(sessions=12)
    assert program.job_ids
    assert program.disk.open_paths() == []


def failed_on_an_assertion(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(AssertionError) is not None
    return isinstance(exc, AssertionError)


@pytest.mark.parametrize("mutation", ["over-grant", "leak-holder", "skip-release-on-cancel"])
def test_the_checks_catch_planted_limit_bugs(mutation: str) -> None:
    for seed in range(5):
        program = Program(seed)
        program.runtime.faults = Faults(mutations={mutation})
        try:
            program.run(sessions=12)
        except BaseException as exc:  # noqa: BLE001 - an assertion, possibly in a group
            assert failed_on_an_assertion(exc), exc
            return
    pytest.fail(f"no program caught {mutation!r}")
