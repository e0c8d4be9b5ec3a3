"""A retry policy at the edge of what enqueue accepts cannot kill the server.

``RetryPolicy(retry_count=1000, initial_backoff_ms=0, max_backoff_ms=0, backoff_factor=100.0)``
passes validation; ``100.0 ** k`` overflows a float long before the 1,000th retry. The backoff
must be computed without overflow (clamped to the max, here 0), so a job whose handler always
fails runs 1,001 times, ends FAILED with its handler's error, and the server keeps serving.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from silo.client import Fail, RetryPolicy, SiloClient, TaskContext, Worker
from silo.errors import Code
from silo.rpc import RpcError
from silo.wire import pb
from tests.integration.support import Raw, ServerProcess

POISON = RetryPolicy(retry_count=1000, initial_backoff_ms=0, max_backoff_ms=0,
                     backoff_factor=100.0)
ATTEMPTS = POISON.retry_count + 1
LEASE_MS = 5000
DEADLINE_S = 120


async def test_always_failing_job_with_huge_backoff_factor_fails_after_every_retry(
    server_process: Callable[..., ServerProcess],
) -> None:
    server = server_process(lease_ms=LEASE_MS)
    await server.start()
    runs: list[int] = []

    async def always_fails(ctx: TaskContext) -> None:
        runs.append(ctx.attempt)
        raise Fail("ALWAYS_FAILS", ctx.attempt)

    async with SiloClient.connect(server.address) as client:
        raw = Raw(client, server.address)
        # Accepted at enqueue: the acceptance requires this policy to be valid.
        handle = await client.enqueue("poison", None, id="poison-1", retry=POISON)
        worker = Worker(client, "poison", always_fails)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            job: pb.Job | None = None
            with trio.move_on_after(DEADLINE_S):
                while True:
                    assert server.process is not None
                    if server.process.poll() is not None:
                        raise AssertionError(
                            f"server exited with {server.process.returncode} after "
                            f"{len(runs)} handler runs:\n{server.log_tail()}"
                        )
                    try:
                        job = await raw.get(handle.id)
                    except RpcError as exc:
                        if exc.code not in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                            raise
                    if job is not None and job.status == pb.JobStatus.FAILED:
                        break
                    await trio.sleep(0.25)
            worker.stop(5)
        assert job is not None and job.status == pb.JobStatus.FAILED, (
            f"job not FAILED within {DEADLINE_S}s ({len(runs)} handler runs, last seen "
            f"{job.status.name if job else None} attempt {job.attempt_count if job else None})"
        )

        assert job.attempt_count == ATTEMPTS, job.attempt_count
        assert len(runs) == ATTEMPTS
        assert runs == list(range(1, ATTEMPTS + 1))
        final = await raw.result(handle.id)
        assert final.status == pb.JobStatus.FAILED
        assert final.error_code == "ALWAYS_FAILS", final

        # The server is still up and still answers.
        assert server.process is not None and server.process.poll() is None
        await raw.alive()
