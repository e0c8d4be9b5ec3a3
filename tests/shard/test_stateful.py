"""A Hypothesis state machine drives one shard on the simulator's MemoryDisk through random
programs of enqueue / lease / heartbeat / report / cancel / restart / expedite / delete / clock
advances, with crashes at random points and (in the second machine) injected write errors.

Every rule is one "process lifetime": it opens the shard, checks the whole shard against the
model (so every step also proves that what was acknowledged before survived the reopen), performs
one operation, and closes the shard (or crashes the disk under it). The model predicts each
acknowledged operation exactly; an operation cut short by a crash is unacknowledged, and the next
open must show either its full effect or none of it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from trio.testing import MockClock

from silo.errors import FailedPrecondition, NotFound, SiloError, Unavailable
from silo.keys import Prefix
from silo.model import DEFAULT_TENANT as T
from silo.model import (
    MAX_UNDELIVERED,
    Cancelled,
    Failure,
    JobStatus,
    NewJob,
    OutcomeReport,
    RetryPolicy,
    Success,
)
from silo.runtime import Faults, RandomSource, Runtime
from silo.runtime.disk import DiskError
from silo.shard import JobShard, ShardConfig, open_shard
from sim.disk import MemoryDisk
from tests.shard.support import EPOCH_MS, keys_mentioning

S = JobStatus
PATH = "/node-1/shards/0"
GROUP = "g"
LEASE_MS = 30_000
CONFIG = ShardConfig(lease_ms=LEASE_MS)
WRITE_LATENCY_S = 0.001  # each store write is in flight this long (virtual time)
INITIAL_BACKOFF_MS = 1000
WORKERS = ["w1", "w2"]


class WallClock:
    def __init__(self) -> None:
        self.ms = EPOCH_MS

    def now_ms(self) -> int:
        return self.ms

    def monotonic_ms(self) -> int:
        return self.ms - EPOCH_MS


@dataclass(frozen=True)
class MLease:
    task_id: str
    worker: str
    attempt: int
    expiry: int
    acked: bool = False
    """Acknowledged by a heartbeat (an unacknowledged lease that expires is undelivered)."""


@dataclass(frozen=True)
class MJob:
    """What the model knows about a job (everything here is checked against the shard)."""

    job_id: str
    priority: int
    retry_count: int
    status: JobStatus
    cancelled: bool = False
    attempt: int = 1
    run_attempts: int = 0
    due: int | None = None
    lease: MLease | None = None
    undelivered: int = 0


def backoff_ms(run_attempts: int) -> int:
    return min(INITIAL_BACKOFF_MS * 2 ** (run_attempts - 1), 60_000)


def after_failure(job: MJob, now: int) -> MJob:
    """A running attempt failed (reported, or its lease expired)."""
    base = replace(job, lease=None)
    if job.cancelled:
        return replace(base, status=S.CANCELLED)
    if job.run_attempts - 1 < job.retry_count:
        return replace(base, status=S.SCHEDULED, attempt=job.attempt + 1,
                       due=now + backoff_ms(job.run_attempts))
    return replace(base, status=S.FAILED)


def after_expiry(job: MJob, now: int) -> MJob:
    """The running attempt's lease expired: undelivered (re-queued now, the retry budget
    refunded) when it was never acknowledged, at most MAX_UNDELIVERED times; else a failure."""
    assert job.lease is not None
    if not job.lease.acked and not job.cancelled and job.undelivered < MAX_UNDELIVERED:
        return replace(job, lease=None, status=S.SCHEDULED, attempt=job.attempt + 1, due=now,
                       run_attempts=job.run_attempts - 1, undelivered=job.undelivered + 1)
    return after_failure(job, now)


def after_report(job: MJob, outcome: object, now: int) -> MJob:
    if isinstance(outcome, Success):
        return replace(job, status=S.SUCCEEDED, lease=None)
    if isinstance(outcome, Cancelled):
        return replace(job, status=S.CANCELLED, cancelled=True, lease=None)
    return after_failure(job, now)


def after_cancel(job: MJob) -> MJob | None:
    """None: refused (FAILED_PRECONDITION)."""
    if job.status == S.SCHEDULED:
        return replace(job, status=S.CANCELLED, cancelled=True, due=None)
    if job.status == S.RUNNING:
        return replace(job, cancelled=True)
    return None


class ShardMachine(RuleBasedStateMachine):
    FAULT_RATE = 0.0
    CONFIG = CONFIG

    def __init__(self) -> None:
        super().__init__()
        self.faults = Faults(random.Random(11), {"disk.write.error": self.FAULT_RATE})
        self.disk = MemoryDisk(random.Random(7), self.faults, write_latency=WRITE_LATENCY_S)
        self.clock = WallClock()
        self.runtime = Runtime(clock=self.clock, random=RandomSource(3), disk=self.disk)
        self.jobs: dict[str, MJob] = {}
        self.deleted: set[str] = set()
        # Jobs touched by an unacknowledged operation: the states the next open may show.
        self.uncertain: dict[str, list[MJob | None]] = {}
        # Ended attempts: (report as the worker sent it, or None if reaped) for repeat checks.
        self.ended: list[tuple[OutcomeReport, bool]] = []
        self.next_id = 0
        self.failed_writes = 0

    # -- running one process lifetime ---------------------------------------------------------

    def session(self, body, *, crash: bool = False) -> None:  # noqa: ANN001
        async def main() -> None:
            async with open_shard(self.runtime, PATH, config=self.CONFIG) as shard:
                await self.check_shard(shard)
                await body(shard)

        if not crash:
            trio.run(main, clock=MockClock(autojump_threshold=0))
            return
        try:
            trio.run(main, clock=MockClock(autojump_threshold=0))
        except* (DiskError, Unavailable):
            pass  # the host died under the shard

    async def attempt(self, shard: JobShard, coro, *, model_check: bool = True):  # noqa: ANN001, ANN201
        """Run one mutation; returns (True, result), or (False, None) if its write failed."""
        try:
            return True, await coro
        except Unavailable:
            assert self.FAULT_RATE > 0, "UNAVAILABLE without injected faults"
            self.failed_writes += 1
            # The failed operation is undone in memory before the caller hears of it.
            recount = await shard.recount()  # under the shard lock, then at once:
            assert shard.counters() == recount
            if model_check:
                self.check_statistics(shard)
            return False, None

    # -- checking the shard against the model ------------------------------------------------

    async def check_shard(self, shard: JobShard) -> None:
        for job_id, candidates in sorted(self.uncertain.items()):
            actual = await self.observe(shard, job_id)
            matches = [c for c in candidates if self.same(actual, c)]
            assert matches, f"{job_id}: {actual} is none of {candidates}"
            if matches[0] is None:
                self.jobs.pop(job_id, None)
            else:
                self.jobs[job_id] = matches[0]
        self.uncertain.clear()
        for job_id, job in sorted(self.jobs.items()):
            actual = await self.observe(shard, job_id)
            assert self.same(actual, job), f"{job_id}: shard has {actual}, model {job}"
        for job_id in sorted(self.deleted):
            with pytest.raises(NotFound):
                await shard.get_job(T, job_id)
        recount = await shard.recount()  # under the shard lock, then at once:
        assert shard.counters() == recount
        self.check_statistics(shard)

    def check_statistics(self, shard: JobShard) -> None:
        stats = shard.statistics()
        now = self.clock.ms
        by_status = {s.name: 0 for s in JobStatus}
        for job in self.jobs.values():
            by_status[job.status.name] += 1
        assert stats.jobs_total == len(self.jobs)
        assert stats.jobs_by_status == by_status
        assert stats.leases_held == sum(1 for j in self.jobs.values() if j.lease)
        scheduled = [j for j in self.jobs.values() if j.status == S.SCHEDULED]
        due = sum(1 for j in scheduled if j.due is not None and j.due <= now)
        assert stats.due_tasks_per_task_group == ({GROUP: due} if due else {})
        assert stats.scheduled_future_tasks == len(scheduled) - due

    async def observe(self, shard: JobShard, job_id: str) -> tuple | None:
        try:
            view = await shard.get_job(T, job_id)
        except NotFound:
            return None
        s = view.state
        return (s.status, view.cancelled_at_ms is not None, s.attempt, s.run_attempts,
                s.next_attempt_at_ms, s.lease_task_id, s.undelivered)

    @staticmethod
    def same(actual: tuple | None, job: MJob | None) -> bool:
        if actual is None or job is None:
            return actual is None and job is None
        lease_task = job.lease.task_id if job.lease else None
        return actual == (job.status, job.cancelled, job.attempt, job.run_attempts, job.due,
                          lease_task, job.undelivered)

    # -- helpers -----------------------------------------------------------------------------

    def pick(self, ids: list[str], idx: int) -> str:
        return sorted(ids)[idx % len(ids)]

    def running(self) -> list[str]:
        return [j for j, job in self.jobs.items() if job.lease is not None]

    def new_ids(self, n: int) -> list[str]:
        ids = [f"job-{self.next_id + i:04d}" for i in range(n)]
        self.next_id += n
        return ids

    # -- rules -------------------------------------------------------------------------------

    @rule(
        specs=st.lists(
            st.tuples(st.sampled_from([0, 50, 99]), st.integers(0, 2),
                      st.sampled_from([0, 0, 2000])),
            min_size=1, max_size=3,
        )
    )
    def enqueue(self, specs: list[tuple[int, int, int]]) -> None:
        ids = self.new_ids(len(specs))
        now = self.clock.ms
        jobs = [
            NewJob(GROUP, b"payload", T, job_id, prio, now + delay if delay else 0,
                   RetryPolicy(retries, INITIAL_BACKOFF_MS, 60_000, 2.0, False))
            for job_id, (prio, retries, delay) in zip(ids, specs, strict=True)
        ]

        async def body(shard: JobShard) -> None:
            ok, got = await self.attempt(shard, shard.enqueue_batch(jobs))
            if ok:
                assert got == ids
                for job_id, (prio, retries, delay) in zip(ids, specs, strict=True):
                    self.jobs[job_id] = MJob(job_id, prio, retries, S.SCHEDULED, due=now + delay)

        self.session(body)

    @rule(max_tasks=st.integers(1, 4), worker=st.sampled_from(WORKERS))
    def lease(self, max_tasks: int, worker: str) -> None:
        now = self.clock.ms
        due = sorted(
            (j for j in self.jobs.values() if j.status == S.SCHEDULED and j.due <= now),
            key=lambda j: (j.priority, j.due, j.job_id),
        )
        expected = due[:max_tasks]

        async def body(shard: JobShard) -> None:
            ok, tasks = await self.attempt(shard, shard.lease_tasks(worker, GROUP, max_tasks))
            if not ok:
                return
            assert [(t.job_id, t.attempt) for t in tasks] == [
                (j.job_id, j.attempt) for j in expected
            ]
            for t, job in zip(tasks, expected, strict=True):
                assert t.lease_expiry_ms == now + LEASE_MS
                self.jobs[job.job_id] = replace(
                    job, status=S.RUNNING, due=None, run_attempts=job.run_attempts + 1,
                    lease=MLease(t.task_id, worker, t.attempt, now + LEASE_MS),
                )

        self.session(body)

    @precondition(lambda self: self.running())
    @rule(idx=st.integers(0, 1000), wrong_worker=st.booleans())
    def heartbeat(self, idx: int, wrong_worker: bool) -> None:
        job = self.jobs[self.pick(self.running(), idx)]
        lease = job.lease
        assert lease is not None
        now = self.clock.ms

        async def body(shard: JobShard) -> None:
            if wrong_worker:
                with pytest.raises(FailedPrecondition, match="lease owner mismatch"):
                    await shard.heartbeat("intruder", lease.task_id)
                return
            ok, hb = await self.attempt(shard, shard.heartbeat(lease.worker, lease.task_id))
            if ok:
                expiry = max(now + LEASE_MS, lease.expiry)
                assert (hb.cancelled, hb.lease_expiry_ms) == (job.cancelled, expiry)
                self.jobs[job.job_id] = replace(job, lease=replace(lease, expiry=expiry,
                                                                   acked=True))

        self.session(body)

    @precondition(lambda self: self.running())
    @rule(idx=st.integers(0, 1000), kind=st.sampled_from(["success", "failure", "cancelled"]),
          wrong_worker=st.booleans())
    def report(self, idx: int, kind: str, wrong_worker: bool) -> None:
        job = self.jobs[self.pick(self.running(), idx)]
        lease = job.lease
        assert lease is not None
        outcome = {"success": Success(b"r"), "failure": Failure("E", b"d"),
                   "cancelled": Cancelled()}[kind]
        worker = "intruder" if wrong_worker else lease.worker
        rep = OutcomeReport(worker, lease.task_id, outcome, T, job.job_id, lease.attempt)
        now = self.clock.ms

        async def body(shard: JobShard) -> None:
            if wrong_worker:
                with pytest.raises(FailedPrecondition, match="lease owner mismatch"):
                    await shard.report_outcome(rep)
                return
            ok, _ = await self.attempt(shard, shard.report_outcome(rep))
            if ok:
                self.jobs[job.job_id] = after_report(job, outcome, now)
                self.ended.append((rep, False))

        self.session(body)

    @precondition(lambda self: self.ended)
    @rule(idx=st.integers(0, 1000), same=st.booleans())
    def repeat_report(self, idx: int, same: bool) -> None:
        rep, reaped = self.ended[idx % len(self.ended)]
        reaped = reaped or rep.job_id in self.deleted  # no record of the attempt is left
        if not same:
            other = Success(b"other") if not isinstance(rep.outcome, Success) else Cancelled()
            rep = replace(rep, outcome=other)

        async def body(shard: JobShard) -> None:
            if same and not reaped:
                await shard.report_outcome(rep)  # idempotent: no write, no change
            else:
                with pytest.raises(NotFound, match="lease not found"):
                    await shard.report_outcome(rep)

        self.session(body)

    def _job_op(self, op: str, idx: int) -> None:
        ids = sorted(self.jobs) + sorted(self.deleted)
        job_id = ids[idx % len(ids)]
        job = self.jobs.get(job_id)
        now = self.clock.ms
        if job is None:
            new, refused = None, False
        elif op == "cancel":
            new = after_cancel(job)
            refused = new is None
        elif op == "restart":
            refused = job.status not in (S.FAILED, S.CANCELLED)
            new = None if refused else replace(
                job, status=S.SCHEDULED, cancelled=False, run_attempts=0, undelivered=0,
                attempt=job.attempt + 1, due=now)
        elif op == "expedite":
            refused = job.status != S.SCHEDULED
            new = None if refused else replace(job, due=min(job.due, now))
        else:  # delete
            refused = not job.status.terminal
            new = None

        async def body(shard: JobShard) -> None:
            call = getattr(shard, op)(T, job_id)
            if job is None:
                with pytest.raises(NotFound):
                    await call
            elif refused:
                with pytest.raises(FailedPrecondition):
                    await call
            else:
                ok, _ = await self.attempt(shard, call)
                if ok and op == "delete":
                    del self.jobs[job_id]
                    self.deleted.add(job_id)
                elif ok:
                    assert new is not None
                    self.jobs[job_id] = new

        self.session(body)

    @precondition(lambda self: self.jobs or self.deleted)
    @rule(op=st.sampled_from(["cancel", "restart", "expedite", "delete"]),
          idx=st.integers(0, 1000))
    def job_operation(self, op: str, idx: int) -> None:
        self._job_op(op, idx)

    @rule(ms=st.sampled_from([500, 1000, 4000, LEASE_MS, 61_000]))
    def advance_clock(self, ms: int) -> None:
        """Time passes; the reaper and the timer catch up (as the shard's loops would)."""

        async def body(shard: JobShard) -> None:
            # Wall time moves only now, after the open: the shard's loops, asleep on trio time,
            # do not notice, so the model decides what was reaped.
            self.clock.ms += ms
            now = self.clock.ms
            # Once with faults (a failed reap or promote must change nothing) ...
            await self.attempt(shard, shard.reap_expired(), model_check=False)
            await self.attempt(shard, shard.promote_due(), model_check=False)
            # ... then until done, with faults paused so that everything due really is done
            # before the session ends: the shard's own loops, woken when a failed write made it
            # reload, may be doing the same, and must not leave a write of theirs failing late.
            self.faults.enabled = False
            try:
                await shard.reap_expired()
                await shard.promote_due()
                await trio.sleep(1.0)  # longer than the loops' back-off after a failed write
            finally:
                self.faults.enabled = True
            expired = sorted(
                (j for j in self.jobs.values() if j.lease and j.lease.expiry <= now),
                key=lambda j: (j.lease.expiry, j.lease.task_id),
            )
            for job in expired:
                lease = job.lease
                self.jobs[job.job_id] = after_expiry(job, now)
                rep = OutcomeReport(lease.worker, lease.task_id, Cancelled(), T, job.job_id,
                                    lease.attempt)
                self.ended.append((rep, True))
            self.check_statistics(shard)

        self.session(body)

    @rule(kind=st.sampled_from(["enqueue", "report", "cancel"]),
          when=st.sampled_from(["in-flight", "after-ack"]), idx=st.integers(0, 1000))
    def crash(self, kind: str, when: str, idx: int) -> None:
        """Start one operation and crash the disk while its write is in flight, or just after
        it was acknowledged."""
        now = self.clock.ms
        if kind == "report" and self.running():
            job = self.jobs[self.pick(self.running(), idx)]
            lease = job.lease
            assert lease is not None
            rep = OutcomeReport(lease.worker, lease.task_id, Success(b"r"), T, job.job_id,
                                lease.attempt)
            job_id, before, after = job.job_id, job, after_report(job, Success(), now)
            op = lambda shard: shard.report_outcome(rep)  # noqa: E731
        elif kind == "cancel" and self.jobs and after_cancel(
            self.jobs[self.pick(list(self.jobs), idx)]
        ):
            job_id = self.pick(list(self.jobs), idx)
            before = self.jobs[job_id]
            after = after_cancel(before)
            op = lambda shard: shard.cancel(T, job_id)  # noqa: E731
        else:
            (job_id,) = self.new_ids(1)
            before, after = None, MJob(job_id, 50, 0, S.SCHEDULED, due=now)
            op = lambda shard: shard.enqueue(NewJob(GROUP, b"p", T, job_id))  # noqa: E731
        acked: list[bool] = []

        async def body(shard: JobShard) -> None:
            async def run_op() -> None:
                try:
                    await op(shard)
                    acked.append(True)
                except (SiloError, DiskError):
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_op)
                delay = WRITE_LATENCY_S / 2 if when == "in-flight" else WRITE_LATENCY_S * 2.5
                await trio.sleep(delay)
                self.disk.crash()

        self.session(body, crash=True)
        if acked:
            self.jobs[job_id] = after
        else:
            assert when == "in-flight" or self.FAULT_RATE > 0
            self.uncertain[job_id] = [before, after]
            self.session(self.nothing)  # restart: the open resolves what survived

    @staticmethod
    async def nothing(shard: JobShard) -> None:
        pass

    @invariant()
    def nothing_left_open(self) -> None:
        assert self.disk.open_paths() == []

    def teardown(self) -> None:
        self.session(self.nothing)  # one last reopen and full check
        items = self.disk.durable_items(PATH)
        for job_id in sorted(self.deleted):  # only the attempt high-water mark of the id stays
            assert [p for p, _ in keys_mentioning(items, job_id)] == [Prefix.ATTEMPT_HIGH_WATER]


SETTINGS = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

TestShardMachine = ShardMachine.TestCase
TestShardMachine.settings = SETTINGS


class FaultyShardMachine(ShardMachine):
    """The same programs with 15% of store writes failing."""

    FAULT_RATE = 0.15

    def teardown(self) -> None:
        self.faults.enabled = False
        super().teardown()


TestFaultyShardMachine = FaultyShardMachine.TestCase
TestFaultyShardMachine.settings = SETTINGS


class PagedShardMachine(FaultyShardMachine):
    """The faulty programs with timers paged a row at a time (at most 2 or 3 in memory)."""

    CONFIG = replace(CONFIG, timer_page_rows=1, timer_memory_rows=3, timer_lookahead_ms=0)


TestPagedShardMachine = PagedShardMachine.TestCase
TestPagedShardMachine.settings = SETTINGS
