"""Child processes for the benchmarks: free ports, bounded stops, a silo server.

Every child runs in its own session (so a terminal's Ctrl-C reaches only the benchmark, whose
``finally`` blocks then stop the children in order) and every wait is bounded: a child that
does not stop within its timeout is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

SERVER_START_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                 timeout_s: float = 30.0) -> int | None:
    """Send ``sig`` (if still running), wait up to ``timeout_s``, then SIGKILL and reap.
    Returns the exit code (None if it could not be reaped)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
    return proc.returncode


def spawn(argv: Sequence[str], log_path: str, env: dict[str, str] | None = None,
          cwd: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session with stdout and stderr appended to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL)


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment with this source tree importable and unbuffered output."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else ""),
            "PYTHONUNBUFFERED": "1", **extra}


def metric_sum(http: str, name: str, label: str = "", timeout_s: float = 5.0) -> float:
    """The sum of every sample of metric ``name`` (optionally only lines containing ``label``)
    on the server's ``/metrics`` page."""
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=timeout_s) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not label or label in line) and not line.startswith("#"):
            rest = line[len(name):]
            if rest[:1] in ("{", " "):
                total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass(frozen=True)
class SiloServer:
    grpc: str
    http: str
    data_dir: str
    log_path: str


@contextlib.contextmanager
def silo_server(tmp: str, name: str = "silo") -> Iterator[SiloServer]:
    """``silo serve`` with its defaults except the addresses (free loopback ports) and the
    data directory (``tmp/name-data``); stopped with SIGTERM (killed after a timeout) on exit."""
    grpc = f"127.0.0.1:{free_port()}"
    http = f"127.0.0.1:{free_port()}"
    data = os.path.join(tmp, f"{name}-data")
    log_path = os.path.join(tmp, f"{name}-server.log")
    proc = spawn([sys.executable, "-m", "silo", "serve", "--data-dir", data, "--grpc-addr",
                  grpc, "--http-addr", http], log_path, env=child_env())
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            try:
                metric_sum(http, "silo_jobs_enqueued_total")
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"silo serve exited with {proc.returncode}; see "
                                       f"{log_path}: {tail(log_path)}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"silo serve did not start within "
                                       f"{SERVER_START_TIMEOUT_S:.0f} s") from None
                time.sleep(0.1)
        yield SiloServer(grpc, http, data, log_path)
    finally:
        stop_process(proc, signal.SIGTERM, SERVER_STOP_TIMEOUT_S)


def tail(path: str, max_chars: int = 2000) -> str:
    """The last ``max_chars`` characters of a log file (for error messages)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()[-max_chars:]
    except OSError:
        return "(no log)"
