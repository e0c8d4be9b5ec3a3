"""A worker's finished results survive a server that stops answering for a second.

32 slots finish at once, each with a 1 MiB result, and the server process is paused (SIGSTOP)
for 1 s while those results are being reported. The reports pile up: together they are twice
the 16 MiB message cap, so the worker must split them by bytes, retry while the server does not
answer, and keep the leases alive until each report is acknowledged. No job may be lost: with
retry_count 0 a dropped report would leave its lease to expire and the job FAILED.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable

import trio

from silo.client import RetryPolicy, SiloClient, TaskContext, Worker, pack, unpack
from silo.wire import pb
from tests.integration.support import Raw, ServerProcess, wait_until

MIB = 1024 * 1024
SLOTS = 32
JOBS = 2 * SLOTS
LEASE_MS = 8000
PAUSE_S = 1.0
NO_RETRY = RetryPolicy(retry_count=0)
TERMINAL = (pb.JobStatus.SUCCEEDED, pb.JobStatus.FAILED, pb.JobStatus.CANCELLED)


def result_for(i: int) -> bytes:
    """Job ``i``'s result: exactly 1 MiB once msgpack-encoded (a 5-byte bin32 header)."""
    head = f"result of job {i:03d} ".encode()
    value = head + bytes([i % 256]) * (MIB - 5 - len(head))
    assert len(pack(value)) == MIB
    return value


async def test_one_mib_results_from_32_slots_survive_a_one_second_server_pause(
    server_process: Callable[..., ServerProcess],
) -> None:
    server = server_process(lease_ms=LEASE_MS)
    await server.start()
    go = trio.Event()
    waiting: set[int] = set()

    async def handler(ctx: TaskContext) -> bytes:
        i = int(ctx.payload)
        if i < SLOTS:
            waiting.add(i)
            with trio.fail_after(30):
                await go.wait()
        return result_for(i)

    async with SiloClient.connect(server.address) as client:
        raw = Raw(client, server.address)
        handles = [await client.enqueue("big-results", i, id=f"res-{i:03d}", retry=NO_RETRY)
                   for i in range(JOBS)]
        worker = Worker(client, "big-results", handler, max_concurrent_tasks=SLOTS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await wait_until(lambda: len(waiting) == SLOTS, timeout=20,
                             what="all 32 slots to be running")
            # All 32 handlers return their results at once; while the worker is reporting them
            # the server stops answering for a second.
            go.set()
            await trio.sleep(0.05)
            server.send(signal.SIGSTOP)
            try:
                await trio.sleep(PAUSE_S)
            finally:
                server.send(signal.SIGCONT)

            async def all_terminal() -> bool:
                for h in handles:
                    if (await raw.get(h.id)).status not in TERMINAL:
                        return False
                return True

            # Long enough for the leases of any dropped report to expire and be reaped.
            await wait_until(all_terminal, timeout=LEASE_MS / 1000 * 3 + 20, interval=0.5,
                             what="every job to end")
            worker.stop(5)

        outcomes: dict[str, str] = {}
        for i, h in enumerate(handles):
            r = await raw.result(h.id)
            if r.status != pb.JobStatus.SUCCEEDED:
                outcomes[h.id] = f"{r.status.name} {r.error_code}"
            elif unpack(r.result) != result_for(i):
                outcomes[h.id] = "SUCCEEDED with a wrong result"
        assert not outcomes, (
            f"{len(outcomes)} of {JOBS} results lost: {sorted(Counter(outcomes.values()).items())}"
            f" (first: {sorted(outcomes.items())[:3]})"
        )
        assert server.process is not None and server.process.poll() is None
