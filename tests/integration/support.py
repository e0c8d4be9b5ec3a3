"""Helpers for the integration tests: raw RPC calls, error assertions, a job driver, and a
silo server run as a separate process (so it can be killed with SIGKILL or stopped with
SIGTERM).

Everything talks real gRPC over TCP on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from silo.client import SiloClient, pack
from silo.config import ServerConfig
from silo.errors import Code
from silo.rpc import RpcError, method_path
from silo.transport.grpc import GrpcConnector
from silo.wire import pb

M = TypeVar("M")

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Node:
    """An in-process silo node started by the ``start_node`` fixture."""

    address: str
    grpc_port: int
    http_port: int
    config: ServerConfig


# -- raw calls -------------------------------------------------------------------------------


class Raw:
    """Single-attempt RPCs against one address (no routing, no retries) through a client's
    channels, so a test sees exactly the status the server sent."""

    def __init__(self, client: SiloClient, address: str) -> None:
        self.client = client
        self.address = address

    async def __call__(self, method: str, request: Any, response_type: type[M]) -> M:
        return await self.client.call_address(self.address, method, request, response_type,
                                              timeout=15)

    async def shard(self, tenant: str = "default") -> int:
        return await self.client.shard_for(tenant)

    async def enqueue(self, task_group: str = "g", payload: Any = None, *, tenant: str = "default",
                      id: str = "", **spec: Any) -> str:
        shard = await self.shard(tenant)
        resp = await self(
            "Enqueue",
            pb.EnqueueRequest(shard=shard, job=pb.JobSpec(
                tenant=tenant, id=id, task_group=task_group, payload=pack(payload), **spec)),
            pb.EnqueueResponse,
        )
        return resp.id

    async def get(self, job_id: str, *, tenant: str = "default",
                  attempts: bool = False) -> pb.Job:
        resp = await self(
            "GetJob",
            pb.GetJobRequest(job=await self.ref(job_id, tenant), include_attempts=attempts),
            pb.GetJobResponse,
        )
        assert resp.job is not None
        return resp.job

    async def ref(self, job_id: str, tenant: str = "default") -> pb.JobRef:
        return pb.JobRef(shard=await self.shard(tenant), tenant=tenant, id=job_id)

    async def action(self, method: str, job_id: str, tenant: str = "default") -> None:
        await self(method, pb.JobActionRequest(job=await self.ref(job_id, tenant)),
                   pb.JobActionResponse)

    async def result(self, job_id: str, tenant: str = "default") -> pb.GetJobResultResponse:
        request = pb.GetJobResultRequest(job=await self.ref(job_id, tenant))
        return await self("GetJobResult", request, pb.GetJobResultResponse)

    async def lease(self, worker_id: str = "w1", task_group: str = "g", *, max_tasks: int = 10,
                    shard: int | None = None, wait_ms: int = 0,
                    acks: list[pb.Task] | None = None) -> pb.LeaseTasksResponse:
        """LeaseTasks (``acks``: tasks received earlier, acknowledged by this call)."""
        ack_list = [pb.TaskAck(shard=t.shard, task_id=t.task_id) for t in acks or ()]
        if shard is None:
            req = pb.LeaseTasksRequest(worker_id=worker_id, task_group=task_group,
                                       max_tasks=max_tasks, all_shards=True, wait_ms=wait_ms,
                                       acks=ack_list)
        else:
            req = pb.LeaseTasksRequest(shard=shard, worker_id=worker_id, task_group=task_group,
                                       max_tasks=max_tasks, wait_ms=wait_ms, acks=ack_list)
        return await self("LeaseTasks", req, pb.LeaseTasksResponse)

    async def lease_one(self, worker_id: str = "w1", task_group: str = "g") -> pb.Task:
        resp = await self.lease(worker_id, task_group, max_tasks=1)
        assert len(resp.tasks) == 1, resp
        return resp.tasks[0]

    async def heartbeat(self, task: pb.Task, worker_id: str = "w1") -> pb.HeartbeatResponse:
        return await self("Heartbeat", pb.HeartbeatRequest(shard=task.shard, worker_id=worker_id,
                                                           task_id=task.task_id),
                          pb.HeartbeatResponse)

    async def report(self, task: pb.Task, worker_id: str = "w1", **outcome: Any) -> None:
        await self("ReportOutcome", pb.ReportOutcomeRequest(outcome=outcome_for(task, worker_id,
                                                                                **outcome)),
                   pb.ReportOutcomeResponse)

    async def alive(self) -> None:
        """The server still serves: a fresh job can be enqueued and read back."""
        job_id = await self.enqueue("alive-check", {"ok": True})
        job = await self.get(job_id)
        assert job.status == pb.JobStatus.SCHEDULED


def outcome_for(task: pb.Task, worker_id: str = "w1", **outcome: Any) -> pb.Outcome:
    """An Outcome for ``task``; pass ``success=bytes``, ``failure=pb.Failure`` or
    ``cancelled=pb.Cancelled()`` (default: success with a nil result)."""
    if not outcome:
        outcome = {"success": pack(None)}
    return pb.Outcome(shard=task.shard, worker_id=worker_id, task_id=task.task_id,
                      tenant=task.tenant, job_id=task.job_id, attempt=task.attempt, **outcome)


async def expect_error(call: Awaitable[Any], code: Code, *fragments: str) -> RpcError:
    """Await ``call``; it must fail with ``code`` and a message containing every fragment."""
    try:
        value = await call
    except RpcError as exc:
        assert exc.code == code, f"expected {code.name}, got {exc!r}"
        for fragment in fragments:
            assert fragment in exc.message, f"{fragment!r} not in {exc.message!r}"
        return exc
    pytest.fail(f"expected {code.name} {fragments}, but the call returned {value!r}")


async def wait_until(predicate: Callable[[], Awaitable[bool] | bool], *, timeout: float,
                     interval: float = 0.02, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = trio.current_time() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if trio.current_time() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await trio.sleep(interval)


# -- a server in its own process --------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def write_config(path: Path, settings: Mapping[str, Any], limits: Mapping[str, Any]) -> None:
    lines = [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
    if limits:
        lines.append("[limits]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in limits.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class ServerProcess:
    """``silo serve`` in a child process on fixed ports, so a restart on the same data directory
    comes back at the same address (clients and workers reconnect by themselves).

    Settings without a command-line flag (lease_ms, shutdown_grace_s, limits...) go through a
    TOML config file.
    """

    data_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: trio.Process | None = None
    starts: int = 0

    @property
    def address(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-server.log"

    def command(self) -> list[str]:
        config_path = self.data_dir.parent / f"{self.data_dir.name}-config.toml"
        settings = {
            "data_dir": str(self.data_dir),
            "grpc_addr": f"{HOST}:{self.grpc_port}",
            "http_addr": f"{HOST}:{self.http_port}",
            "shards": 4,
            **self.settings,
        }
        write_config(config_path, settings, self.limits)
        return [sys.executable, "-m", "silo", "serve", "--config", str(config_path),
                "--data-dir", str(self.data_dir), "--grpc-addr", settings["grpc_addr"],
                "--http-addr", settings["http_addr"]]

    async def start(self, *, timeout: float = 20.0) -> None:
        """Start the server and wait until it answers GetClusterInfo."""
        assert self.process is None or self.process.returncode is not None, "already running"
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"---- start #{self.starts} ----\n".encode())
        log.flush()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")) if p
        )
        try:
            self.process = await trio.lowlevel.open_process(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        finally:
            log.close()
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float) -> None:
        token = self.settings.get("token")
        async with GrpcConnector.open(token=token) as connector:
            channel = await connector.connect(self.address)
            with trio.move_on_after(timeout):
                while True:
                    assert self.process is not None
                    if self.process.returncode is not None or self.process.poll() is not None:
                        pytest.fail(f"server exited with {self.process.returncode} during "
                                    f"startup:\n{self.log_tail()}")
                    try:
                        await channel.call(method_path("GetClusterInfo"),
                                           bytes(pb.GetClusterInfoRequest()), timeout=1.0)
                        return
                    except RpcError as exc:
                        if exc.code not in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                            raise
                    await trio.sleep(0.05)
        pytest.fail(f"server not ready after {timeout}s:\n{self.log_tail()}")

    def send(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        self.send(signal.SIGKILL)

    async def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its exit status."""
        assert self.process is not None
        with trio.move_on_after(timeout):
            return await self.process.wait()
        pytest.fail(f"server still running {timeout}s later:\n{self.log_tail()}")

    async def stop(self) -> None:
        """Make sure the process is gone (SIGKILL if needed)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self.process.wait()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
