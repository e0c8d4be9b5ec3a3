"""The ceilings of this stack for a durable sequential call, measured in the same run.

- t_echo: one sequential round trip of a bare grpclib unary echo on asyncio between two
  processes on loopback (:mod:`silo.transport.echo`); also its rate with 64 calls in flight.
- t_sync: one 4 KiB append + ``fdatasync`` to a file in the benchmark's temporary directory
  (the same file system the stores write to).

A sequential client whose every call is one round trip and one synced write can do at most
``1 / (t_echo + t_sync)`` calls per second: the *derived ceiling* for single enqueues.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass

from silo.bench.procs import child_env, free_port, spawn, stop_process

SYNC_WRITE_BYTES = 4096
ECHO_IN_FLIGHT = 64


@dataclass(frozen=True)
class SyncWriteResult:
    writes: int
    mean_s: float
    p50_s: float
    p99_s: float


@dataclass(frozen=True)
class Ceilings:
    echo_sequential_per_s: float
    echo_in_flight_per_s: float
    """With :data:`ECHO_IN_FLIGHT` calls in flight."""
    echo_s: float
    """t_echo: seconds per sequential echo round trip."""
    sync_write_s: float
    """t_sync: mean seconds per 4 KiB append + fdatasync."""
    sync_write_p99_s: float

    @property
    def durable_call_per_s(self) -> float:
        """The derived ceiling 1 / (t_echo + t_sync)."""
        return derived_ceiling(self.echo_s, self.sync_write_s)


def derived_ceiling(echo_s: float, sync_write_s: float) -> float:
    """Calls per second of a sequential client paying one round trip and one synced write."""
    if echo_s <= 0 or sync_write_s < 0:
        raise ValueError("echo_s must be positive and sync_write_s not negative")
    return 1.0 / (echo_s + sync_write_s)


def measure_sync_write(directory: str, writes: int = 300) -> SyncWriteResult:
    """Append ``writes`` blocks of 4 KiB to a new file in ``directory``, each followed by
    ``fdatasync``; the file is removed afterwards."""
    if writes < 1:
        raise ValueError("writes must be positive")
    path = os.path.join(directory, "sync-write-probe")
    block = os.urandom(SYNC_WRITE_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    samples: list[float] = []
    try:
        for _ in range(writes):
            t0 = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            samples.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    samples.sort()
    return SyncWriteResult(writes, statistics.fmean(samples), samples[len(samples) // 2],
                           samples[min(len(samples) - 1, int(len(samples) * 0.99))])


def measure_ceilings(tmp: str, echo_calls: int = 2000, sync_writes: int = 300) -> Ceilings:
    """Run the echo server in a child process and measure both ceilings (see the module
    docstring). The server is always stopped."""
    from silo.transport.echo import measure_echo

    port = free_port()
    server = spawn([sys.executable, "-m", "silo.transport.echo", "--port", str(port)],
                   os.path.join(tmp, "echo-server.log"), env=child_env())
    try:
        sequential = measure_echo("127.0.0.1", port, echo_calls, 1)
        parallel = measure_echo("127.0.0.1", port, max(echo_calls, 4 * ECHO_IN_FLIGHT),
                                ECHO_IN_FLIGHT)
    finally:
        stop_process(server, timeout_s=10)
    sync = measure_sync_write(tmp, sync_writes)
    return Ceilings(sequential.calls_per_s, parallel.calls_per_s, sequential.seconds_per_call,
                    sync.mean_s, sync.p99_s)
