"""Leasing tasks whose payloads together exceed the message cap: 40 jobs of 900 KB leased by one
worker with 40 slots (36 MB of payloads against a 16 MiB reply cap) all run, each exactly once.

The server must size a LeaseTasks reply while it picks tasks and never commit a lease it cannot
send; a lease committed and then dropped with the reply would expire and fail its job
(retry_count 0) without any handler having seen it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import trio

from silo.client import RetryPolicy, SiloClient, TaskContext, Worker
from silo.wire import pb
from tests.integration.support import Raw, ServerProcess

JOBS = 40
PAYLOAD_BYTES = 900 * 1000
LEASE_MS = 10_000
NO_RETRY = RetryPolicy(retry_count=0)


def payload_for(i: int) -> bytes:
    """A 900 KB payload that says which job it belongs to."""
    head = f"job {i:02d} ".encode()
    return head + bytes([i]) * (PAYLOAD_BYTES - len(head))


async def test_forty_900kb_jobs_leased_by_forty_slots_each_run_once(
    server_process: Callable[..., ServerProcess],
) -> None:
    server = server_process(lease_ms=LEASE_MS)
    await server.start()
    ran: list[tuple[int, int]] = []

    async def handler(ctx: TaskContext) -> int:
        payload = ctx.payload
        i = int(payload[4:6])
        assert payload == payload_for(i)
        ran.append((i, ctx.attempt))
        return i

    with trio.fail_after(90):
        async with SiloClient.connect(server.address) as client:
            raw = Raw(client, server.address)
            handles = [await client.enqueue("big", payload_for(i), id=f"big-{i:02d}",
                                            retry=NO_RETRY)
                       for i in range(JOBS)]
            worker = Worker(client, "big", handler, max_concurrent_tasks=JOBS)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.run)

                async def all_terminal() -> bool:
                    for h in handles:
                        if (await raw.get(h.id)).status not in (
                            pb.JobStatus.SUCCEEDED, pb.JobStatus.FAILED, pb.JobStatus.CANCELLED
                        ):
                            return False
                    return True

                # Long enough for leases dropped with an unsent reply to expire and be reaped.
                with trio.move_on_after(60):
                    while not await all_terminal():
                        await trio.sleep(0.25)
                worker.stop(5)

            summary: dict[str, tuple[str, list[tuple[int, str, str]]]] = {}
            for h in handles:
                job = await raw.get(h.id, attempts=True)
                summary[h.id] = (
                    job.status.name,
                    [(a.attempt, a.state.name, a.error_code) for a in job.attempts],
                )
            bad = {job_id: s for job_id, s in summary.items()
                   if s[0] != "SUCCEEDED" or [a[1] for a in s[1]] != ["SUCCEEDED"]}
            assert not bad, (
                f"{len(bad)} of {JOBS} jobs did not succeed in one attempt "
                f"({len(ran)} handler runs): {sorted(Counter(map(repr, bad.values())).items())}"
            )
            for i, h in enumerate(handles):
                assert await h.result(timeout=5) == i
            await raw.alive()

    assert sorted(i for i, _ in ran) == list(range(JOBS))
