"""One pgqueuer round of the peers benchmark (see :mod:`silo.bench.peers`).

A fresh database per round in the throwaway cluster, with pgqueuer's schema installed by its
own CLI (``pgq install``, durable logging: its default). (a) single: N sequential
``Queries.enqueue`` calls over one asyncpg connection, to entrypoint ``bench-single`` (no
worker serves it); (b) bulk: N jobs in sequential ``Queries.enqueue`` calls with lists of
``batch`` jobs, entrypoint ``bench``; (c) processing: two ``pgq run --mode drain`` processes
with the CLI's defaults run the bulk jobs and exit when the queue is empty. Then the store is
read: every bulk job must have exactly one ``successful`` row in ``pgqueuer_log``, none may
have another final status, and none may be left in the queue. The processing time runs from
the first handler start (job log) to the latest ``successful`` row's ``created`` time.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from silo.bench.joblog import JOB_LOG_ENV, read_job_log
from silo.bench.peer_handlers import PGQUEUER_ENTRYPOINT
from silo.bench.pgcluster import PostgresCluster
from silo.bench.procs import child_env, spawn, stop_process, tail
from silo.bench.progress import Progress
from silo.bench.rounds import RoundResult, phase_timeout_s

SINGLE_ENTRYPOINT = "bench-single"
CLI_TIMEOUT_S = 120.0
POLL_S = 0.1


async def _connect(dsn: str) -> Any:
    import asyncpg

    return await asyncpg.connect(dsn, timeout=30)


async def _create_database(cluster: PostgresCluster, name: str) -> None:
    conn = await _connect(cluster.dsn())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def _queries(conn: Any) -> Any:
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    return Queries(AsyncpgDriver(conn))


async def _single(dsn: str, jobs: int, progress: Progress) -> float:
    conn = await _connect(dsn)
    try:
        q = _queries(conn)
        async with asyncio.timeout(phase_timeout_s(jobs)):
            t0 = time.perf_counter()
            for i in range(jobs):
                await q.enqueue(SINGLE_ENTRYPOINT, None)
                progress.tick(i + 1)
            return time.perf_counter() - t0
    finally:
        await conn.close()


async def _bulk(dsn: str, jobs: int, batch: int, progress: Progress) -> tuple[list[str], float]:
    conn = await _connect(dsn)
    ids: list[str] = []
    try:
        q = _queries(conn)
        async with asyncio.timeout(phase_timeout_s(jobs)):
            t0 = time.perf_counter()
            for lo in range(0, jobs, batch):
                n = min(batch, jobs - lo)
                got = await q.enqueue([PGQUEUER_ENTRYPOINT] * n, [None] * n, [0] * n)
                ids += [str(j) for j in got]
                progress.tick(lo + n)
            return ids, time.perf_counter() - t0
    finally:
        await conn.close()


async def _read_back(dsn: str, ids: list[str]) -> tuple[int, float | None, str]:
    """(jobs with exactly one ``successful`` log row and no other final row and nothing left
    in the queue, latest ``successful`` time in Unix seconds, a description of problems)."""
    conn = await _connect(dsn)
    try:
        async with asyncio.timeout(CLI_TIMEOUT_S):
            rows = await conn.fetch(
                "SELECT job_id, status::text AS status, "
                "extract(epoch FROM created)::float8 AS created_s "
                "FROM pgqueuer_log WHERE entrypoint = $1", PGQUEUER_ENTRYPOINT)
            left = await conn.fetchval(
                "SELECT count(*) FROM pgqueuer WHERE entrypoint = $1", PGQUEUER_ENTRYPOINT)
    finally:
        await conn.close()
    successful: Counter[str] = Counter()
    other_final: Counter[str] = Counter()
    last: float | None = None
    for row in rows:
        job_id = str(row["job_id"])
        if row["status"] == "successful":
            successful[job_id] += 1
            last = row["created_s"] if last is None else max(last, row["created_s"])
        elif row["status"] not in ("queued", "picked"):
            other_final[job_id] += 1
    good = sum(1 for j in ids if successful[j] == 1 and not other_final[j])
    problems = []
    if left:
        problems.append(f"{left} jobs left in the queue")
    if other_final:
        problems.append(f"{sum(other_final.values())} rows with another final status")
    extra = sum(n for j, n in successful.items() if j not in set(ids))
    if extra:
        problems.append(f"{extra} successful rows for jobs not enqueued")
    return good, last, "; ".join(problems)


def _wait_workers(procs: list[subprocess.Popen[bytes]], timeout_s: float,
                  progress: Progress, log_path: str) -> None:
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in procs):
        if time.monotonic() > deadline:
            raise RuntimeError(f"pgqueuer drain workers did not exit within {timeout_s:.0f} s")
        progress.tick(_count_lines(log_path))
        time.sleep(POLL_S)


def _count_lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def run_pgqueuer_round(tmp: str, cluster: PostgresCluster, round_no: int, jobs: int, batch: int,
                       workers: int, say: Progress.Say) -> RoundResult:
    """One round on a fresh database of ``cluster`` (see the module docstring)."""
    database = f"bench_r{round_no}"
    dsn = cluster.dsn(database)
    asyncio.run(_create_database(cluster, database))
    env = child_env(PGDSN=dsn)
    install_log = os.path.join(tmp, f"pgqueuer-r{round_no}-install.log")
    proc = spawn([sys.executable, "-m", "pgqueuer", "install"], install_log, env=env, cwd=tmp)
    try:
        code = proc.wait(timeout=CLI_TIMEOUT_S)
    finally:
        stop_process(proc, timeout_s=5)
    if code != 0:
        raise RuntimeError(f"pgq install failed ({code}): {tail(install_log)}")
    single_s = asyncio.run(_single(dsn, jobs, Progress(say, "pgqueuer single", jobs)))
    ids, bulk_s = asyncio.run(_bulk(dsn, jobs, batch, Progress(say, "pgqueuer bulk", jobs)))
    log_path = os.path.join(tmp, f"pgqueuer-r{round_no}-jobs.log")
    worker_env = {**env, JOB_LOG_ENV: log_path}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for w in range(workers):
            procs.append(spawn(
                [sys.executable, "-m", "pgqueuer", "run",
                 "silo.bench.peer_handlers:pgqueuer_factory", "--mode", "drain"],
                os.path.join(tmp, f"pgqueuer-r{round_no}-worker{w}.log"), env=worker_env,
                cwd=tmp))
        _wait_workers(procs, phase_timeout_s(jobs), Progress(say, "pgqueuer processing", jobs),
                      log_path)
    finally:
        for p in procs:
            stop_process(p, timeout_s=30)
    codes = [p.returncode for p in procs]
    good, last_s, problems = asyncio.run(_read_back(dsn, ids))
    log = read_job_log(log_path, ids)
    processing_s = (last_s - log.first_start_s
                    if last_s is not None and log.first_start_s is not None else None)
    detail = f"log: {log.describe()}; store: {good} of {jobs} successful once"
    if problems:
        detail += f" ({problems})"
    if any(c != 0 for c in codes):
        detail += (f"; worker exit codes {codes}: "
                   f"{tail(os.path.join(tmp, f'pgqueuer-r{round_no}-worker0.log'), 500)}")
    return RoundResult(
        library="pgqueuer", round_no=round_no, jobs=jobs,
        single_per_s=jobs / single_s, bulk_per_s=jobs / bulk_s,
        processing_per_s=jobs / processing_s if processing_s and processing_s > 0 else None,
        exactly_once=log.exactly_once and good == jobs and not problems, detail=detail,
    )
