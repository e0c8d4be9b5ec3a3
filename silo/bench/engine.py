"""Engine benchmark: N jobs through enqueue -> lease -> complete on one LevelDB shard.

Synced writes stay on (the production setting). Three timed phases, each with W concurrent
callers: enqueue every job (batches of 100), lease every job (batches of 100, leases held), then
complete every leased task (reports of 100). Each phase reports jobs/s and wall-clock
microseconds per job; the lifecycle is the three together (µs/job of the lifecycle is the sum).
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from dataclasses import dataclass

import trio

from silo.model import ConcurrencyLimit, NewJob, OutcomeReport, Success
from silo.runtime import real_runtime
from silo.shard import ShardConfig, open_shard

ENQUEUE_BATCH = 100
LEASE_BATCH = 100


@dataclass
class EngineResult:
    jobs: int
    workers: int
    enqueue_s: float
    lease_s: float
    complete_s: float
    synced_writes_per_job: float
    peak_rss_mib: float

    @property
    def lifecycle_s(self) -> float:
        return self.enqueue_s + self.lease_s + self.complete_s

    def us_per_job(self, seconds: float) -> float:
        return seconds * 1e6 / self.jobs

    @property
    def enqueue_jobs_per_s(self) -> float:
        return self.jobs / self.enqueue_s

    @property
    def lease_jobs_per_s(self) -> float:
        return self.jobs / self.lease_s

    @property
    def complete_jobs_per_s(self) -> float:
        return self.jobs / self.complete_s

    @property
    def lease_complete_jobs_per_s(self) -> float:
        return self.jobs / (self.lease_s + self.complete_s)

    @property
    def lifecycle_jobs_per_s(self) -> float:
        return self.jobs / self.lifecycle_s


LIMIT_QUEUES = 1000
LIMIT_MAX = 10


def _job_limits(i: int, with_limits: bool) -> tuple[ConcurrencyLimit, ...]:
    if not with_limits:
        return ()
    return (ConcurrencyLimit(f"q{i % LIMIT_QUEUES}", LIMIT_MAX),)


async def _run(jobs: int, workers: int, path: str, with_limits: bool = False) -> EngineResult:
    rt = real_runtime()
    async with open_shard(rt, path, config=ShardConfig(lease_ms=60_000)) as shard:
        t0 = time.perf_counter()

        async def producer(lo: int, hi: int) -> None:
            for i in range(lo, hi, ENQUEUE_BATCH):
                batch = range(i, min(hi, i + ENQUEUE_BATCH))
                await shard.enqueue_batch(
                    [
                        NewJob("bench", b"\x80", job_id=f"j{j}", limits=_job_limits(j, with_limits))
                        for j in batch
                    ]
                )

        async with trio.open_nursery() as nursery:
            per = (jobs + workers - 1) // workers
            for w in range(workers):
                nursery.start_soon(producer, w * per, min(jobs, (w + 1) * per))
        t1 = time.perf_counter()
        leased: list[list[OutcomeReport]] = [[] for _ in range(workers)]
        remaining = jobs

        async def leaser(n: int) -> None:
            nonlocal remaining
            wid = f"w{n}"
            while remaining > 0:
                tasks = await shard.lease_tasks(wid, "bench", min(LEASE_BATCH, remaining))
                if not tasks:
                    await trio.sleep(0.001)
                    continue
                remaining -= len(tasks)
                leased[n].extend(OutcomeReport(wid, t.task_id, Success(b"")) for t in tasks)

        async with trio.open_nursery() as nursery:
            for w in range(workers):
                nursery.start_soon(leaser, w)
        t2 = time.perf_counter()

        async def completer(reports: list[OutcomeReport]) -> None:
            for i in range(0, len(reports), LEASE_BATCH):
                errors = await shard.report_outcomes(reports[i : i + LEASE_BATCH])
                assert not any(errors), errors

        async with trio.open_nursery() as nursery:
            for w in range(workers):
                nursery.start_soon(completer, leased[w])
        t3 = time.perf_counter()
        stats = shard.statistics()
        assert stats.jobs_by_status["SUCCEEDED"] == jobs, stats
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return EngineResult(
        jobs,
        workers,
        t1 - t0,
        t2 - t1,
        t3 - t2,
        stats.synced_writes / jobs,
        rss,
    )


def run_engine(jobs: int, workers: int, with_limits: bool = False) -> EngineResult:
    tmp = tempfile.mkdtemp(prefix="silo-bench-")
    try:
        return trio.run(_run, jobs, workers, tmp + "/shard", with_limits)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_limits_comparison(plain: EngineResult, limited: EngineResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"engine --limits: {plain.jobs} jobs, {plain.workers} workers; one concurrency "
        f"limit (max {LIMIT_MAX}) over {LIMIT_QUEUES} queue keys vs none"
    )
    table.add_column("metric")
    table.add_column("no limits", justify="right")
    table.add_column("with limit", justify="right")
    for (name, a), (_, b) in zip(_rows(plain), _rows(limited), strict=True):
        table.add_row(name, a, b)
    Console().print(table)
    print(f"lifecycle_jobs_per_s={plain.lifecycle_jobs_per_s:.0f}")
    print(f"limited_lifecycle_jobs_per_s={limited.lifecycle_jobs_per_s:.0f}")


def print_engine(result: EngineResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"engine: {result.jobs} jobs, {result.workers} workers, synced writes")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in _rows(result):
        table.add_row(name, value)
    table.add_row("peak RSS MiB", f"{result.peak_rss_mib:,.0f}")
    Console().print(table)
    print(
        f"lifecycle_jobs_per_s={result.lifecycle_jobs_per_s:.0f} "
        f"us_per_job enqueue={result.us_per_job(result.enqueue_s):.1f} "
        f"lease={result.us_per_job(result.lease_s):.1f} "
        f"complete={result.us_per_job(result.complete_s):.1f} "
        f"lifecycle={result.us_per_job(result.lifecycle_s):.1f}"
    )


def _rows(r: EngineResult) -> list[tuple[str, str]]:
    """The table rows of one result: per operation, µs per job and jobs/s."""
    rows = []
    for name, seconds in (
        ("enqueue", r.enqueue_s),
        ("lease", r.lease_s),
        ("complete", r.complete_s),
        ("lifecycle", r.lifecycle_s),
    ):
        rows.append((f"{name} µs/job", f"{r.us_per_job(seconds):,.1f}"))
        rows.append((f"{name} jobs/s", f"{r.jobs / seconds:,.0f}"))
    rows.append(("synced writes per job", f"{r.synced_writes_per_job:.3f}"))
    return rows
