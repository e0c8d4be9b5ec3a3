"""Memory benchmark: what a shard with many waiting jobs costs to open and to hold.

Fills one LevelDB shard with ``scheduled`` jobs whose start times are spread over the next day
plus ``ready`` jobs due now (and ``parked`` jobs waiting for the one slot of a concurrency queue,
in a task group of their own), closes it, then opens it again in a fresh process and reports that
process's resident memory before the open, after the open and after the first lease, the open
time and the time from the start of the open to the first leased task. Synced writes stay on.

The fill runs in this process; the open runs in a child (``python -m silo.bench.memory --open
PATH``) so its figures hold only what opening and serving the shard costs.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import trio

from silo.model import ConcurrencyLimit, NewJob
from silo.runtime import real_runtime
from silo.shard import ShardConfig, open_shard

DEFAULT_SCHEDULED = 1_000_000
DEFAULT_READY = 100_000
FILL_BATCH = 1000
SPREAD_MS = 86_400_000
TASK_GROUP = "bench"
PARKED_TASK_GROUP = "bench-parked"
PARKED_LIMIT = ConcurrencyLimit("bench-queue", 1)


@dataclass
class MemoryResult:
    scheduled: int
    ready: int
    fill_s: float
    open_s: float
    first_lease_s: float
    """From the start of the open to the first task leased."""
    rss_before_open_mib: float
    rss_after_open_mib: float
    rss_after_lease_mib: float
    peak_rss_mib: float
    parked: int = 0


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _fill(path: str, scheduled: int, ready: int, parked: int, progress: bool) -> None:
    rt = real_runtime()
    now_ms = int(time.time() * 1000)
    total = scheduled + ready + parked
    async with open_shard(rt, path, config=ShardConfig(lease_ms=60_000)) as shard:
        stride = max(1, (scheduled + ready) // ready)
        done = 0
        last_print = time.monotonic()
        for lo in range(0, total, FILL_BATCH):
            jobs = []
            for i in range(lo, min(total, lo + FILL_BATCH)):
                if i >= scheduled + ready:  # the parked ones come last, one queue, one slot
                    jobs.append(NewJob(PARKED_TASK_GROUP, b"\x80", job_id=f"p{i}",
                                       priority=i % 100, limits=(PARKED_LIMIT,)))
                    continue
                # Every stride-th job is ready (exactly ``ready`` of them), interleaved with the
                # scheduled ones so neither kind sits in one contiguous run of the index.
                if i % stride == 0 and i // stride < ready:
                    start_at_ms = 0
                else:
                    start_at_ms = now_ms + 60_000 + (i * 7919) % SPREAD_MS
                jobs.append(NewJob(TASK_GROUP, b"\x80", job_id=f"j{i}", start_at_ms=start_at_ms,
                                   priority=i % 100))
            await shard.enqueue_batch(jobs)
            done += len(jobs)
            if progress and time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                print(f"  filled {done:,}/{total:,}", file=sys.stderr, flush=True)


async def _open_and_lease(path: str) -> dict[str, float]:
    rt = real_runtime()
    before = _rss_mib()
    t0 = time.perf_counter()
    async with open_shard(rt, path, config=ShardConfig(lease_ms=60_000)) as shard:
        t1 = time.perf_counter()
        after_open = _rss_mib()
        tasks = []
        deadline = t1 + 30
        while not tasks and time.perf_counter() < deadline:
            tasks = await shard.lease_tasks("w", TASK_GROUP, 1)
            if not tasks:
                await trio.sleep(0.01)
        t2 = time.perf_counter()
        if not tasks:
            raise RuntimeError("no task leased within 30 s of open")
        after_lease = _rss_mib()
    return {
        "open_s": t1 - t0,
        "first_lease_s": t2 - t0,
        "rss_before_open_mib": before,
        "rss_after_open_mib": after_open,
        "rss_after_lease_mib": after_lease,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _counts_ok(scheduled: int, ready: int, parked: int) -> None:
    if scheduled < 0 or ready < 1 or parked < 0:
        raise SystemExit("--scheduled and --parked must be >= 0 and --ready >= 1")
    if scheduled + ready + parked > 20_000_000:
        raise SystemExit("--scheduled + --ready + --parked must be at most 20,000,000")


def run_memory(scheduled: int = DEFAULT_SCHEDULED, ready: int = DEFAULT_READY,
               progress: bool = True, parked: int = 0) -> MemoryResult:
    """Fill a fresh shard, open it in a child process and return the figures."""
    _counts_ok(scheduled, ready, parked)
    tmp = tempfile.mkdtemp(prefix="silo-bench-memory-")
    try:
        path = tmp + "/shard"
        t0 = time.perf_counter()
        trio.run(_fill, path, scheduled, ready, parked, progress)
        fill_s = time.perf_counter() - t0
        out = subprocess.run(
            [sys.executable, "-m", "silo.bench.memory", "--open", path],
            check=True, capture_output=True, text=True, timeout=600,
        ).stdout
        figures = json.loads(out.strip().splitlines()[-1])
        return MemoryResult(scheduled, ready, fill_s, **figures, parked=parked)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_memory(r: MemoryResult) -> None:
    from rich.console import Console
    from rich.table import Table

    parked = f" + {r.parked:,} parked on a concurrency queue" if r.parked else ""
    table = Table(title=f"memory: one shard, {r.scheduled:,} jobs scheduled over the next day "
                        f"+ {r.ready:,} ready{parked}; opened in a fresh process")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("fill time s", f"{r.fill_s:,.1f}")
    table.add_row("open s", f"{r.open_s:,.2f}")
    table.add_row("open to first lease s", f"{r.first_lease_s:,.2f}")
    table.add_row("RSS before open MiB", f"{r.rss_before_open_mib:,.0f}")
    table.add_row("RSS after open MiB", f"{r.rss_after_open_mib:,.0f}")
    table.add_row("RSS after first lease MiB", f"{r.rss_after_lease_mib:,.0f}")
    table.add_row("peak RSS MiB", f"{r.peak_rss_mib:,.0f}")
    Console().print(table)
    print(f"rss_after_lease_mib={r.rss_after_lease_mib:.0f} first_lease_s={r.first_lease_s:.2f} "
          f"open_s={r.open_s:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m silo.bench.memory")
    parser.add_argument("--open", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.open:
        print(json.dumps(trio.run(_open_and_lease, args.open)))
        return 0
    parser.error("run it as `python -m silo.bench memory`")
    return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["MemoryResult", "asdict", "print_memory", "run_memory"]
