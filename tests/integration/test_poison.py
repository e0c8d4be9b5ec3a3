"""No poison over real gRPC (DESIGN §4): a job whose retry policy used to overflow the backoff
(factor 100, 1000 retries) fails after 1,001 attempts, and the server keeps serving."""

from __future__ import annotations

import pytest
import trio

from silo.client import JobFailed, RetryPolicy, SiloClient, TaskContext, Worker
from tests.integration.conftest import StartNode


async def test_1000_retries_with_factor_100_fail_after_1001_attempts(
    start_node: StartNode,
) -> None:
    node = await start_node()
    attempts: list[int] = []

    async def always_fails(ctx: TaskContext) -> str:
        attempts.append(ctx.attempt)
        raise RuntimeError("no")

    async def works(ctx: TaskContext) -> str:
        return "ok"

    async with SiloClient.connect(node.address) as client:
        worker = Worker(client, "poison", always_fails, lease_wait_ms=200)
        after = Worker(client, "after", works, lease_wait_ms=200)
        job = await client.enqueue(
            "poison", None,
            retry=RetryPolicy(retry_count=1000, initial_backoff_ms=0, max_backoff_ms=0,
                              backoff_factor=100.0),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            nursery.start_soon(after.run)
            with pytest.raises(JobFailed):
                await job.result(timeout=120)
            assert (await job.get()).attempt_count == 1001
            assert sorted(attempts) == list(range(1, 1002))
            # The server is still up and serving.
            follow_up = await client.enqueue("after", None)
            assert await follow_up.result(timeout=10) == "ok"
            worker.stop(5)
            after.stop(5)
