"""Lease prefetch and report linger against a scripted fake cluster (tests/client/fake.py), on
trio's autojump clock: the bound on held tasks, lease order, heartbeats of waiting tasks, hand
back on stop, cancel and lost leases while waiting, settings."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio

from silo.client.worker import PREFETCH_MAX, TaskContext, Worker
from silo.errors import Code
from silo.rpc import RpcError
from silo.wire import pb
from tests.client.fake import FakeCluster, make_task


def worker_for(cluster: FakeCluster, handler: Any, **options: Any) -> Worker:
    options.setdefault("lease_wait_ms", 100)
    return Worker(cluster, "g", handler, **options)  # type: ignore[arg-type]


def which(outcome: pb.Outcome) -> str:
    for name in ("success", "failure", "cancelled", "released"):
        if getattr(outcome, name) is not None:
            return name
    return "none"


class Gate:
    """Handlers that record when they start and block until released one by one."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.started_at: dict[str, float] = {}
        self.release: dict[str, trio.Event] = {}

    async def handler(self, ctx: TaskContext) -> str:
        self.started.append(ctx.task_id)
        self.started_at[ctx.task_id] = trio.current_time()
        event = self.release.setdefault(ctx.task_id, trio.Event())
        await event.wait()
        return "done"

    def open(self, task_id: str) -> None:
        self.release.setdefault(task_id, trio.Event()).set()


async def wait_for(done: Any, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while not done():
            await trio.sleep(0.01)


async def test_worker_holds_at_most_slots_plus_prefetch(autojump_clock: trio.abc.Clock) -> None:
    cluster = FakeCluster(lease_ms=30_000, to_lease=[make_task(n) for n in range(1, 21)])
    gate = Gate()
    worker = worker_for(cluster, gate.handler, max_concurrent_tasks=2, prefetch=3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await wait_for(lambda: len(gate.started) == 2)
        await trio.sleep(5)  # plenty of time to lease more, were it allowed to
        assert len(cluster.to_lease) == 15  # 2 running + 3 waiting
        assert worker.stats.prefetched == 3
        assert sorted(gate.started) == ["t1", "t2"]
        for n in range(1, 21):
            gate.open(f"t{n}")
        await wait_for(lambda: len(cluster.recorded) == 20)
        worker.stop(5)
    asked = [c.request.max_tasks for c in cluster.calls_of("LeaseTasks")]
    assert asked[0] == 5 and max(asked) <= 5
    assert all(which(o) == "success" for o in cluster.recorded.values())
    # A task is acknowledged (by a lease call's ack, a heartbeat without `waiting` or its
    # report) only once its handler started, and every task was.
    acks = [(a.task_id, c.at) for c in cluster.calls_of("LeaseTasks") for a in c.request.acks]
    acks += [(c.request.task_id, c.at) for c in cluster.calls_of("Heartbeat")
             if not c.request.waiting]
    acks += [(o.task_id, c.at) for c in cluster.calls_of("ReportOutcomes")
             for o in c.request.outcomes]
    assert all(at >= gate.started_at[t] for t, at in acks), acks
    assert {t for t, _ in acks} == {f"t{n}" for n in range(1, 21)}


async def test_waiting_tasks_start_in_lease_order(autojump_clock: trio.abc.Clock) -> None:
    cluster = FakeCluster(lease_ms=30_000, to_lease=[make_task(n) for n in range(1, 9)])
    started: list[str] = []

    async def handler(ctx: TaskContext) -> None:
        started.append(ctx.task_id)
        await trio.sleep(1)

    worker = worker_for(cluster, handler, max_concurrent_tasks=1, prefetch=7)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await wait_for(lambda: len(cluster.recorded) == 8)
        worker.stop(5)
    assert started == [f"t{n}" for n in range(1, 9)]
    assert len(cluster.calls_of("LeaseTasks")[0].request.acks) == 0


async def test_a_freed_slot_starts_the_next_task_without_a_lease_call(
    autojump_clock: trio.abc.Clock,
) -> None:
    cluster = FakeCluster(lease_ms=30_000, to_lease=[make_task(1), make_task(2)])
    gate = Gate()
    worker = worker_for(cluster, gate.handler, max_concurrent_tasks=1, prefetch=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await wait_for(lambda: gate.started == ["t1"])
        await trio.sleep(1)
        calls = len(cluster.calls)
        opened_at = trio.current_time()
        gate.open("t1")
        await wait_for(lambda: gate.started == ["t1", "t2"])
        assert gate.started_at["t2"] - opened_at < 0.001  # no round trip in between
        assert not [c for c in cluster.calls[calls:] if c.method == "LeaseTasks"
                    and c.at < gate.started_at["t2"]]  # started before any lease call
        gate.open("t2")
        await wait_for(lambda: len(cluster.recorded) == 2)
        worker.stop(5)


async def test_waiting_tasks_are_heartbeated_but_acknowledged_only_once_started(
    autojump_clock: trio.abc.Clock,
) -> None:
    cluster = FakeCluster(lease_ms=3000, to_lease=[make_task(1), make_task(2)])
    gate = Gate()
    worker = worker_for(cluster, gate.handler, max_concurrent_tasks=1, prefetch=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await wait_for(lambda: gate.started == ["t1"])
        await trio.sleep(20)  # t2 waits much longer than its lease
        assert gate.started == ["t1"]
        beats = [c for c in cluster.calls_of("Heartbeat") if c.request.task_id == "t2"]
        at = [c.at for c in beats]
        assert len(at) >= 20 / 1.0 - 2  # every third of the 3 s lease
        assert max(b - a for a, b in zip([0.0, *at], at + [trio.current_time()],
                                         strict=True)) < 3
        # Kept alive, never acknowledged: killed now, the worker would leave t2 undelivered.
        assert all(c.request.waiting for c in beats)
        assert not [a for c in cluster.calls_of("LeaseTasks") for a in c.request.acks
                    if a.task_id == "t2"]
        # t1 started on arrival: no credit is free, so no lease call carries its ack, and
        # the prompt first heartbeat does.
        received_at = cluster.calls_of("LeaseTasks")[0].at
        t1 = [c for c in cluster.calls_of("Heartbeat") if c.request.task_id == "t1"]
        assert not t1[0].request.waiting and t1[0].at - received_at <= 0.05 * 3 + 0.01
        beats_before = len(beats)
        opened_at = trio.current_time()
        gate.open("t1")
        await wait_for(lambda: gate.started == ["t1", "t2"])
        # Started: its next heartbeat, soon, acknowledges it (or a lease call, if one comes first).
        await trio.sleep(0.2)
        after = [c for c in cluster.calls_of("Heartbeat") if c.request.task_id == "t2"]
        first_acking = next((c for c in after[beats_before:] if not c.request.waiting), None)
        acked_by_lease = [c.at for c in cluster.calls_of("LeaseTasks")
                          if any(a.task_id == "t2" for a in c.request.acks)]
        assert (first_acking is not None
                and first_acking.at - opened_at <= 0.05 * 3 + 0.01) or (
            acked_by_lease and acked_by_lease[0] - opened_at <= 0.05 * 3 + 0.01)
        assert all(not c.request.waiting for c in after[beats_before:]
                   if c.at > gate.started_at["t2"])
        gate.open("t2")
        await wait_for(lambda: len(cluster.recorded) == 2)
        worker.stop(5)
    assert which(cluster.recorded["t2"]) == "success"


async def test_a_waiting_task_started_while_its_heartbeat_is_in_flight_is_acked_soon(
    autojump_clock: trio.abc.Clock,
) -> None:
    """t2's `waiting` heartbeat is slow to answer; t2 starts meanwhile: the answer does not
    push the acknowledging heartbeat back to the ordinary interval."""
    cluster = FakeCluster(lease_ms=3000, to_lease=[make_task(1), make_task(2)])
    gate = Gate()
    original = cluster.call_address
    slow: list[float] = []

    async def call_address(address: str, method: str, request: Any, response_type: Any,
                           **kw: Any) -> Any:
        if method == "Heartbeat" and request.task_id == "t2" and request.waiting and not slow:
            slow.append(trio.current_time())
            await trio.sleep(0.5)
        return await original(address, method, request, response_type, **kw)

    cluster.call_address = call_address  # type: ignore[method-assign]
    worker = worker_for(cluster, gate.handler, max_concurrent_tasks=1, prefetch=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await wait_for(lambda: bool(slow))
        await trio.sleep(0.1)  # the slow heartbeat is in flight
        gate.open("t1")
        await wait_for(lambda: gate.started == ["t1", "t2"])
        started = gate.started_at["t2"]
        await trio.sleep(1.5)
        acking = [c.at for c in cluster.calls_of("Heartbeat")
                  if c.request.task_id == "t2" and not c.request.waiting]
        acked_by_lease = [c.at for c in cluster.calls_of("LeaseTasks")
                          if any(a.task_id == "t2" for a in c.request.acks)]
        first = min(acking + acked_by_lease)
        # At most the rest of the slow call plus the prompt first heartbeat (0.15 s), well
        # before the ordinary interval (1 s) after it.
        assert first - started <= 0.4 + 0.15 + 0.01, (started, acking, acked_by_lease)
        gate.open("t2")
        await wait_for(lambda: len(cluster.recorded) == 2)
        worker.stop(5)


async def test_stop_hands_back_the_waiting_tasks(autojump_clock: trio.abc.Clock) -> None:
    cluster = FakeCluster(lease_ms=30_000, to_lease=[make_task(n) for n in range(1, 5)])
    gate = Gate()
    worker = worker_for(cluster, gate.handler, max_concurrent_tasks=1, prefetch=3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await wait_for(lambda: gate.started == ["t1"] and not cluster.to_lease)
        await trio.sleep(1)
        worker.stop(10)
        await wait_for(lambda: len(cluster.recorded) == 3)  # handed back before t1 ends
        assert gate.started == ["t1"]
        gate.open("t1")
    assert gate.started == ["t1"]  # the slot t1 freed started nothing
    assert {t: which(o) for t, o in cluster.recorded.items()} == {
        "t1": "success", "t2": "released", "t3": "released", "t4": "released"}
    released = cluster.recorded["t3"]
    assert (released.job_id, released.attempt, released.tenant) == ("j3", 1, "default")
    assert worker.stats.handed_back == 3
    assert (worker.completed, worker.failed) == (1, 0)


async def test_a_waiting_task_whose_job_is_cancelled_is_handed_back(
    autojump_clock: trio.abc.Clock,
) -> None:
    cluster = FakeCluster(lease_ms=3000, to_lease=[make_task(1), make_task(2)])
    gate = Gate()
    original = cluster.call_address

    async def call_address(address: str, method: str, request: Any, response_type: Any,
                           **kw: Any) -> Any:
        resp = await original(address, method, request, response_type, **kw)
        if method == "Heartbeat" and request.task_id == "t2":
            return pb.HeartbeatResponse(cancelled=True, lease_expiry_ms=1)
        return resp

    cluster.call_address = call_address  # type: ignore[method-assign]
    worker = worker_for(cluster, gate.handler, max_concurrent_tasks=1, prefetch=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await wait_for(lambda: "t2" in cluster.recorded)
        assert which(cluster.recorded["t2"]) == "released"
        gate.open("t1")
        await wait_for(lambda: "t1" in cluster.recorded)
        worker.stop(5)
    assert gate.started == ["t1"]


async def test_a_waiting_task_whose_lease_is_lost_is_dropped(
    autojump_clock: trio.abc.Clock,
) -> None:
    cluster = FakeCluster(lease_ms=3000, to_lease=[make_task(1), make_task(2), make_task(3)])
    gate = Gate()
    cluster.fail("Heartbeat", lambda r: RpcError(Code.NOT_FOUND, "lease not found")
                 if r.task_id == "t2" else None)
    worker = worker_for(cluster, gate.handler, max_concurrent_tasks=1, prefetch=2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await wait_for(lambda: worker.stats.leases_lost == 1)
        gate.open("t1")
        gate.open("t3")
        await wait_for(lambda: len(cluster.recorded) == 2)
        worker.stop(5)
    assert gate.started == ["t1", "t3"]
    assert sorted(cluster.recorded) == ["t1", "t3"]


async def test_prefetch_zero_leases_only_for_free_slots(autojump_clock: trio.abc.Clock) -> None:
    cluster = FakeCluster(lease_ms=30_000, to_lease=[make_task(n) for n in range(1, 6)])
    gate = Gate()
    worker = worker_for(cluster, gate.handler, max_concurrent_tasks=2, prefetch=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await wait_for(lambda: len(gate.started) == 2)
        await trio.sleep(2)
        assert len(cluster.to_lease) == 3
        worker.stop(0.1)
    assert [c.request.max_tasks for c in cluster.calls_of("LeaseTasks")][0] == 2
    assert worker.stats.handed_back == 0


def test_prefetch_setting() -> None:
    cluster = FakeCluster()

    async def handler(ctx: TaskContext) -> None:
        pass

    assert worker_for(cluster, handler, max_concurrent_tasks=7).prefetch == 7
    assert worker_for(cluster, handler, prefetch=0).prefetch == 0
    for bad, message in ((-1, "outside 0..1000"), (PREFETCH_MAX + 1, "outside 0..1000"),
                         (True, "must be an integer"), (1.5, "must be an integer")):
        with pytest.raises(ValueError, match=f"prefetch.*{message}"):
            worker_for(cluster, handler, prefetch=bad)
    with pytest.raises(ValueError, match="linger_ms"):
        worker_for(cluster, handler, report_linger_ms=-1)


# -- report linger -----------------------------------------------------------------------------


async def test_reports_from_several_slots_share_a_call(autojump_clock: trio.abc.Clock) -> None:
    """Handlers ending 0.3 ms apart: one ReportOutcomes call carries all three."""
    cluster = FakeCluster(lease_ms=30_000, to_lease=[make_task(n) for n in range(1, 4)])

    async def handler(ctx: TaskContext) -> None:
        await trio.sleep(1 + int(ctx.task_id[1:]) * 0.0003)

    worker = worker_for(cluster, handler, max_concurrent_tasks=3, report_linger_ms=2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await wait_for(lambda: len(cluster.recorded) == 3)
        worker.stop(5)
    calls = cluster.calls_of("ReportOutcomes")
    assert [len(c.request.outcomes) for c in calls] == [3]


async def test_a_lone_report_waits_at_most_the_linger(autojump_clock: trio.abc.Clock) -> None:
    cluster = FakeCluster(lease_ms=30_000, to_lease=[make_task(1)])
    ended: list[float] = []

    async def handler(ctx: TaskContext) -> None:
        await trio.sleep(1)
        ended.append(trio.current_time())

    worker = worker_for(cluster, handler, max_concurrent_tasks=3, report_linger_ms=2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await wait_for(lambda: len(cluster.recorded) == 1)
        worker.stop(5)
    (call,) = cluster.calls_of("ReportOutcomes")
    assert 0.002 - 1e-9 <= call.at - ended[0] <= 0.0021


async def test_when_every_slot_is_stuck_the_waiting_tasks_are_handed_back(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A stuck thread holds the only slot: the prefetched tasks could not start, so they go
    back to the server, and the worker leases nothing until the thread returns."""
    cluster = FakeCluster(lease_ms=30_000, to_lease=[make_task(n) for n in range(1, 4)])
    gate = threading.Event()
    ran: list[str] = []

    def handler(ctx: TaskContext) -> str:
        ran.append(ctx.task_id)
        if ctx.task_id == "t1":
            gate.wait(30)
        return "done"

    worker = worker_for(cluster, handler, max_concurrent_tasks=1, prefetch=2,
                        default_timeout_ms=300)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await wait_for(lambda: len(cluster.recorded) == 3)  # TIMEOUT + 2 released
        assert {t: which(o) for t, o in cluster.recorded.items()} == {
            "t1": "failure", "t2": "released", "t3": "released"}
        assert worker.stats.stuck_handlers == 1 and worker.stats.handed_back == 2
        await trio.sleep(1)  # a long poll in flight when t1 got stuck has ended by now
        leases = len(cluster.calls_of("LeaseTasks"))
        # Its own long timeout: the autojump clock jumps while its thread runs, and under load
        # would otherwise reach the 300 ms default before the thread returns.
        cluster.to_lease = [make_task(4, timeout_ms=60_000)]
        await trio.sleep(5)
        assert len(cluster.calls_of("LeaseTasks")) == leases  # nothing could run: no lease
        gate.set()
        await wait_for(lambda: "t4" in cluster.recorded)
        worker.stop(5)
    assert which(cluster.recorded["t4"]) == "success", cluster.recorded["t4"]
    assert ran == ["t1", "t4"]
