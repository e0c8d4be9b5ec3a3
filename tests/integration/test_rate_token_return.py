"""Cancelled jobs give back the rate-limit tokens they reserved.

With a rate limit of 1 per 3 s, 20 jobs enqueued at once reserve tokens 0 s, 3 s, ... 57 s
ahead. Cancelling 19 of them must return their tokens, so a job enqueued next runs within two
periods (6 s), not behind 19 tokens nobody will use (~60 s).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from silo.client import RateLimit, SiloClient, TaskContext, Worker
from silo.wire import pb
from tests.integration.support import Raw, ServerProcess, wait_until

PERIOD_MS = 3000
LIMIT = RateLimit("api", "k", 1, PERIOD_MS)
JOBS = 20
WITHIN_S = 2 * PERIOD_MS / 1000


async def test_cancelled_jobs_return_their_rate_tokens(
    server_process: Callable[..., ServerProcess],
) -> None:
    server = server_process()
    await server.start()
    ran: list[str] = []

    async def handler(ctx: TaskContext) -> str:
        ran.append(ctx.job_id)
        return ctx.job_id

    async with SiloClient.connect(server.address) as client:
        raw = Raw(client, server.address)
        worker = Worker(client, "rate", handler, lease_wait_ms=500)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            handles = [await client.enqueue("rate", None, id=f"rate-{i:02d}", limits=[LIMIT])
                       for i in range(JOBS)]
            last = await raw.get(handles[-1].id)
            assert last.status == pb.JobStatus.SCHEDULED
            assert "rate limit api/k" in last.waiting_for
            for h in handles[1:]:
                await h.cancel()
            for h in handles[1:]:
                assert (await raw.get(h.id)).status == pb.JobStatus.CANCELLED
            await wait_until(lambda: ran == ["rate-00"], timeout=10, what="the first job to run")

            enqueued_at = trio.current_time()
            new = await client.enqueue("rate", None, id="rate-new", limits=[LIMIT])
            job = await raw.get(new.id)
            with trio.move_on_at(enqueued_at + WITHIN_S):
                assert await new.result() == "rate-new"
            if "rate-new" not in ran:
                wait_s = (job.next_attempt_at_ms - job.enqueued_at_ms) / 1000
                raise AssertionError(
                    f"the new job did not run within {WITHIN_S}s of its enqueue; it waits for "
                    f"{job.waiting_for!r}, {wait_s:.1f}s after its enqueue"
                )
            worker.stop(5)
    assert ran == ["rate-00", "rate-new"]
