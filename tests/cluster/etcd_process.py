"""A real ``etcd`` (Debian's etcd-server) for tests: one member on 127.0.0.1, free ports, a temp
data directory, fast elections (10 ms heartbeat) so that 1-second leases expire promptly."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

ETCD_BINARY = shutil.which("etcd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def etcd_process(startup_timeout_s: float = 20.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start etcd, wait until it answers ``/health``, yield its client address ``host:port``
    and the process, and kill it (and remove its data) on exit."""
    if ETCD_BINARY is None:
        raise RuntimeError("etcd is not installed (Debian: apt-get install etcd-server)")
    client_port, peer_port = _free_port(), _free_port()
    client_url = f"http://127.0.0.1:{client_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    data_dir = tempfile.mkdtemp(prefix="silo-etcd-")
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [
            ETCD_BINARY, "--name", "silo-test", "--data-dir", data_dir,
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"silo-test={peer_url}",
            "--heartbeat-interval", "10", "--election-timeout", "100",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"etcd exited with {proc.returncode}: {log.read()[-2000:]!r}")
            try:
                with urllib.request.urlopen(f"{client_url}/health", timeout=1) as reply:
                    if b'"true"' in reply.read():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("etcd did not become healthy in time")
            time.sleep(0.05)
        yield f"127.0.0.1:{client_port}", proc
    finally:
        proc.kill()
        proc.wait()
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)
