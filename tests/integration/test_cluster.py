"""A real cluster: one etcd and ``silo serve --coordination etcd`` processes on 127.0.0.1
sharing one data root (DESIGN §6). Under load, a node killed with SIGKILL and restarted with the
same node id reclaims its shards, and every acknowledged job completes exactly once; a node
that stays down is force-released and its shards move to the live nodes; a fourth node joining
takes its share. Skipped without the etcd binary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from silo.client import RetryPolicy, RetrySettings, SiloClient, TaskContext, Worker
from silo.errors import Code, SiloError
from silo.wire import pb
from tests.cluster.etcd_process import ETCD_BINARY, etcd_process
from tests.integration.support import ServerProcess, wait_until

pytestmark = pytest.mark.skipif(ETCD_BINARY is None, reason="the etcd binary is not installed")

SHARDS = 8
TENANTS = [f"tenant-{i}" for i in range(24)]
CLIENT_RETRY = RetrySettings(attempts=60, initial_backoff_s=0.05, max_backoff_s=0.5,
                             call_timeout_s=3.0)
NO_RETRY = RetryPolicy(retry_count=0)
RETRY_AFTER_EXPIRY = RetryPolicy(retry_count=3, initial_backoff_ms=100, max_backoff_ms=500)
"""For a node that stays down: a lease it granted outlives the worker's report retries while
the shard waits for a force-release (several seconds), so that attempt legitimately ends
FAILED (lease expired) and the job must be allowed another."""
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ClusterNode(ServerProcess):
    """One ``silo serve --coordination etcd`` on the shared data root."""

    node_id: str = ""
    etcd: str = ""
    root: Path | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.node_id}-server.log"

    def command(self) -> list[str]:
        cmd = super().command()
        assert self.root is not None
        i = cmd.index("--data-dir")
        cmd[i:i + 2] = ["--data-root", str(self.root)]
        return [*cmd, "--coordination", "etcd", "--etcd", self.etcd, "--node-id", self.node_id]


@pytest.fixture(scope="module")
def etcd() -> Iterator[str]:
    with etcd_process() as (address, _):
        yield address


@pytest.fixture
async def make_node(tmp_path: Path, etcd: str) -> AsyncIterator[Any]:
    made: list[ClusterNode] = []
    prefix = f"/silo-it/{os.getpid()}-{tmp_path.name}"

    def make(node_id: str) -> ClusterNode:
        node = ClusterNode(tmp_path / node_id / "data", {
            "shards": SHARDS, "lease_ms": 4000, "membership_ttl_s": 2,
            "reconcile_interval_s": 0.2, "etcd_prefix": prefix, "shutdown_grace_s": 1.0,
        }, node_id=node_id, etcd=etcd, root=tmp_path / "root")
        made.append(node)
        return node

    try:
        yield make
    finally:
        for node in made:
            await node.stop()


def siloctl(address: str, *args: str) -> Any:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from silo.cli import main_siloctl; "
         "sys.exit(main_siloctl())", "--address", address, "--json", *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


async def placement(client: SiloClient) -> dict[str, list[int]]:
    """Shards by owner once every shard has a live owner (else empty)."""
    try:
        i = await client.cluster_info()
    except SiloError:
        return {}
    if any(not s.owner_address for s in i.shards):
        return {}
    return {n.node_id: sorted(n.shards) for n in i.nodes if n.shards}


async def serving(node: ClusterNode) -> list[int]:
    """The shards ``node`` reports open on /healthz ([] when it does not answer)."""
    from tests.http.test_http import http_get

    try:
        reply = await http_get(node.http_port, "/healthz")
    except OSError:
        return []
    return list(reply.json().get("shard_ids", []))


class Load:
    """Enqueuers and workers over the whole cluster, recording what was acknowledged."""

    def __init__(self, client: SiloClient, retry: RetryPolicy = NO_RETRY) -> None:
        self.client = client
        self.retry = retry
        self.acked: dict[str, str] = {}
        self.unknown: set[str] = set()
        self.runs: dict[str, int] = {}
        self.workers = [Worker(client, "cl", self.handler, discover_interval_s=0.5)
                        for _ in range(2)]

    async def handler(self, ctx: TaskContext) -> int:
        self.runs[ctx.job_id] = self.runs.get(ctx.job_id, 0) + 1
        await trio.sleep(0.002)
        return int(ctx.payload)

    async def enqueue(self, start: int, count: int, pace_s: float = 0.005) -> None:
        for i in range(start, start + count):
            job_id, tenant = f"job-{i:05d}", TENANTS[i % len(TENANTS)]
            try:
                await self.client.enqueue("cl", i, id=job_id, tenant=tenant, retry=self.retry)
            except SiloError as exc:
                assert exc.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED), exc
                self.unknown.add(job_id)
                continue
            self.acked[job_id] = tenant
            await trio.sleep(pace_s)

    async def check_all_succeeded_once(self, timeout: float) -> dict[str, int]:
        """Every acknowledged job SUCCEEDED with exactly one succeeded attempt."""
        pending = dict(self.acked)
        summary = {"jobs": len(pending), "handler_runs": 0, "leased_again": 0}
        limiter = trio.CapacityLimiter(32)
        deadline = trio.current_time() + timeout
        while pending:
            done: dict[str, pb.Job] = {}

            async def check(job_id: str, tenant: str, done: dict[str, pb.Job] = done) -> None:
                async with limiter:
                    shard = await self.client.shard_for(tenant)
                    req = pb.GetJobRequest(job=pb.JobRef(shard=shard, tenant=tenant, id=job_id),
                                           include_attempts=True)
                    resp = await self.client.call("GetJob", req, pb.GetJobResponse,
                                                  shard_id=shard)
                    if resp.job.status.name in ("SUCCEEDED", "FAILED", "CANCELLED"):
                        done[job_id] = resp.job

            async with trio.open_nursery() as nursery:
                for job_id, tenant in sorted(pending.items()):
                    nursery.start_soon(check, job_id, tenant)
            for job_id, job in done.items():
                assert job.status.name == "SUCCEEDED", (job_id, job.status)
                ok = [a for a in job.attempts if a.state.name == "SUCCEEDED"]
                assert len(ok) == 1, (job_id, job.attempts)
                summary["leased_again"] += job.attempt_count > 1
                del pending[job_id]
            if pending:
                assert trio.current_time() < deadline, f"{len(pending)} jobs unfinished"
                await trio.sleep(0.5)
        summary["handler_runs"] = sum(self.runs[j] for j in self.acked)
        return summary


async def test_a_killed_node_restarts_reclaims_its_shards_and_no_job_is_lost(
        make_node: Any) -> None:
    nodes = [make_node(f"n{i}") for i in range(3)]
    with trio.fail_after(58):
        for n in nodes:
            await n.start()
        async with SiloClient.connect(*(n.address for n in nodes), retry=CLIENT_RETRY) as client:
            await wait_until(lambda: _placed(client, 3), timeout=10, what="3 nodes placed")
            shown = siloctl(nodes[0].address, "cluster", "info")
            assert shown["coordination"] == "etcd" and len(shown["shards"]) == SHARDS
            assert all(s["owner_node"] for s in shown["shards"])
            assert {n["node_id"] for n in shown["nodes"]} == {"n0", "n1", "n2"}
            victim = nodes[1]
            before = await serving(victim)
            assert before
            await _answers_with_owner_hint(nodes, before[0], victim.address)
            load = Load(client)
            async with trio.open_nursery() as nursery:
                for w in load.workers:
                    nursery.start_soon(w.run)
                async with trio.open_nursery() as enq:
                    for k in range(3):
                        enq.start_soon(load.enqueue, k * 10_000, 150)
                    await wait_until(lambda: len(load.runs) >= 100, timeout=20,
                                     what="100 jobs run")
                    victim.kill()
                    killed_at = trio.current_time()
                    assert await victim.wait(10) == -signal.SIGKILL
                    restart_at = trio.current_time()
                    await victim.start()
                    await wait_until(lambda: _serves(victim, before), timeout=20, interval=0.05,
                                     what="the restarted node to serve its shards again")
                    served_at = trio.current_time()
                summary = await load.check_all_succeeded_once(timeout=25)
                for w in load.workers:
                    w.stop(2)
            print(f"restart to serving: {served_at - restart_at:.2f}s; kill to serving: "
                  f"{served_at - killed_at:.2f}s; shards {before}; {summary}")
            assert await serving(victim) == before
            lines = siloctl(nodes[2].address, "tenant", "locate", TENANTS[0])
            assert lines["owner_node"] in {"n0", "n1", "n2"}


async def test_force_release_of_a_dead_node_and_a_fourth_node_joining(make_node: Any) -> None:
    nodes = [make_node(f"n{i}") for i in range(3)]
    with trio.fail_after(58):
        for n in nodes:
            await n.start()
        async with SiloClient.connect(*(n.address for n in nodes), retry=CLIENT_RETRY) as client:
            await wait_until(lambda: _placed(client, 3), timeout=10, what="3 nodes placed")
            load = Load(client, retry=RETRY_AFTER_EXPIRY)
            async with trio.open_nursery() as nursery:
                for w in load.workers:
                    nursery.start_soon(w.run)
                await load.enqueue(0, 80, pace_s=0)
                dead = nodes[2]
                theirs = await serving(dead)
                dead.kill()
                await dead.wait(10)
                # Its shards stay unserved: the ownership keys outlive the process.
                await trio.sleep(2.5)  # the membership lease (2 s) runs out
                live = nodes[0].address
                released = siloctl(live, "shard", "force-release", str(theirs[0]), "--owner",
                                   "n2")
                assert released == {"shard": theirs[0], "released": True,
                                    "previous_owner": "n2"}
                for shard in theirs[1:]:
                    siloctl(live, "shard", "force-release", str(shard))
                released_at = trio.current_time()
                await wait_until(lambda: _placed(client, 2), timeout=10,
                                 what="n0 and n1 to serve every shard")
                taken_s = trio.current_time() - released_at
                await load.enqueue(1000, 80, pace_s=0)
                joiner = make_node("n3")
                join_at = trio.current_time()
                await joiner.start()
                await wait_until(lambda: _placed(client, 3, must=("n3",)), timeout=15,
                                 what="the fourth node to take its share")
                rebalanced_s = trio.current_time() - join_at
                await load.enqueue(2000, 80, pace_s=0)
                summary = await load.check_all_succeeded_once(timeout=25)
                for w in load.workers:
                    w.stop(2)
            final = await placement(client)
            print(f"force-released shards served again after {taken_s:.2f}s; fourth node "
                  f"started and rebalanced in {rebalanced_s:.2f}s; placement {final}; "
                  f"{summary}")
            assert set(final) == {"n0", "n1", "n3"}
            assert max(len(v) for v in final.values()) <= -(-SHARDS // 3)


async def _answers_with_owner_hint(nodes: list[ClusterNode], shard: int, owner: str) -> None:
    """A node that does not serve ``shard`` answers NOT_FOUND "shard not found" naming the
    owner's address in the trailing metadata."""
    from silo.node import SHARD_OWNER_METADATA
    from silo.rpc import RpcError, method_path
    from silo.transport.grpc import GrpcConnector

    other = next(n for n in nodes if n.address != owner)
    request = pb.GetQueueRequest(shard=shard, tenant="x", key="q")
    async with GrpcConnector.open() as connector:
        channel = await connector.connect(other.address)
        with pytest.raises(RpcError) as caught:
            await channel.call(method_path("GetQueue"), bytes(request), timeout=5)
    assert caught.value.code == Code.NOT_FOUND
    assert caught.value.message.startswith("shard not found")
    assert caught.value.metadata.get(SHARD_OWNER_METADATA) == owner


async def _placed(client: SiloClient, members: int, must: tuple[str, ...] = ()) -> bool:
    p = await placement(client)
    return len(p) == members and sum(len(v) for v in p.values()) == SHARDS and all(
        m in p for m in must)


async def _serves(node: ClusterNode, shards: list[int]) -> bool:
    return await serving(node) == shards

