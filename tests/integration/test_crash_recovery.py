"""A server process killed with SIGKILL mid-load and restarted on the same data directory loses
no acknowledged enqueue, and the workers (real Workers in this process) reconnect by themselves
and finish every job."""

from __future__ import annotations

import signal
from collections.abc import Callable

import trio

from silo.client import RetryPolicy, RetrySettings, SiloClient, TaskContext, Worker
from silo.errors import Code, SiloError
from tests.integration.support import ServerProcess, wait_until

LEASE_MS = 1000
ENQUEUERS = 4
MAX_JOBS_PER_ENQUEUER = 400
JOB_RETRY = RetryPolicy(retry_count=20, initial_backoff_ms=50, max_backoff_ms=500)


async def test_sigkill_mid_load_loses_no_acknowledged_job(
    server_process: Callable[..., ServerProcess],
) -> None:
    server = server_process(lease_ms=LEASE_MS, shutdown_grace_s=2.0)
    await server.start()
    acked: dict[str, int] = {}  # job id -> payload, for every Enqueue that returned OK
    unknown: list[str] = []  # enqueues that failed after all retries: may or may not exist
    ran: list[tuple[str, int]] = []
    stop_enqueuing = trio.Event()

    async def handler(ctx: TaskContext) -> int:
        ran.append((ctx.job_id, ctx.attempt))
        # Long enough that a dozen tasks are mid-run when the server dies.
        await trio.sleep(0.02 + (int(ctx.payload["i"]) % 5) * 0.01)
        return int(ctx.payload["i"]) * 2

    retry = RetrySettings(attempts=12, initial_backoff_s=0.05, max_backoff_s=0.5,
                          call_timeout_s=5.0)
    with trio.fail_after(55):
        async with SiloClient.connect(server.address, retry=retry) as client:

            async def enqueuer(k: int) -> None:
                for i in range(MAX_JOBS_PER_ENQUEUER):
                    if stop_enqueuing.is_set():
                        return
                    job_id = f"job-{k}-{i}"
                    try:
                        await client.enqueue("crash", {"i": i}, id=job_id, retry=JOB_RETRY)
                    except SiloError as exc:
                        assert exc.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED), exc
                        unknown.append(job_id)
                        continue
                    acked[job_id] = i

            workers = [
                Worker(client, "crash", handler, max_concurrent_tasks=8, lease_wait_ms=500)
                for _ in range(2)
            ]
            async with trio.open_nursery() as nursery:
                for worker in workers:
                    nursery.start_soon(worker.run)
                async with trio.open_nursery() as enqueuers:
                    for k in range(ENQUEUERS):
                        enqueuers.start_soon(enqueuer, k)
                    await wait_until(lambda: len(acked) >= 150 and len(ran) >= 50, timeout=20,
                                     what="load to build up")

                    server.kill()
                    assert await server.wait(10) == -signal.SIGKILL
                    acked_before_kill = dict(acked)
                    # Stay down for longer than a lease: the leases of the tasks that were
                    # running expire, so the restarted server reaps and retries them while the
                    # workers' late reports for them are refused.
                    await trio.sleep(LEASE_MS / 1000 + 0.3)
                    await server.start()

                    # Every job acknowledged before the kill survived it.
                    for job_id in acked_before_kill:
                        await client.job(job_id).get()
                    # The load carries on against the restarted server.
                    await wait_until(lambda: len(acked) >= len(acked_before_kill) + 100,
                                     timeout=20, what="enqueues after the restart")
                    stop_enqueuing.set()

                # Every acknowledged job exists and ends SUCCEEDED with its own result.
                for job_id, i in sorted(acked.items()):
                    assert await client.job(job_id).result(timeout=30) == i * 2, job_id

                # An enqueue whose outcome is unknown either left no job or a whole one, which
                # runs like any other.
                for job_id in unknown:
                    assert job_id not in acked
                    try:
                        await client.job(job_id).get()
                    except SiloError as exc:
                        assert exc.code == Code.NOT_FOUND, exc
                        continue
                    assert await client.job(job_id).result(timeout=30) is not None
                for worker in workers:
                    worker.stop(5)

    assert len(acked) >= 250
    assert set(acked_before_kill) <= set(acked)
    assert sum(w.completed for w in workers) >= len(acked)
    assert {job_id for job_id, _ in ran} >= set(acked)
