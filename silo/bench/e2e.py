"""End-to-end benchmark: a real server process, enqueues over gRPC, W worker processes.

Phases: (1) N jobs enqueued one RPC per job (64 concurrent callers), (2) N more with batch RPCs,
(3) W worker processes complete all 2N no-op jobs; processing rate is measured from the first
lease to the last acknowledged completion, across processes (wall clock). Exactly-once is
checked from the workers' own record of the jobs they ran (every job once, none twice) and from
the server's counters (no job leased twice, all succeeded).

``--cli-defaults`` runs the users' defaults instead: single enqueues from one sequential caller,
and the workers are ``silo worker`` processes with every CLI default (concurrency 10, info
logging to a file) running :func:`log_handler`, which appends one line per job to a log;
processing is timed from the first handler start to the moment the server counts the last
success (polled every 10 ms).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass

import trio

SINGLE_CONCURRENCY = 64
BATCH_SIZE = 500
BATCH_CONCURRENCY = 4
WORKER_CONCURRENCY = 512


@dataclass
class E2EResult:
    jobs: int
    workers: int
    enqueue_single_per_s: float
    enqueue_batch_per_s: float
    processing_per_s: float
    exactly_once: bool
    detail: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric_sum(http: str, name: str, label: str = "") -> float:
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not label or label in line) and not line.startswith("#"):
            rest = line[len(name) :]
            if rest[:1] in ("{", " "):
                total += float(line.rsplit(" ", 1)[1])
    return total


LOG_ENV = "SILO_BENCH_LOG"
"""The environment variable naming the log file prefix of :func:`log_handler`."""


async def log_handler(ctx):  # type: ignore[no-untyped-def]
    """The ``--cli-defaults`` handler: append "<start time> <job id>" to this process's log."""
    with open(f"{os.environ[LOG_ENV]}.{os.getpid()}", "a") as f:
        f.write(f"{time.time():.6f} {ctx.job_id}\n")


async def _enqueue(
    address: str, jobs: int, single_concurrency: int = SINGLE_CONCURRENCY
) -> tuple[list[str], float, float]:
    from silo.client import SiloClient
    from silo.model import NewJob

    ids: list[str] = []
    async with SiloClient.connect(address) as client:
        single = [client.new_id() for _ in range(jobs)]
        t0 = time.perf_counter()

        async def caller(chunk: list[str]) -> None:
            for job_id in chunk:
                await client.enqueue("bench", None, id=job_id)

        async with trio.open_nursery() as nursery:
            for i in range(single_concurrency):
                nursery.start_soon(caller, single[i::single_concurrency])
        t1 = time.perf_counter()
        batch = [client.new_id() for _ in range(jobs)]
        chunks = [batch[i : i + BATCH_SIZE] for i in range(0, jobs, BATCH_SIZE)]

        async def batcher(my: list[list[str]]) -> None:
            for chunk in my:
                # All default-tenant jobs live on one shard: one EnqueueBatch RPC per chunk.
                await client.enqueue_jobs([NewJob("bench", b"", job_id=j) for j in chunk])

        t2 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(BATCH_CONCURRENCY):
                nursery.start_soon(batcher, chunks[i::BATCH_CONCURRENCY])
        t3 = time.perf_counter()
        ids = single + batch
    return ids, jobs / (t1 - t0), jobs / (t3 - t2)


def worker_main(address: str, out_path: str) -> None:
    """One worker process: run no-op jobs until SIGINT, then write what it did to out_path."""
    from silo.client import SiloClient, Worker

    seen: list[str] = []
    marks = {"first_lease": 0.0, "last_report": 0.0}

    def observe(kind: str, n: int) -> None:
        now = time.time()
        if kind == "leased" and not marks["first_lease"]:
            marks["first_lease"] = now
        if kind == "reported":
            marks["last_report"] = now

    async def handler(ctx):  # type: ignore[no-untyped-def]
        seen.append(ctx.job_id)

    async def main() -> None:
        async with SiloClient.connect(address) as client:
            worker = Worker(client, "bench", handler, max_concurrent_tasks=WORKER_CONCURRENCY,
                            observer=observe, lease_wait_ms=1000)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.run)
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
                worker.stop(5)

    trio.run(main)
    with open(out_path, "w") as f:
        json.dump({"ids": seen, **marks}, f)


def run_e2e(jobs: int, workers: int, cli_defaults: bool = False) -> E2EResult:
    tmp = tempfile.mkdtemp(prefix="silo-e2e-")
    grpc, http = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "silo", "serve", "--data-dir", f"{tmp}/data",
         "--grpc-addr", grpc, "--http-addr", http, "--log-level", "warning"],
        env=env,
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.time() + 30
        while True:
            try:
                _metric_sum(http, "silo_jobs_enqueued_total")
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.1)
        ids, single_rate, batch_rate = trio.run(
            _enqueue, grpc, jobs, 1 if cli_defaults else SINGLE_CONCURRENCY
        )
        if cli_defaults:
            return _process_with_cli(tmp, grpc, http, env, ids, workers, procs, single_rate,
                                     batch_rate)
        outs = [f"{tmp}/worker{i}.json" for i in range(workers)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "silo.bench", "e2e-worker", "--address", grpc,
                 "--out", out], env=env,
            )
            for out in outs
        ]
        deadline = time.time() + max(120, jobs / 100)
        total = len(ids)
        while _metric_sum(http, "silo_jobs_completed_total", 'outcome="succeeded"') < total:
            if time.time() > deadline:
                raise RuntimeError("workers did not finish in time")
            time.sleep(0.05)
        leased = _metric_sum(http, "silo_tasks_leased_total")
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(timeout=60)
        results = []
        for out in outs:
            with open(out) as f:
                results.append(json.load(f))
        done = [j for r in results for j in r["ids"]]
        first = min(r["first_lease"] for r in results if r["first_lease"])
        last = max(r["last_report"] for r in results)
        once = sorted(done) == sorted(ids) and leased == total
        detail = f"ran {len(done)} of {total}, distinct {len(set(done))}, leased {leased:.0f}"
        return E2EResult(jobs, workers, single_rate, batch_rate, total / (last - first), once,
                         detail)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _process_with_cli(
    tmp: str, grpc: str, http: str, env: dict[str, str], ids: list[str], workers: int,
    procs: list[subprocess.Popen[bytes]], single_rate: float, batch_rate: float,
) -> E2EResult:
    """Drain ``ids`` with ``silo worker`` processes at their defaults (appended to ``procs``,
    which the caller kills on error)."""
    log_prefix = f"{tmp}/handled"
    worker_env = {**env, LOG_ENV: log_prefix}
    for i in range(workers):
        with open(f"{tmp}/worker{i}.log", "w") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "silo", "worker", "silo.bench.e2e:log_handler",
                 "--task-group", "bench", "--address", grpc],
                env=worker_env, stdout=out, stderr=subprocess.STDOUT,
            ))
    deadline = time.time() + max(120, len(ids) / 100)
    total = len(ids)
    while _metric_sum(http, "silo_jobs_completed_total", 'outcome="succeeded"') < total:
        if time.time() > deadline:
            raise RuntimeError("workers did not finish in time")
        time.sleep(0.01)
    last = time.time()
    leased = _metric_sum(http, "silo_tasks_leased_total")
    for p in procs:
        p.send_signal(signal.SIGINT)
    for p in procs:
        p.wait(timeout=60)
    lines: list[tuple[float, str]] = []
    for name in os.listdir(tmp):
        if name.startswith("handled."):
            with open(f"{tmp}/{name}") as f:
                for line in f:
                    at, job_id = line.split()
                    lines.append((float(at), job_id))
    done = [j for _, j in lines]
    first = min(at for at, _ in lines)
    once = sorted(done) == sorted(ids) and leased == total
    detail = f"ran {len(done)} of {total}, distinct {len(set(done))}, leased {leased:.0f}"
    return E2EResult(len(ids) // 2, workers, single_rate, batch_rate, total / (last - first),
                     once, detail)


def print_e2e(r: E2EResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"e2e: {r.jobs} + {r.jobs} jobs, {r.workers} worker processes")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("enqueue jobs/s (single)", f"{r.enqueue_single_per_s:,.0f}")
    table.add_row("enqueue jobs/s (batch)", f"{r.enqueue_batch_per_s:,.0f}")
    table.add_row("processing jobs/s", f"{r.processing_per_s:,.0f}")
    table.add_row("completed exactly once", "yes" if r.exactly_once else f"NO ({r.detail})")
    Console().print(table)
    print(f"e2e_jobs_per_s={r.processing_per_s:.0f}")
