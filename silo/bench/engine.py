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

from silo.model import NewJob, OutcomeReport, Success
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


async def _run(jobs: int, workers: int, path: str) -> EngineResult:
    rt = real_runtime()
    async with open_shard(rt, path, config=ShardConfig(lease_ms=60_000)) as shard:
        t0 = time.perf_counter()

        async def producer(lo: int, hi: int) -> None:
            for i in range(lo, hi, ENQUEUE_BATCH):
                batch = range(i, min(hi, i + ENQUEUE_BATCH))
                await shard.enqueue_batch([NewJob("bench", b"\x80", job_id=f"j{j}") for j in batch])

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
        jobs, workers, jobs / (t1 - t0), jobs / (t2 - t1), jobs / (t2 - t0),
        stats.synced_writes / jobs, rss,
    )


def run_engine(jobs: int, workers: int) -> EngineResult:
    tmp = tempfile.mkdtemp(prefix="silo-bench-")
    try:
        return trio.run(_run, jobs, workers, tmp + "/shard")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
