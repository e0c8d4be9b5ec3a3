"""The worker's reporting against a scripted fake cluster (tests/client/fake.py), on trio's
autojump clock: batches, splitting, re-routing, drops, shutdown."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from silo.client.client import RetrySettings
from silo.client.heartbeats import IN_FLIGHT_MAX
from silo.client.types import unpack
from silo.client.worker import TaskContext, Worker
from silo.errors import Code
from silo.node import SHARD_OWNER_METADATA
from silo.rpc import RpcError
from silo.wire import pb
from tests.client.fake import ADDRESS, FakeCluster, make_task

OTHER = "node-b:2"


async def run_until(worker: Worker, done: Any, *, timeout: float = 60, stop_s: float = 5) -> None:
    """Run ``worker`` until ``done()`` holds (fail after ``timeout`` seconds), then stop it."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        with trio.fail_after(timeout):
            while not done():
                await trio.sleep(0.01)
        worker.stop(stop_s)


def worker_for(cluster: FakeCluster, handler: Any, **options: Any) -> Worker:
    options.setdefault("lease_wait_ms", 100)
    return Worker(cluster, "g", handler, **options)  # type: ignore[arg-type]


async def test_refused_batch_is_split_and_only_the_bad_report_is_dropped(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A whole-call INVALID_ARGUMENT caused by one report does not drop the others; the
    refused result itself is replaced by a RESULT_REJECTED failure."""
    cluster = FakeCluster(to_lease=[make_task(i, payload=i) for i in range(5)])

    def refuse_bad(request: pb.ReportOutcomesRequest) -> RpcError | None:
        if any(unpack(o.success) == "bad" for o in request.outcomes):
            return RpcError(Code.INVALID_ARGUMENT, "result is not acceptable")
        return None

    cluster.fail("ReportOutcomes", refuse_bad)
    started: list[int] = []
    release = trio.Event()

    async def handler(ctx: TaskContext) -> str:
        started.append(ctx.payload)
        await release.wait()
        return "bad" if ctx.payload == 2 else f"ok {ctx.payload}"

    async def release_when_all_started() -> None:
        while len(started) < 5:
            await trio.sleep(0.01)
        release.set()

    worker = worker_for(cluster, handler, max_concurrent_tasks=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_when_all_started)
        with caplog.at_level(logging.ERROR, "silo.worker"):
            await run_until(worker, lambda: len(cluster.recorded) == 5)
    assert sorted(cluster.recorded) == ["t0", "t1", "t2", "t3", "t4"]
    assert [unpack(cluster.recorded[t].success) for t in ("t0", "t1", "t3", "t4")] == [
        "ok 0", "ok 1", "ok 3", "ok 4"]
    # The refused result is replaced by a failure that says why.
    rejected = cluster.recorded["t2"].failure
    assert rejected is not None and rejected.code == "RESULT_REJECTED"
    assert unpack(rejected.data)["message"] == "result is not acceptable"
    assert any("j2" in r.getMessage() and "INVALID_ARGUMENT" in r.getMessage()
               for r in caplog.records if r.levelno == logging.ERROR)
    # The first try carried all five reports in one request.
    assert len(cluster.calls_of("ReportOutcomes")[0].request.outcomes) == 5
    assert worker.stats.reports_dropped == 1


async def test_batches_stay_under_the_client_message_limit(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Reports that together exceed max_message_bytes go out in several requests."""
    cluster = FakeCluster(max_message_bytes=64 * 1024,
                          to_lease=[make_task(i, payload=i) for i in range(8)])
    release = trio.Event()
    started: list[int] = []

    async def handler(ctx: TaskContext) -> bytes:
        started.append(ctx.payload)
        if len(started) == 8:
            release.set()
        await release.wait()
        return b"x" * 20_000

    worker = worker_for(cluster, handler, max_concurrent_tasks=8)
    await run_until(worker, lambda: len(cluster.recorded) == 8)
    sizes = [len(bytes(c.request)) for c in cluster.calls_of("ReportOutcomes")]
    assert len(sizes) >= 3 and max(sizes) <= 64 * 1024
    assert worker.stats.reports_dropped == 0


async def test_shard_not_found_reroutes_heartbeats_and_reports(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A node that no longer owns the shard answers "shard not found" with an owner hint: the
    heartbeat is re-routed (the task is not given up) and so is the report."""
    cluster = FakeCluster(lease_ms=300, to_lease=[make_task(1)])
    moved = trio.Event()

    def not_here(request: Any) -> RpcError | None:
        if moved.is_set():
            return RpcError(Code.NOT_FOUND, "shard not found: 0", {SHARD_OWNER_METADATA: OTHER})
        return None

    cluster.fail("Heartbeat", not_here, address=ADDRESS)
    cluster.fail("ReportOutcomes", not_here, address=ADDRESS)

    async def handler(ctx: TaskContext) -> str:
        moved.set()
        await trio.sleep(2)  # several heartbeat intervals
        return "done"

    worker = worker_for(cluster, handler)
    await run_until(worker, lambda: "t1" in cluster.recorded)
    assert worker.abandoned == 0 and worker.stats.leases_lost == 0
    assert [c.address for c in cluster.calls_of("ReportOutcomes")][-1] == OTHER
    beats_after_move = [c.address for c in cluster.calls_of("Heartbeat")]
    assert OTHER in beats_after_move


async def test_a_report_waiting_for_the_server_keeps_its_lease_heartbeated(
    autojump_clock: trio.abc.Clock,
) -> None:
    """While ReportOutcomes answers UNAVAILABLE (longer than a lease), the finished task is
    still heartbeated; once the server is back the report is acknowledged."""
    cluster = FakeCluster(lease_ms=1000, to_lease=[make_task(1)])
    down_until = 4.0
    start = trio.current_time()

    def unavailable(request: Any) -> RpcError | None:
        if trio.current_time() - start < down_until:
            return RpcError(Code.UNAVAILABLE, "server paused")
        return None

    cluster.fail("ReportOutcomes", unavailable)
    finished_at: list[float] = []

    async def handler(ctx: TaskContext) -> str:
        finished_at.append(trio.current_time())
        return "done"

    worker = worker_for(cluster, handler)
    await run_until(worker, lambda: "t1" in cluster.recorded)
    beats = [c.at for c in cluster.calls_of("Heartbeat")]
    # Heartbeats went on after the handler returned, at most a lease apart, until the report
    # got through.
    after = [finished_at[0]] + [t for t in beats if t > finished_at[0]]
    assert after[-1] >= start + down_until - 1.0
    assert max(b - a for a, b in zip(after, after[1:], strict=False)) < 1.0
    assert worker.stats.reports_dropped == 0


async def test_stop_waits_for_pending_reports(autojump_clock: trio.abc.Clock) -> None:
    cluster = FakeCluster(to_lease=[make_task(1)])
    start = trio.current_time()
    cluster.fail("ReportOutcomes", lambda r: RpcError(Code.UNAVAILABLE, "paused")
                 if trio.current_time() - start < 2 else None)
    done = trio.Event()

    async def handler(ctx: TaskContext) -> str:
        done.set()
        return "done"

    worker = worker_for(cluster, handler)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await done.wait()
        worker.stop(10)
    assert "t1" in cluster.recorded
    assert worker.stats.reports_dropped == 0


async def test_reports_not_acknowledged_by_the_stop_deadline_are_dropped_and_counted(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = FakeCluster(to_lease=[make_task(1)])
    cluster.fail("ReportOutcomes", lambda r: RpcError(Code.UNAVAILABLE, "server down"))
    done = trio.Event()

    async def handler(ctx: TaskContext) -> str:
        done.set()
        return "done"

    worker = worker_for(cluster, handler)
    with caplog.at_level(logging.ERROR, "silo.worker"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await done.wait()
            stopped_at = trio.current_time()
            worker.stop(3)
    assert trio.current_time() - stopped_at < 4
    assert worker.stats.reports_dropped == 1
    assert [r for r in caplog.records if r.levelno == logging.ERROR and "j1" in r.getMessage()]


async def test_acks_ride_on_the_next_lease_call_and_replace_the_early_heartbeat(
    autojump_clock: trio.abc.Clock,
) -> None:
    """With a free slot the worker leases again at once, carrying the ack: the task needs no
    early heartbeat for delivery, so its first one comes at the ordinary interval."""
    cluster = FakeCluster(lease_ms=30_000, to_lease=[make_task(1)])

    async def handler(ctx: TaskContext) -> str:
        await trio.sleep(20)
        return "done"

    worker = worker_for(cluster, handler, max_concurrent_tasks=2)
    await run_until(worker, lambda: "t1" in cluster.recorded)
    leases = cluster.calls_of("LeaseTasks")
    first_with_task = next(i for i, c in enumerate(leases) if not c.request.acks)
    acks = [(a.shard, a.task_id) for c in leases[first_with_task + 1 :] for a in c.request.acks]
    assert acks[:1] == [(0, "t1")]
    assert acks.count((0, "t1")) == 1
    received_at = leases[0].at
    first_beat = cluster.calls_of("Heartbeat")[0].at
    assert first_beat - received_at >= 0.3 * 30


async def test_a_worker_that_does_not_lease_again_acknowledges_by_a_prompt_heartbeat(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Every slot busy and no prefetch: no LeaseTasks call carries the ack, so the first
    heartbeat comes within a small fraction of the lease and acknowledges the delivery."""
    cluster = FakeCluster(lease_ms=30_000, to_lease=[make_task(1)])

    async def handler(ctx: TaskContext) -> str:
        await trio.sleep(20)
        return "done"

    worker = worker_for(cluster, handler, max_concurrent_tasks=1, prefetch=0)
    await run_until(worker, lambda: "t1" in cluster.recorded)
    received_at = cluster.calls_of("LeaseTasks")[0].at
    first_beat = cluster.calls_of("Heartbeat")[0].at
    assert first_beat - received_at <= 0.1 * 30


async def test_a_short_task_on_a_busy_worker_costs_no_heartbeat(
    autojump_clock: trio.abc.Clock,
) -> None:
    """No extra RPC per task on the hot path: a task that ends within the ordinary heartbeat
    interval, on a worker that keeps leasing, is never heartbeated."""
    cluster = FakeCluster(lease_ms=30_000, to_lease=[make_task(n) for n in range(1, 9)])

    async def handler(ctx: TaskContext) -> str:
        await trio.sleep(3)  # longer than the early heartbeat (1.5 s), shorter than 10 s
        return "done"

    worker = worker_for(cluster, handler, max_concurrent_tasks=16)
    await run_until(worker, lambda: len(cluster.recorded) == 8)
    assert cluster.calls_of("Heartbeat") == []


async def test_report_given_up_when_its_lease_would_have_expired(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """With heartbeats and reports both failing, the report is retried only while the lease
    could still be alive, then dropped: logged at ERROR with the reason, counted, observed."""
    cluster = FakeCluster(lease_ms=1000, to_lease=[make_task(1)])
    down = lambda request: RpcError(Code.UNAVAILABLE, "node down")  # noqa: E731
    cluster.fail("ReportOutcomes", down)
    cluster.fail("Heartbeat", down)
    events: list[tuple[str, int]] = []

    async def handler(ctx: TaskContext) -> str:
        return "done"

    dropped: list[tuple[str, str]] = []
    worker = worker_for(cluster, handler, observer=lambda kind, n: events.append((kind, n)),
                        on_report_dropped=lambda task, outcome, reason: dropped.append(
                            (task.job_id, reason)))
    with caplog.at_level(logging.ERROR, "silo.worker"):
        await run_until(worker, lambda: ("dropped", 1) in events, timeout=10)
    assert worker.stats.reports_dropped == 1
    assert [(job, "lease would have expired" in why) for job, why in dropped] == [("j1", True)]
    assert trio.current_time() < 3
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("j1" in m and "lease would have expired" in m for m in messages)


async def test_the_worker_leases_from_nodes_that_join_and_stops_on_nodes_that_leave(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Shards moved to a new node: the periodic cluster-info refresh starts a lease loop for
    it, and the loop of a node that owns nothing any more ends."""
    cluster = FakeCluster()

    async def handler(ctx: TaskContext) -> str:
        return "done"

    worker = worker_for(cluster, handler, discover_interval_s=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(2.5)
        assert {c.address for c in cluster.calls_of("LeaseTasks")} == {ADDRESS}
        cluster.addresses = [OTHER]
        await trio.sleep(2.5)
        assert OTHER in {c.address for c in cluster.calls_of("LeaseTasks")}
        seen = len([c for c in cluster.calls_of("LeaseTasks") if c.address == ADDRESS])
        await trio.sleep(3)
        assert len([c for c in cluster.calls_of("LeaseTasks") if c.address == ADDRESS]) == seen
        worker.stop(1)


@pytest.mark.parametrize(("answer_s", "in_flight"), [(2.5, 3), (20.0, IN_FLIGHT_MAX)])
async def test_slow_heartbeat_answers_do_not_space_out_the_heartbeats(
    autojump_clock: trio.abc.Clock, answer_s: float, in_flight: int
) -> None:
    """The server answers a heartbeat once its extension is durable, but extends the lease when
    the heartbeat arrives: a slow answer (a slow disk) must not delay the next heartbeat. They
    go out every interval (1 s of a 3 s lease) from their sends, several in flight (at most
    ``IN_FLIGHT_MAX``); paced from the answers, 2.5 s answers spaced them 3.5 s apart and the
    lease lapsed between two of them (wide seed 1790228235)."""
    cluster = FakeCluster(lease_ms=3000, to_lease=[make_task(1)],
                          retry=RetrySettings(call_timeout_s=30.0))
    original = cluster.call_address
    sent: list[float] = []
    open_calls = [0]
    most_open = [0]

    async def call_address(address: str, method: str, request: Any, response_type: Any,
                           **kw: Any) -> Any:
        if method != "Heartbeat":
            return await original(address, method, request, response_type, **kw)
        sent.append(trio.current_time())
        open_calls[0] += 1
        most_open[0] = max(most_open[0], open_calls[0])
        try:
            await trio.sleep(answer_s)
            return await original(address, method, request, response_type, **kw)
        finally:
            open_calls[0] -= 1

    cluster.call_address = call_address  # type: ignore[method-assign]

    async def handler(ctx: TaskContext) -> str:
        await trio.sleep(12)
        return "done"

    worker = worker_for(cluster, handler, max_concurrent_tasks=1, prefetch=0)
    await run_until(worker, lambda: "t1" in cluster.recorded, stop_s=30)
    at = sent
    received_at = cluster.calls_of("LeaseTasks")[0].at
    report_at = cluster.calls_of("ReportOutcomes")[0].at
    gaps = [b - a for a, b in zip([received_at, *at], [*at, report_at], strict=True)]
    if answer_s < IN_FLIGHT_MAX * 1.0:
        assert max(gaps) <= 1.0 + 0.01, gaps  # every interval, whatever the answers take
    else:  # answers later than IN_FLIGHT_MAX intervals: the next waits for one
        assert max(gaps) <= answer_s + 0.01, gaps
    assert most_open[0] == in_flight
