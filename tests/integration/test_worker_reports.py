"""The worker does not lose finished results (real server over TCP, real Worker)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from silo.client import JobFailed, JobStatus, SiloClient, TaskContext, Worker
from silo.errors import Code
from silo.model import AttemptState
from silo.rpc import RpcError
from tests.integration.conftest import StartNode

RESULT_BYTES = 1_000_000


async def test_seventeen_one_megabyte_results_are_all_recorded(start_node: StartNode) -> None:
    """17 results of ~1 MB finish together: more than the default 16 MiB message cap in one
    batch, so they must go out in several requests and none may be dropped."""
    node = await start_node(lease_ms=3000)
    started: list[str] = []
    all_started = trio.Event()

    async def handler(ctx: TaskContext) -> bytes:
        started.append(ctx.job_id)
        if len(started) == 17:
            all_started.set()
        with trio.fail_after(20):
            await all_started.wait()
        return bytes([len(started) % 251]) * RESULT_BYTES

    async with SiloClient.connect(node.address) as client:
        jobs = [await client.enqueue("big-results", i) for i in range(17)]
        worker = Worker(client, "big-results", handler, max_concurrent_tasks=17,
                        lease_wait_ms=200)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            for job in jobs:
                assert len(await job.result(timeout=30)) == RESULT_BYTES
            worker.stop(5)
        for job in jobs:
            info = await job.get(attempts=True)
            assert info.status == JobStatus.SUCCEEDED
            assert info.attempts is not None and len(info.attempts) == 1
        assert worker.stats.reports_dropped == 0


class ReportsDownClient(SiloClient):
    """A client whose ReportOutcomes calls fail with UNAVAILABLE while ``reports_down``."""

    reports_down = False
    refused = 0

    async def call_address(self, address: str, method: str, request: Any,
                           response_type: type[Any], *, timeout: float | None = None) -> Any:
        if method == "ReportOutcomes" and self.reports_down:
            self.refused += 1
            raise RpcError(Code.UNAVAILABLE, "reports are down")
        return await super().call_address(address, method, request, response_type,
                                          timeout=timeout)


async def test_report_unavailable_for_longer_than_a_lease_then_recorded(
    start_node: StartNode,
) -> None:
    """ReportOutcomes fails with UNAVAILABLE for three leases' time; the finished task keeps
    being heartbeated, so once reports get through the attempt is recorded as it ended."""
    node = await start_node(lease_ms=1000)

    async def handler(ctx: TaskContext) -> str:
        return f"done {ctx.payload}"

    async with ReportsDownClient.connect(node.address) as client:
        assert isinstance(client, ReportsDownClient)
        client.reports_down = True
        job = await client.enqueue("flaky-reports", 7)
        worker = Worker(client, "flaky-reports", handler, lease_wait_ms=200)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with trio.fail_after(10):
                while client.refused == 0:
                    await trio.sleep(0.02)
            await trio.sleep(3)
            client.reports_down = False
            assert await job.result(timeout=15) == "done 7"
            worker.stop(5)
        info = await job.get(attempts=True)
        assert info.attempts is not None
        assert [a.state for a in info.attempts] == [AttemptState.SUCCEEDED]
        assert worker.stats.reports_dropped == 0


async def test_result_over_the_servers_limit_fails_the_attempt_with_result_rejected(
    start_node: StartNode,
) -> None:
    """A result the server refuses (over result_max_bytes) ends the attempt at once as
    RESULT_REJECTED with the server's reason, instead of lapsing into WORKER_CRASHED."""
    node = await start_node(lease_ms=2000)

    async def handler(ctx: TaskContext) -> bytes:
        return b"x" * (1024 * 1024 + 1)

    async with SiloClient.connect(node.address) as client:
        job = await client.enqueue("too-big", None)
        worker = Worker(client, "too-big", handler, lease_wait_ms=200)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with pytest.raises(JobFailed) as failed:
                await job.result(timeout=10)
            worker.stop(5)
        assert failed.value.error_code == "RESULT_REJECTED"
        assert "result_max_bytes" in failed.value.error_data["message"]
        info = await job.get(attempts=True)
        assert info.attempts is not None
        assert [a.worker_id for a in info.attempts] == [worker.worker_id]
        assert worker.stats.reports_dropped == 1


async def test_one_megabyte_results_from_32_slots_survive_a_one_second_server_pause(
    server_process: Any,
) -> None:
    """The server process is stopped (SIGSTOP) for 1 s while 32 handlers return ~1 MB each:
    every result is recorded, each job in one attempt."""
    import signal

    server = server_process(lease_ms=5000)
    await server.start()
    started: list[str] = []
    go = trio.Event()

    async def handler(ctx: TaskContext) -> bytes:
        started.append(ctx.job_id)
        with trio.fail_after(30):
            await go.wait()
        return b"r" * RESULT_BYTES

    async with SiloClient.connect(server.address) as client:
        jobs = [await client.enqueue("paused", i) for i in range(32)]
        worker = Worker(client, "paused", handler, max_concurrent_tasks=32, lease_wait_ms=200)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with trio.fail_after(20):
                while len(started) < 32:
                    await trio.sleep(0.02)
            server.send(signal.SIGSTOP)
            try:
                go.set()
                await trio.sleep(1)
            finally:
                server.send(signal.SIGCONT)
            for job in jobs:
                assert len(await job.result(timeout=30)) == RESULT_BYTES
            worker.stop(5)
        for job in jobs:
            info = await job.get(attempts=True)
            assert info.attempts is not None and len(info.attempts) == 1
        assert worker.stats.reports_dropped == 0
