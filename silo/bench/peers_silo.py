"""One silo round of the peers benchmark (see :mod:`silo.bench.peers`).

A fresh ``silo serve`` (defaults, temporary data directory) per round. (a) single: N
sequential ``SiloClient.enqueue`` calls from one client with its defaults, to task group
``bench-single`` (no worker serves it); (b) bulk: N jobs in sequential ``enqueue_jobs`` calls of
``batch`` jobs to task group ``bench``; (c) processing: two ``silo worker`` processes with the
CLI's defaults run the bulk jobs; the round waits for the server's completion counter, stops
the workers, and reads every job back: it must be SUCCEEDED with exactly one attempt. The
processing time runs from the first handler start (job log) to the latest attempt end the
store recorded.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import trio

from silo.bench.joblog import JOB_LOG_ENV, read_job_log
from silo.bench.procs import child_env, metric_sum, silo_server, spawn, stop_process, tail
from silo.bench.progress import Progress
from silo.bench.rounds import RoundResult, phase_timeout_s

SINGLE_GROUP = "bench-single"
BULK_GROUP = "bench"
READ_BACK_CONCURRENCY = 32
WORKER_STOP_TIMEOUT_S = 30.0


async def _single(address: str, jobs: int, progress: Progress) -> float:
    from silo.client import SiloClient

    async with SiloClient.connect(address) as client:
        with trio.fail_after(phase_timeout_s(jobs)):
            t0 = time.perf_counter()
            for i in range(jobs):
                await client.enqueue(SINGLE_GROUP, None)
                progress.tick(i + 1)
            return time.perf_counter() - t0


async def _bulk(address: str, jobs: int, batch: int, progress: Progress) -> tuple[list[str], float]:
    from silo.client import SiloClient
    from silo.client.types import pack
    from silo.model import NewJob

    async with SiloClient.connect(address) as client:
        ids = [client.new_id() for _ in range(jobs)]
        payload = pack(None)  # what enqueue(..., None) sends
        with trio.fail_after(phase_timeout_s(jobs)):
            t0 = time.perf_counter()
            for lo in range(0, jobs, batch):
                chunk = ids[lo:lo + batch]
                await client.enqueue_jobs([NewJob(BULK_GROUP, payload, job_id=j) for j in chunk])
                progress.tick(lo + len(chunk))
            return ids, time.perf_counter() - t0


async def _read_back(address: str, ids: list[str]) -> tuple[int, float | None, str]:
    """(jobs stored as succeeded with exactly one attempt, latest attempt end in Unix
    seconds, a description of the first few that are not)."""
    from silo.client import SiloClient
    from silo.model import AttemptState, JobStatus

    good = 0
    last_end_ms = 0
    problems: list[str] = []

    async with SiloClient.connect(address) as client:

        async def reader(share: list[str]) -> None:
            nonlocal good, last_end_ms
            for job_id in share:
                job = await client.job(job_id).get(attempts=2)
                attempts = job.attempts or ()
                ok = (job.status == JobStatus.SUCCEEDED and job.attempts_total == 1
                      and len(attempts) == 1 and attempts[0].state == AttemptState.SUCCEEDED)
                if ok:
                    good += 1
                    last_end_ms = max(last_end_ms, attempts[0].ended_at_ms or 0)
                elif len(problems) < 3:
                    problems.append(f"{job_id}: {job.status.name}, {job.attempts_total} attempts")

        with trio.fail_after(phase_timeout_s(len(ids))):
            async with trio.open_nursery() as nursery:
                for i in range(READ_BACK_CONCURRENCY):
                    nursery.start_soon(reader, ids[i::READ_BACK_CONCURRENCY])
    return good, (last_end_ms / 1000.0 if last_end_ms else None), "; ".join(problems)


def _wait_completed(http: str, total: int, procs: list, timeout_s: float,
                    progress: Progress) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        done = metric_sum(http, "silo_jobs_completed_total", 'outcome="succeeded"')
        progress.tick(int(done))
        if done >= total:
            return
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a silo worker exited early with {p.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"silo workers completed {done:.0f} of {total} jobs within "
                               f"{timeout_s:.0f} s")
        time.sleep(0.05)


def run_silo_round(tmp: str, round_no: int, jobs: int, batch: int, workers: int,
                   say: Progress.Say) -> RoundResult:
    """One round against a fresh server in ``tmp`` (see the module docstring)."""
    with silo_server(tmp, f"silo-r{round_no}") as server:
        single_s = trio.run(_single, server.grpc, jobs, Progress(say, "silo single", jobs))
        ids, bulk_s = trio.run(_bulk, server.grpc, jobs, batch,
                               Progress(say, "silo bulk", jobs))
        log_path = os.path.join(tmp, f"silo-r{round_no}-jobs.log")
        env = child_env(**{JOB_LOG_ENV: log_path})
        procs = []
        try:
            for w in range(workers):
                procs.append(spawn(
                    [sys.executable, "-m", "silo", "worker",
                     "silo.bench.peer_handlers:silo_noop", "--task-group", BULK_GROUP,
                     "--address", server.grpc],
                    os.path.join(tmp, f"silo-r{round_no}-worker{w}.log"), env=env, cwd=tmp))
            _wait_completed(server.http, jobs, procs, phase_timeout_s(jobs),
                            Progress(say, "silo processing", jobs))
        finally:
            for p in procs:
                stop_process(p, signal.SIGINT, WORKER_STOP_TIMEOUT_S)
        codes = [p.returncode for p in procs]
        good, last_end_s, problems = trio.run(_read_back, server.grpc, ids)
    log = read_job_log(log_path, ids)
    store_ok = good == jobs
    processing_s = (last_end_s - log.first_start_s
                    if last_end_s is not None and log.first_start_s is not None else None)
    detail = f"log: {log.describe()}; store: {good} of {jobs} succeeded once"
    if problems:
        detail += f" ({problems})"
    if any(c not in (0, None) for c in codes):
        worker_log = os.path.join(tmp, f"silo-r{round_no}-worker0.log")
        detail += f"; worker exit codes {codes}: {tail(worker_log, 500)}"
    return RoundResult(
        library="silo", round_no=round_no, jobs=jobs,
        single_per_s=jobs / single_s, bulk_per_s=jobs / bulk_s,
        processing_per_s=jobs / processing_s if processing_s and processing_s > 0 else None,
        exactly_once=log.exactly_once and store_ok, detail=detail,
    )
