"""Latency benchmark: enqueue-to-handler-start latency at half the measured peak load.

One fresh ``silo serve`` (its defaults) and W ``silo worker`` processes at their CLI defaults
running :func:`silo.bench.peer_handlers.silo_noop`, which appends each job's id and handler
start time (Unix seconds) to the job log (:mod:`silo.bench.joblog`). Then:

1. peak: ``peak_jobs`` jobs enqueued as fast as the trio client goes with one job per call
   (``IN_FLIGHT_MAX`` calls in flight) while the workers run; the peak load is the rate the
   whole pipeline sustained, ``peak_jobs / (last handler start - first enqueue stamp)``;
2. for each client (trio :class:`~silo.client.SiloClient`, asyncio
   :class:`~silo.client.AsyncioSiloClient`, blocking :class:`~silo.client.BlockingSiloClient`):
   ``jobs`` jobs at half that rate, paced open-loop (job i is sent at ``t0 + i / rate``, one
   job per Enqueue call, at most ``IN_FLIGHT_MAX`` calls in flight), each stamped with
   ``time.time()`` just before its call. Its latency is its handler start minus that stamp
   (one machine, one clock), so it includes the enqueue call itself.

Bounded: each paced phase stops sending after ``max_seconds`` and every wait for the workers
is bounded. The achieved send rate is reported next to the target (a client that cannot keep
up falls behind instead of queueing unboundedly).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import trio

from silo.bench.joblog import JOB_LOG_ENV
from silo.bench.procs import child_env, metric_sum, silo_server, spawn, stop_process, tail

CLIENTS = ("trio", "asyncio", "blocking")
TASK_GROUP = "latency"
IN_FLIGHT_MAX = 64
WORKER_STOP_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LatencyConfig:
    jobs: int = 2000
    """Jobs per client in the paced phase."""
    peak_jobs: int = 2000
    workers: int = 2
    clients: tuple[str, ...] = CLIENTS
    load_fraction: float = 0.5
    """The paced rate as a fraction of the measured peak."""
    max_seconds: float = 30.0
    """Each paced phase stops sending after this long."""
    prefetch: int | None = None
    """``silo worker --prefetch`` (None: the CLI default)."""

    def check(self) -> None:
        if self.jobs < 1 or self.peak_jobs < 2 or self.workers < 1:
            raise ValueError("--jobs must be positive, --peak-jobs at least 2, --workers positive")
        if not 0 < self.load_fraction <= 1:
            raise ValueError("--load-fraction must be in (0, 1]")
        if not 0 < self.max_seconds <= 3600:
            raise ValueError("--max-seconds must be in (0, 3600]")
        unknown = [c for c in self.clients if c not in CLIENTS]
        if unknown or not self.clients:
            raise ValueError(f"--clients must name some of {', '.join(CLIENTS)}")
        if self.prefetch is not None and not 0 <= self.prefetch <= 1000:
            raise ValueError("--prefetch must be in 0..1000")


@dataclass
class ClientLatency:
    client: str
    sent: int
    target_per_s: float
    achieved_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    started: int
    """Jobs of this phase whose handler start was logged."""


@dataclass
class LatencyResult:
    config: dict[str, object]
    peak_per_s: float
    clients: list[ClientLatency] = field(default_factory=list)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    cpus: int = 0
    worker_settings: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of a non-empty sorted list."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, min(len(sorted_values), -(-len(sorted_values) * q // 100)))
    return sorted_values[int(rank) - 1]


def read_starts(path: str) -> dict[str, float]:
    """Job id -> its first logged handler start (an absent log is empty)."""
    starts: dict[str, float] = {}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    starts.setdefault(parts[0], float(parts[1]))
    except FileNotFoundError:
        pass
    return starts


def wait_started(path: str, ids: list[str], timeout_s: float,
                 procs: list[subprocess.Popen[bytes]]) -> dict[str, float]:
    """Poll the job log until every id in ``ids`` started (or raise after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        starts = read_starts(path)
        if all(i in starts for i in ids):
            return starts
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a silo worker exited early with {p.returncode}")
        if time.monotonic() > deadline:
            missing = sum(1 for i in ids if i not in starts)
            raise RuntimeError(f"{missing} of {len(ids)} jobs did not start within "
                               f"{timeout_s:.0f} s")
        time.sleep(0.02)


# -- enqueueing --------------------------------------------------------------------------------


Sent = tuple[dict[str, float], float]
"""Job id -> enqueue stamp, and the seconds the sending took."""


async def _enqueue_peak(address: str, n: int) -> dict[str, float]:
    """``n`` jobs, one per call, ``IN_FLIGHT_MAX`` calls at a time; job id -> enqueue stamp."""
    from silo.client import SiloClient

    stamps: dict[str, float] = {}
    async with SiloClient.connect(address) as client:
        await client.refresh_shard_map()
        ids = [client.new_id() for _ in range(n)]

        async def caller(mine: list[str]) -> None:
            for job_id in mine:
                stamps[job_id] = time.time()
                await client.enqueue(TASK_GROUP, None, id=job_id)

        async with trio.open_nursery() as nursery:
            for i in range(min(IN_FLIGHT_MAX, n)):
                nursery.start_soon(caller, ids[i::IN_FLIGHT_MAX])
    return stamps


async def _paced_trio(address: str, n: int, rate: float, max_s: float) -> Sent:
    from silo.client import SiloClient

    stamps: dict[str, float] = {}
    limiter = trio.CapacityLimiter(IN_FLIGHT_MAX)
    async with SiloClient.connect(address) as client:
        await client.refresh_shard_map()

        async def one(job_id: str) -> None:
            try:
                stamps[job_id] = time.time()
                await client.enqueue(TASK_GROUP, None, id=job_id)
            finally:
                limiter.release_on_behalf_of(job_id)

        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                await trio.sleep_until(t0 + i / rate)
                if trio.current_time() - t0 > max_s:
                    break
                job_id = client.new_id()
                await limiter.acquire_on_behalf_of(job_id)
                nursery.start_soon(one, job_id)
        return stamps, trio.current_time() - t0


def _paced_asyncio(address: str, n: int, rate: float, max_s: float) -> Sent:
    from silo.client import AsyncioSiloClient

    async def main() -> Sent:
        stamps: dict[str, float] = {}
        gate = asyncio.Semaphore(IN_FLIGHT_MAX)
        loop = asyncio.get_running_loop()
        async with AsyncioSiloClient.connect(address) as client:
            await client.refresh_shard_map()

            async def one(job_id: str) -> None:
                try:
                    stamps[job_id] = time.time()
                    await client.enqueue(TASK_GROUP, None, id=job_id)
                finally:
                    gate.release()

            tasks = []
            t0 = loop.time()
            for i in range(n):
                delay = t0 + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if loop.time() - t0 > max_s:
                    break
                await gate.acquire()
                tasks.append(asyncio.ensure_future(one(client.new_id())))
            await asyncio.gather(*tasks)
            return stamps, loop.time() - t0

    return asyncio.run(main())


def _paced_blocking(address: str, n: int, rate: float, max_s: float) -> Sent:
    from silo.client import BlockingSiloClient

    stamps: dict[str, float] = {}
    lock = threading.Lock()
    gate = threading.BoundedSemaphore(IN_FLIGHT_MAX)
    with BlockingSiloClient.connect(address) as client, \
            concurrent.futures.ThreadPoolExecutor(IN_FLIGHT_MAX) as pool:
        client.refresh_shard_map()

        def one(job_id: str) -> None:
            try:
                with lock:
                    stamps[job_id] = time.time()
                client.enqueue(TASK_GROUP, None, id=job_id)
            finally:
                gate.release()

        futures = []
        t0 = time.monotonic()
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if time.monotonic() - t0 > max_s:
                break
            gate.acquire()
            futures.append(pool.submit(one, client.new_id()))
        for f in futures:
            f.result()
        return stamps, time.monotonic() - t0


def _send(client: str, address: str, n: int, rate: float, max_s: float) -> Sent:
    if client == "trio":
        return trio.run(_paced_trio, address, n, rate, max_s)
    if client == "asyncio":
        return _paced_asyncio(address, n, rate, max_s)
    return _paced_blocking(address, n, rate, max_s)


# -- the run -----------------------------------------------------------------------------------


def run_latency(config: LatencyConfig, say: Callable[[str], None] = lambda s: None
                ) -> LatencyResult:
    config.check()
    from silo.client.reporter import LINGER_MS
    from silo.client.worker import default_prefetch

    prefetch = default_prefetch(10) if config.prefetch is None else config.prefetch
    result = LatencyResult(config=asdict(config), peak_per_s=0.0, load_before=os.getloadavg(),
                           cpus=os.cpu_count() or 0,
                           worker_settings=f"silo worker defaults: concurrency 10, prefetch "
                                           f"{prefetch}, report linger {LINGER_MS:g} ms")
    tmp = tempfile.mkdtemp(prefix="silo-bench-latency-")
    try:
        with silo_server(tmp, "latency") as server:
            log_path = os.path.join(tmp, "jobs.log")
            env = child_env(**{JOB_LOG_ENV: log_path})
            procs: list[subprocess.Popen[bytes]] = []
            try:
                for w in range(config.workers):
                    procs.append(spawn(
                        [sys.executable, "-m", "silo", "worker",
                         "silo.bench.peer_handlers:silo_noop", "--task-group", TASK_GROUP,
                         "--address", server.grpc]
                        + ([] if config.prefetch is None else ["--prefetch", str(prefetch)]),
                        os.path.join(tmp, f"worker{w}.log"), env=env, cwd=tmp))
                _run_phases(config, server.grpc, server.http, log_path, procs, result, say)
            except RuntimeError as exc:
                worker_log = tail(os.path.join(tmp, "worker0.log"), 800)
                raise RuntimeError(f"{exc}; first worker's log: {worker_log}") from None
            finally:
                for p in procs:
                    stop_process(p, signal.SIGINT, WORKER_STOP_TIMEOUT_S)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.load_after = os.getloadavg()
    return result


def _run_phases(config: LatencyConfig, grpc: str, http: str, log_path: str,
                procs: list[subprocess.Popen[bytes]], result: LatencyResult,
                say: Callable[[str], None]) -> None:
    # Warm up: the workers are connected and leasing once a first job has started.
    warm = list(trio.run(_enqueue_peak, grpc, 1))
    wait_started(log_path, warm, SETTLE_TIMEOUT_S, procs)
    say(f"peak: {config.peak_jobs} jobs, one per call, {IN_FLIGHT_MAX} calls in flight")
    stamps = trio.run(_enqueue_peak, grpc, config.peak_jobs)
    ids = list(stamps)
    starts = wait_started(log_path, ids, SETTLE_TIMEOUT_S + config.peak_jobs / 50, procs)
    span = max(starts[i] for i in ids) - min(stamps.values())
    result.peak_per_s = len(ids) / span if span > 0 else float(len(ids))
    rate = max(1.0, result.peak_per_s * config.load_fraction)
    say(f"peak load {result.peak_per_s:,.0f} jobs/s; pacing at {rate:,.0f} jobs/s")
    for client in config.clients:
        stamps, took_s = _send(client, grpc, config.jobs, rate, config.max_seconds)
        sent = list(stamps)
        starts = wait_started(log_path, sent, SETTLE_TIMEOUT_S, procs)
        latencies = sorted((starts[i] - stamps[i]) * 1000 for i in sent)
        result.clients.append(ClientLatency(
            client=client, sent=len(sent), target_per_s=rate,
            achieved_per_s=(len(sent) - 1) / took_s if took_s > 0 and len(sent) > 1 else 0.0,
            p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
            max_ms=latencies[-1], started=len(sent),
        ))
        say(f"{client}: p50 {result.clients[-1].p50_ms:.1f} ms")
    succeeded = metric_sum(http, "silo_jobs_completed_total", 'outcome="succeeded"')
    expected = 1 + config.peak_jobs + sum(c.sent for c in result.clients)
    if succeeded < expected:
        # Started is what is measured; completion is only checked to be on its way.
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while succeeded < expected and time.monotonic() < deadline:
            time.sleep(0.05)
            succeeded = metric_sum(http, "silo_jobs_completed_total", 'outcome="succeeded"')
    if succeeded < expected:
        raise RuntimeError(f"only {succeeded:.0f} of {expected} jobs succeeded")


def format_latency(r: LatencyResult) -> str:
    c = r.config
    lines = [
        f"latency: {c['workers']} `silo worker` processes ({r.worker_settings}), "
        f"{r.cpus} CPUs, load {r.load_before[0]:.2f} before / {r.load_after[0]:.2f} after",
        f"peak load {r.peak_per_s:,.0f} jobs/s (enqueue-to-handler-start of {c['peak_jobs']} "
        f"jobs sent one per call, {IN_FLIGHT_MAX} in flight); paced at "
        f"{c['load_fraction']:g} of it, one job per call, up to {IN_FLIGHT_MAX} in flight, "
        f"{c['jobs']} jobs per client (at most {c['max_seconds']:g} s)",
        f"{'client':<9} {'sent':>6} {'target/s':>9} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8}",
    ]
    for x in r.clients:
        lines.append(f"{x.client:<9} {x.sent:>6} {x.target_per_s:>9,.0f} "
                     f"{x.achieved_per_s:>8,.0f} {x.p50_ms:>8.1f} {x.p99_ms:>8.1f} "
                     f"{x.max_ms:>8.1f}")
    return "\n".join(lines)
