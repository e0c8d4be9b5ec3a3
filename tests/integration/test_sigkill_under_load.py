"""``silo serve`` killed with SIGKILL three times while 2,000 jobs (retry_count 0) are enqueued
and run, and restarted on the same data directory each time: no acknowledged job is lost, every
job ends, and no job ends FAILED without its handler having run.

The server runs with its default settings (30 s leases). The Python client and two in-process
Workers ride through the restarts by retrying. Each handler appends "job_id attempt" to a log
file (flushed per line) before it returns, so the log says which jobs a handler saw. A lease
committed just before a kill whose reply never reached the worker must come back as undelivered
(DESIGN §4 "Delivery") rather than fail the job unrun.

Each kill comes once a given number of jobs has run (spread over the load), at the moment an
enqueue is answered: the server is then waking the workers' long-polls and leasing that job, so
the kill often lands between a lease's commit and its reply.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import trio

from silo.client import RetryPolicy, RetrySettings, SiloClient, TaskContext, Worker
from silo.errors import Code, SiloError
from silo.wire import pb
from tests.integration.support import ServerProcess, wait_until

JOBS = 2000
ENQUEUERS = 4
WORKERS = 2
KILL_AFTER_RUNS = (300, 900, 1500)
"""Kill the server once this many distinct jobs have been seen by a handler."""
LEASE_S = 30.0
"""The server's default lease: a lease lost in a kill comes back (or fails) this long after."""
DEADLINE_S = 200
NO_RETRY = RetryPolicy(retry_count=0)
CLIENT_RETRY = RetrySettings(attempts=40, initial_backoff_s=0.05, max_backoff_s=1.0,
                             call_timeout_s=5.0)
STATUS_CALLS_AT_ONCE = 50
FINAL = ("NOT_FOUND", "SUCCEEDED", "FAILED", "CANCELLED")


async def test_three_sigkills_under_load_lose_nothing_and_fail_nothing_unrun(
    server_process: Callable[..., ServerProcess], tmp_path: Path,
) -> None:
    server = server_process()
    await server.start()
    run_log = tmp_path / "runs.log"
    acked: set[str] = set()  # jobs whose enqueue call returned OK
    unknown: set[str] = set()  # enqueues that failed after every retry: may or may not exist
    seen: set[str] = set()  # jobs some handler ran (in memory; the log file is the record)
    kills: list[int] = []
    kill_times_s: list[float] = []
    started = trio.current_time()
    kill_wanted = False
    killed = trio.Event()

    with run_log.open("a") as log_file:

        async def handler(ctx: TaskContext) -> int:
            log_file.write(f"{ctx.job_id} {ctx.attempt}\n")
            log_file.flush()
            seen.add(ctx.job_id)
            i = int(ctx.payload)
            await trio.sleep((i % 5) * 0.004)
            return i

        with trio.fail_after(DEADLINE_S):
            async with SiloClient.connect(server.address, retry=CLIENT_RETRY) as client:

                async def enqueuer(k: int) -> None:
                    for i in range(k, JOBS, ENQUEUERS):
                        job_id = f"load-{i:04d}"
                        try:
                            await client.enqueue("load", i, id=job_id, retry=NO_RETRY)
                        except SiloError as exc:
                            assert exc.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED), exc
                            unknown.add(job_id)
                            continue
                        acked.add(job_id)
                        nonlocal kill_wanted
                        if kill_wanted:
                            # Right after an enqueue is answered the server is waking the
                            # workers' long-polls and leasing that job: kill it there.
                            kill_wanted = False
                            server.kill()
                            killed.set()

                workers = [Worker(client, "load", handler) for _ in range(WORKERS)]
                async with trio.open_nursery() as nursery:
                    for worker in workers:
                        nursery.start_soon(worker.run)
                    async with trio.open_nursery() as enqueuers:
                        for k in range(ENQUEUERS):
                            enqueuers.start_soon(enqueuer, k)
                        for threshold in KILL_AFTER_RUNS:
                            await wait_until(lambda t=threshold: len(seen) >= t, timeout=60,
                                             interval=0.01,
                                             what=f"{threshold} jobs to have run")
                            kill_wanted = True
                            with trio.move_on_after(2):
                                await killed.wait()
                            if kill_wanted:  # no enqueue answered meanwhile
                                kill_wanted = False
                                server.kill()
                            killed = trio.Event()
                            assert await server.wait(10) == -signal.SIGKILL
                            kills.append(len(seen))
                            kill_times_s.append(round(trio.current_time() - started, 1))
                            await server.start()
                    last_restart = trio.current_time()

                    # Jobs whose lease died with the server come back once that lease expires.
                    with trio.move_on_at(last_restart + LEASE_S + 15):
                        while not acked <= seen:
                            await trio.sleep(0.1)
                    jobs = await final_statuses(client, acked | unknown,
                                                    until=last_restart + LEASE_S + 60)
                    for worker in workers:
                        worker.stop(5)

    ran = Counter(line.split()[0] for line in run_log.read_text().splitlines() if line.strip())
    statuses = {job_id: status_name(job) for job_id, job in jobs.items()}
    counts = Counter(statuses.values())
    leased_again = sum(1 for job in jobs.values() if job is not None and job.attempt_count > 1)
    undelivered = sum(1 for job in jobs.values() if job is not None and job.undelivered_count)
    elapsed_s = round(trio.current_time() - started, 1)
    summary = (f"kills at {kill_times_s}s after {kills} jobs had run; all checked at "
               f"{elapsed_s}s; {len(acked)} acknowledged, {len(unknown)} "
               f"unknown; statuses {dict(counts)}; {len(ran)} jobs ran, "
               f"{sum(ran.values())} handler runs; {leased_again} jobs leased more than once, "
               f"{undelivered} with an undelivered lease")
    print(summary)

    lost = sorted(j for j in acked if statuses.get(j) == "NOT_FOUND")
    assert not lost, f"{len(lost)} acknowledged jobs lost ({lost[:5]}); {summary}"
    unfinished = sorted(j for j, s in statuses.items() if s not in FINAL)
    assert not unfinished, f"{len(unfinished)} jobs not terminal ({unfinished[:5]}); {summary}"
    failed_unrun = sorted(j for j, s in statuses.items() if s == "FAILED" and j not in ran)
    assert not failed_unrun, (
        f"{len(failed_unrun)} jobs FAILED without their handler running ({failed_unrun[:5]}); "
        f"{summary}"
    )
    succeeded_unrun = sorted(j for j, s in statuses.items() if s == "SUCCEEDED" and j not in ran)
    assert not succeeded_unrun, f"SUCCEEDED without running: {succeeded_unrun[:5]}; {summary}"
    assert counts["CANCELLED"] == 0, summary
    assert len(kills) == len(KILL_AFTER_RUNS)


async def final_statuses(
    client: SiloClient, job_ids: set[str], *, until: float
) -> dict[str, pb.Job | None]:
    """Poll ``job_ids`` until each is terminal (or missing) or ``until`` passes; the last state
    seen for each (None when the job does not exist)."""
    jobs: dict[str, pb.Job | None] = {}
    pending = sorted(job_ids)
    limiter = trio.CapacityLimiter(STATUS_CALLS_AT_ONCE)
    shard = await client.shard_for("default")

    async def check(job_id: str) -> None:
        async with limiter:
            request = pb.GetJobRequest(job=pb.JobRef(shard=shard, tenant="default", id=job_id))
            try:
                resp = await client.call("GetJob", request, pb.GetJobResponse, shard_id=shard)
            except SiloError as exc:
                if exc.code != Code.NOT_FOUND:
                    raise
                jobs[job_id] = None
                return
            jobs[job_id] = resp.job

    while pending:
        async with trio.open_nursery() as nursery:
            for job_id in pending:
                nursery.start_soon(check, job_id)
        pending = [j for j in pending if status_name(jobs[j]) not in FINAL]
        if not pending or trio.current_time() >= until:
            break
        await trio.sleep(1.0)
    return jobs


def status_name(job: pb.Job | None) -> str:
    return "NOT_FOUND" if job is None else job.status.name
