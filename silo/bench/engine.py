"""Engine benchmark: N jobs through enqueue -> lease -> complete on one LevelDB shard.

Synced writes stay on (the production setting); W workers lease in batches concurrently.
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
    enqueue_jobs_per_s: float
    lease_complete_jobs_per_s: float
    lifecycle_jobs_per_s: float
    synced_writes_per_job: float
    peak_rss_mib: float


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
        done = 0

        async def worker(n: int) -> None:
            nonlocal done
            wid = f"w{n}"
            while done < jobs:
                tasks = await shard.lease_tasks(wid, "bench", LEASE_BATCH)
                if not tasks:
                    await trio.sleep(0.001)
                    continue
                reports = [OutcomeReport(wid, t.task_id, Success(b"")) for t in tasks]
                errors = await shard.report_outcomes(reports)
                assert not any(errors), errors
                done += len(tasks)

        async with trio.open_nursery() as nursery:
            for w in range(workers):
                nursery.start_soon(worker, w)
        t2 = time.perf_counter()
        stats = shard.statistics()
        assert stats.jobs_by_status["SUCCEEDED"] == jobs, stats
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return EngineResult(
        jobs,
        workers,
        jobs / (t1 - t0),
        jobs / (t2 - t1),
        jobs / (t2 - t0),
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
    for name, attr in (
        ("enqueue jobs/s", "enqueue_jobs_per_s"),
        ("lease+complete jobs/s", "lease_complete_jobs_per_s"),
        ("lifecycle jobs/s", "lifecycle_jobs_per_s"),
        ("synced writes per job", "synced_writes_per_job"),
    ):
        a, b = getattr(plain, attr), getattr(limited, attr)
        fmt = "{:.3f}" if "writes" in name else "{:,.0f}"
        table.add_row(name, fmt.format(a), fmt.format(b))
    Console().print(table)
    print(f"lifecycle_jobs_per_s={plain.lifecycle_jobs_per_s:.0f}")
    print(f"limited_lifecycle_jobs_per_s={limited.lifecycle_jobs_per_s:.0f}")


def print_engine(result: EngineResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"engine: {result.jobs} jobs, {result.workers} workers, synced writes")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("enqueue jobs/s", f"{result.enqueue_jobs_per_s:,.0f}")
    table.add_row("lease+complete jobs/s", f"{result.lease_complete_jobs_per_s:,.0f}")
    table.add_row("lifecycle jobs/s", f"{result.lifecycle_jobs_per_s:,.0f}")
    table.add_row("synced writes per job", f"{result.synced_writes_per_job:.3f}")
    table.add_row("peak RSS MiB", f"{result.peak_rss_mib:,.0f}")
    Console().print(table)
    print(f"lifecycle_jobs_per_s={result.lifecycle_jobs_per_s:.0f}")
