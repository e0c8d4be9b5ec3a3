"""``python -m silo.bench peers``: silo side by side with pgqueuer on PostgreSQL 15.

One run starts a throwaway PostgreSQL cluster (:mod:`silo.bench.pgcluster`: loopback, free
port, the server's defaults, fsync and synchronous_commit on) and then, for each of
``rounds`` rounds, measures the ceilings of this stack (:mod:`silo.bench.ceilings`) and runs
one pgqueuer round and one silo round on the same workload, alternating which goes first:

- (a) single: N no-op jobs enqueued sequentially from one client, one job per call;
- (b) bulk: N jobs enqueued in sequential calls of ``batch`` jobs;
- (c) processing: the bulk jobs run by ``workers`` worker processes started with each
  library's own CLI and its defaults (``silo worker``; ``pgq run --mode drain``), timed from
  the first handler start to the last completion the store reports durable; exactly-once
  checked from the job log and from the store.

Each round starts from an empty store (a fresh database, a fresh ``silo serve``). The handler
appends one line per run to a log file (:mod:`silo.bench.joblog`). The table shows the medians
of the rounds and the ratios; the run is appended as one JSON line to the results file.
Everything started is stopped and every temporary directory removed, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from silo.bench.ceilings import Ceilings, measure_ceilings
from silo.bench.rounds import RoundResult

DEFAULT_JOBS = 5000
DEFAULT_ROUNDS = 3
DEFAULT_BATCH = 500
DEFAULT_WORKERS = 2
DEFAULT_RESULTS = "bench-results.jsonl"
JOBS_MAX = 1_000_000
ROUNDS_MAX = 20
BATCH_MAX = 1000  # silo's EnqueueBatch limit
WORKERS_MAX = 16


@dataclass(frozen=True)
class PeersConfig:
    jobs: int = DEFAULT_JOBS
    rounds: int = DEFAULT_ROUNDS
    batch: int = DEFAULT_BATCH
    workers: int = DEFAULT_WORKERS

    def check(self) -> None:
        """Raise ValueError naming the limit a field is outside of."""
        for name, value, top in (("jobs", self.jobs, JOBS_MAX), ("rounds", self.rounds,
                                 ROUNDS_MAX), ("batch", self.batch, BATCH_MAX),
                                 ("workers", self.workers, WORKERS_MAX)):
            if not 1 <= value <= top:
                raise ValueError(f"--{name} must be within 1..{top} (got {value})")


def say(line: str) -> None:
    """Progress goes to stderr so ``--json`` output on stdout stays clean."""
    print(line, file=sys.stderr, flush=True)


def source_commit() -> tuple[str, bool]:
    """(commit of the source tree this module runs from, whether it has uncommitted changes
    to tracked files); ("unknown", False) outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", root, "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit or "unknown", bool(status.strip())


def versions(postgres: str) -> dict[str, str]:
    out = {"python": sys.version.split()[0], "postgresql": postgres}
    for dist in ("silo", "pgqueuer", "asyncpg", "grpclib"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C so the ``finally`` blocks stop every child."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_peers(config: PeersConfig) -> dict[str, Any]:
    """Run the benchmark (see the module docstring) and return its record (not yet stored)."""
    from silo.bench.peers_pgqueuer import run_pgqueuer_round
    from silo.bench.peers_report import build_record
    from silo.bench.peers_silo import run_silo_round
    from silo.bench.pgcluster import postgres_cluster

    config.check()
    commit, dirty = source_commit()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    rounds: list[RoundResult] = []
    ceilings: list[Ceilings] = []
    t_run = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="silo-bench-peers-")
    try:
        with _sigterm_as_interrupt(), postgres_cluster() as cluster:
            say(f"PostgreSQL {cluster.version} on {cluster.host}:{cluster.port} "
                f"({cluster.bin_dir}); work in {tmp}")
            for r in range(1, config.rounds + 1):
                say(f"round {r}/{config.rounds}")
                t0 = time.monotonic()
                c = measure_ceilings(tmp)
                ceilings.append(c)
                say(f"  ceilings: echo {c.echo_sequential_per_s:,.0f}/s sequential, "
                    f"{c.echo_in_flight_per_s:,.0f}/s 64 in flight; 4 KiB write+fdatasync "
                    f"{c.sync_write_s * 1000:.3f} ms ({time.monotonic() - t0:.1f} s)")
                order = ("pgqueuer", "silo") if r % 2 else ("silo", "pgqueuer")
                for lib in order:
                    t0 = time.monotonic()
                    say(f"  {lib}: {config.jobs:,} single, {config.jobs:,} bulk, processing "
                        f"with {config.workers} workers")
                    if lib == "pgqueuer":
                        result = run_pgqueuer_round(tmp, cluster, r, config.jobs, config.batch,
                                                    config.workers, say)
                    else:
                        result = run_silo_round(tmp, r, config.jobs, config.batch,
                                                config.workers, say)
                    rounds.append(result)
                    proc = (f"{result.processing_per_s:,.0f}" if result.processing_per_s
                            else "-")
                    say(f"  {lib}: single {result.single_per_s:,.0f}/s, bulk "
                        f"{result.bulk_per_s:,.0f}/s, processing {proc}/s, exactly once "
                        f"{'yes' if result.exactly_once else 'NO'} "
                        f"({time.monotonic() - t0:.1f} s)")
                    if not result.exactly_once:
                        say(f"    {result.detail}")
            pg_version = cluster.version
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"done in {time.monotonic() - t_run:.0f} s")
    return build_record(
        config={"jobs": config.jobs, "rounds": config.rounds, "batch": config.batch,
                "workers": config.workers},
        rounds=rounds, ceilings=ceilings, versions=versions(pg_version), commit=commit,
        dirty=dirty, time_utc=started,
    )
