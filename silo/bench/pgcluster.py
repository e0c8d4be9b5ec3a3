"""A throwaway PostgreSQL cluster for the peers benchmark.

:func:`postgres_cluster` finds ``initdb`` and ``postgres`` under ``/usr/lib/postgresql/*/bin``
(Debian's ``postgresql-15`` package; the newest installed major version wins, so the version
actually used is reported), creates a cluster in a fresh temporary directory, runs it on
127.0.0.1 on a free port with the server's defaults (``fsync`` and ``synchronous_commit`` on:
nothing about durability or memory is tuned), and on exit stops it and removes the directory,
also when the body raises or is interrupted.

PostgreSQL refuses to run as root; when this process is root the cluster belongs to, and runs
as, the ``postgres`` system user that the Debian package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from silo.bench.procs import free_port, stop_process, tail

PG_GLOB = "/usr/lib/postgresql/*/bin"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SUPERUSER = "postgres"


class PostgresNotFound(RuntimeError):
    """No ``initdb``/``postgres`` pair under ``/usr/lib/postgresql/*/bin``."""


@dataclass(frozen=True)
class PostgresCluster:
    """A running throwaway cluster."""

    bin_dir: str
    version: str
    host: str
    port: int
    data_dir: str

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"


def find_postgres_bin() -> str:
    """The ``bin`` directory of the newest installed PostgreSQL (raises
    :class:`PostgresNotFound`)."""
    found = [
        d for d in glob.glob(PG_GLOB)
        if os.access(os.path.join(d, "initdb"), os.X_OK)
        and os.access(os.path.join(d, "postgres"), os.X_OK)
    ]
    if not found:
        raise PostgresNotFound(
            f"no initdb/postgres under {PG_GLOB}; install PostgreSQL 15 "
            "(Debian: apt-get install -y postgresql-15)"
        )

    def major(path: str) -> tuple[int, str]:
        name = os.path.basename(os.path.dirname(path))
        return (int(name) if name.isdigit() else -1, name)

    return max(found, key=major)


def _run_as() -> tuple[str | None, int | None, int | None]:
    """(user name, uid, gid) to run PostgreSQL as: None when not root."""
    if os.geteuid() != 0:
        return None, None, None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresNotFound(
            "running as root needs the 'postgres' system user (created by Debian's "
            "postgresql-15 package) to own the throwaway cluster"
        ) from None
    return entry.pw_name, entry.pw_uid, entry.pw_gid


def _version(bin_dir: str) -> str:
    out = subprocess.run([os.path.join(bin_dir, "postgres"), "--version"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    found = re.search(r"\d+(\.\d+)+", out)
    return found.group(0) if found else "?"


@contextlib.contextmanager
def postgres_cluster(host: str = "127.0.0.1") -> Iterator[PostgresCluster]:
    """Run a fresh cluster for the duration of the ``with`` block (see the module docstring)."""
    bin_dir = find_postgres_bin()
    user, uid, gid = _run_as()
    tmp = tempfile.mkdtemp(prefix="silo-bench-pg-")
    proc: subprocess.Popen[bytes] | None = None
    try:
        if uid is not None and gid is not None:
            os.chown(tmp, uid, gid)
        data = os.path.join(tmp, "data")
        with open(os.path.join(tmp, "initdb.log"), "wb") as log:
            # --no-sync only skips flushing initdb's own files; the server's settings are the
            # defaults (fsync on, synchronous_commit on).
            subprocess.run(
                [os.path.join(bin_dir, "initdb"), "-D", data, "-U", SUPERUSER, "--auth=trust",
                 "-E", "UTF8", "--no-sync"],
                stdout=log, stderr=subprocess.STDOUT, user=user, timeout=START_TIMEOUT_S,
                check=True, cwd=tmp,
            )
        port = free_port(host)
        server_log = open(os.path.join(tmp, "postgres.log"), "wb")  # noqa: SIM115
        with server_log:
            proc = subprocess.Popen(
                [os.path.join(bin_dir, "postgres"), "-D", data, "-p", str(port),
                 "-c", f"listen_addresses={host}", "-c", f"unix_socket_directories={tmp}"],
                stdout=server_log, stderr=subprocess.STDOUT, user=user, cwd=tmp,
                start_new_session=True,
            )
        _wait_ready(bin_dir, host, port, proc, os.path.join(tmp, "postgres.log"))
        yield PostgresCluster(bin_dir, _version(bin_dir), host, port, data)
    finally:
        if proc is not None:
            # SIGINT is PostgreSQL's "fast shutdown": abort sessions, checkpoint, exit.
            stop_process(proc, signal.SIGINT, STOP_TIMEOUT_S)
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_ready(bin_dir: str, host: str, port: int, proc: subprocess.Popen[bytes],
                log_path: str) -> None:
    pg_isready = os.path.join(bin_dir, "pg_isready")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}: {tail(log_path)}")
        if os.access(pg_isready, os.X_OK):
            ready = subprocess.run([pg_isready, "-h", host, "-p", str(port), "-q"],
                                   timeout=10).returncode == 0
        else:
            ready = _can_connect(host, port)
        if ready:
            return
        time.sleep(0.1)
    raise RuntimeError(f"postgres did not accept connections within {START_TIMEOUT_S:.0f} s: "
                       f"{tail(log_path)}")


def _can_connect(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False

