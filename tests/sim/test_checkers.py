"""The checkers must be able to fail: synthetic event sequences, one per invariant.

Each test feeds a legal prefix, then the bad event, and expects the checker to name the
invariant; the legal sequences must pass untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from silo.keys import Prefix, key
from silo.model import (
    PARKED,
    READY,
    TIMER,
    Attempt,
    AttemptState,
    JobFingerprint,
    JobInfo,
    JobState,
    JobStatus,
    Lease,
    QueueState,
    Task,
    encode_int,
)
from silo.pb.silo import v1 as pb
from silo.shard.tables import JOBS_TERMINAL, JOBS_TOTAL, ready_key, status_counter, timer_key
from sim import events
from sim.audit import ShardImage, audit_holders, audit_image, wait_for_cycle
from sim.checkers import REAP_SLACK_S, Checker, Violation, reachable
from sim.invariants import Invariant

T0 = 1_000_000


@dataclass
class FakeClock:
    now: int = T0
    offset: int = 0
    """Wall-clock steps so far (they move ``now_ms`` but not ``monotonic_ms``)."""

    def now_ms(self) -> int:
        return self.now + self.offset

    def monotonic_ms(self) -> int:
        return self.now - T0


@dataclass
class FakeHost:
    name: str = "n1"
    serving: bool = True
    clock: FakeClock = field(default_factory=FakeClock)


class Harness:
    def __init__(self, durable: dict[bytes, bytes] | None = None) -> None:
        self.violations: list[Violation] = []
        self.host = FakeHost()
        self.durable = durable if durable is not None else {}
        self.checker = Checker(self.violations.append, probe=self._probe)

    def _probe(self, host: Any, shard: int, k: bytes) -> bytes | None:
        return self.durable.get(k)

    def ev(self, kind: str, **fields: Any) -> None:
        fields.setdefault("shard", 0)
        if "tenant" in events.KINDS[kind].__dataclass_fields__:
            fields.setdefault("tenant", "t")
        self.checker.on_event(self.host, kind, fields)

    @property
    def invariant(self) -> int | None:
        return self.violations[0].invariant if self.violations else None

    # -- legal building blocks --------------------------------------------------------------

    def enqueue(self, job: str, *, priority: int = 50, due: int = T0, at: int = T0,
                attempt: int = 1) -> None:
        self.ev("job_enqueued", job_id=job, task_group="g", priority=priority, due_ms=due)
        self.ev("status_changed", job_id=job, old=None, new="SCHEDULED", attempt=attempt,
                at_ms=at, task_group="g", priority=priority, due_ms=due)

    def lease(self, job: str, task: str, *, attempt: int = 1, priority: int = 50,
              due: int = T0, at: int = T0, expiry: int = T0 + 1000) -> None:
        self.ev("task_leased", job_id=job, task_id=task, attempt=attempt, worker_id="w",
                task_group="g", priority=priority, due_ms=due, expiry_ms=expiry, at_ms=at)
        self.ev("status_changed", job_id=job, old="SCHEDULED", new="RUNNING", attempt=attempt,
                at_ms=at, task_group="g", priority=priority, due_ms=None)

    def end(self, job: str, task: str, *, attempt: int = 1, state: str = "SUCCEEDED",
            new: str = "SUCCEEDED", at: int = T0 + 10, due: int | None = None,
            outcome: str | None = None) -> None:
        self.ev("lease_ended", job_id=job, task_id=task, attempt=attempt,
                outcome=outcome or state.lower(), at_ms=at, state=state)
        self.ev("status_changed", job_id=job, old="RUNNING", new=new,
                attempt=attempt + (1 if new == "SCHEDULED" else 0), at_ms=at, task_group="g",
                priority=50, due_ms=due)


def test_legal_lifecycles_pass() -> None:
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1")
    h.end("a", "t1", state="FAILED", new="SCHEDULED", due=T0 + 500)
    h.lease("a", "t2", attempt=2, due=T0 + 500, at=T0 + 600)
    h.ev("cancel_requested", job_id="a", status="RUNNING", at_ms=T0 + 700)
    h.end("a", "t2", attempt=2, state="CANCELLED", new="CANCELLED", at=T0 + 800)
    h.ev("status_changed", job_id="a", old="CANCELLED", new="SCHEDULED", attempt=3,
         at_ms=T0 + 900, task_group="g", priority=50, due_ms=T0 + 900)
    h.lease("a", "t3", attempt=3, due=T0 + 900, at=T0 + 900)
    h.end("a", "t3", attempt=3)
    h.ev("job_deleted", job_id="a", status="SUCCEEDED")
    h.checker.on_ack_enqueue("t", "a")
    assert h.violations == []
    assert h.checker.settled()


def test_inv1_task_leased_twice() -> None:
    h = Harness()
    h.enqueue("a")
    h.enqueue("b")
    h.lease("a", "t1")
    h.ev("task_leased", job_id="b", task_id="t1", attempt=1, worker_id="w", task_group="g",
         priority=50, due_ms=T0, expiry_ms=T0 + 1000, at_ms=T0)
    assert h.invariant == Invariant.SINGLE_LEASE


def test_inv1_job_with_two_live_leases() -> None:
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1")
    h.ev("task_leased", job_id="a", task_id="t2", attempt=2, worker_id="w", task_group="g",
         priority=50, due_ms=T0, expiry_ms=T0 + 1000, at_ms=T0)
    assert h.invariant == Invariant.SINGLE_LEASE


def test_inv1_leased_task_still_queued_on_disk() -> None:
    durable: dict[bytes, bytes] = {}
    h = Harness(durable)
    h.enqueue("a")
    task = Task("t1", "t", "a", 1, "g", 50, T0)
    durable[ready_key(task)] = task.encode()
    h.lease("a", "t1")
    assert h.invariant == Invariant.SINGLE_LEASE
    assert "still in the ready queue" in h.violations[0].message


def test_inv3_illegal_transition() -> None:
    h = Harness()
    h.enqueue("a")
    h.ev("status_changed", job_id="a", old="SCHEDULED", new="SUCCEEDED", attempt=1,
         at_ms=T0, task_group="g", priority=50, due_ms=None)
    assert h.invariant == Invariant.TRANSITIONS


def test_inv3_running_without_running_attempt() -> None:
    h = Harness()
    h.enqueue("a")
    h.ev("status_changed", job_id="a", old="SCHEDULED", new="RUNNING", attempt=1,
         at_ms=T0, task_group="g", priority=50, due_ms=None)
    assert h.invariant == Invariant.TRANSITIONS


def test_inv3_old_status_mismatch() -> None:
    h = Harness()
    h.enqueue("a")
    h.ev("status_changed", job_id="a", old="FAILED", new="SCHEDULED", attempt=2,
         at_ms=T0, task_group="g", priority=50, due_ms=T0)
    assert h.invariant == Invariant.TRANSITIONS


def test_inv4_lease_ended_twice() -> None:
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1")
    h.end("a", "t1")
    h.ev("lease_ended", job_id="a", task_id="t1", attempt=1, outcome="failed", at_ms=T0 + 20,
         state="FAILED")
    assert h.invariant == Invariant.ATTEMPTS


def test_inv4_attempt_numbers_must_increase() -> None:
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1")
    h.end("a", "t1", state="FAILED", new="SCHEDULED", due=T0)
    # The retry queued attempt 2; a lease of attempt 1 again is a repeat.
    h.ev("task_leased", job_id="a", task_id="t9", attempt=1, worker_id="w", task_group="g",
         priority=50, due_ms=T0, expiry_ms=T0 + 1000, at_ms=T0)
    assert h.invariant == Invariant.ATTEMPTS


def test_inv4_requeue_must_allocate_a_new_attempt() -> None:
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1")
    h.ev("lease_ended", job_id="a", task_id="t1", attempt=1, outcome="failed", at_ms=T0,
         state="FAILED")
    h.ev("status_changed", job_id="a", old="RUNNING", new="SCHEDULED", attempt=1, at_ms=T0,
         task_group="g", priority=50, due_ms=T0)
    assert h.invariant == Invariant.ATTEMPTS


def test_inv5_terminal_with_live_lease() -> None:
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1")
    h.ev("status_changed", job_id="a", old="RUNNING", new="FAILED", attempt=1, at_ms=T0,
         task_group="g", priority=50, due_ms=None)
    assert h.invariant == Invariant.TERMINAL_CLEAN


def test_inv5_cancelled_task_left_in_queue() -> None:
    durable: dict[bytes, bytes] = {}
    h = Harness(durable)
    h.enqueue("a", due=T0 + 5000)
    task = Task("t1", "t", "a", 1, "g", 50, T0 + 5000)
    from silo.shard.tables import timer_key

    durable[timer_key(task)] = task.encode()
    h.ev("cancel_requested", job_id="a", status="SCHEDULED", at_ms=T0)
    h.ev("status_changed", job_id="a", old="SCHEDULED", new="CANCELLED", attempt=1, at_ms=T0,
         task_group="g", priority=50, due_ms=None)
    assert h.invariant == Invariant.TERMINAL_CLEAN
    assert "timer queue" in h.violations[0].message


def test_inv5_delete_of_running_job() -> None:
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1")
    h.ev("job_deleted", job_id="a", status="RUNNING")
    assert h.invariant == Invariant.TERMINAL_CLEAN


def test_inv6_ack_before_durable() -> None:
    h = Harness()
    h.checker.on_ack_enqueue("t", "a")
    assert h.invariant == Invariant.NO_LOST_ENQUEUE


def test_inv6_acked_job_lost_in_crash() -> None:
    h = Harness()
    h.checker.strict_acks = False
    h.checker.on_ack_enqueue("t", "a")
    assert h.violations == []
    h.checker.check_acked_present(h.host, set(), "n1")
    assert h.invariant == Invariant.NO_LOST_ENQUEUE


def test_inv6_durable_job_missing_after_crash() -> None:
    h = Harness()
    h.enqueue("a")
    h.checker.resync_shard(h.host, 0, ShardImage(), "n1:data/shards/0")
    assert h.invariant == Invariant.NO_LOST_ENQUEUE


def test_inv8_expired_lease_not_reaped() -> None:
    """Leased at monotonic 0 s with 1 s to go: overdue from 1 s on, a violation once more than
    REAP_SLACK_S later."""
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1", expiry=T0 + 1000)
    h.checker.tick(0.0)
    h.checker.tick(1.0)
    h.checker.tick(1.5)
    h.checker.tick(1.5 + REAP_SLACK_S / 2)
    assert h.violations == []
    h.checker.tick(1.5 + REAP_SLACK_S + 0.5)
    assert h.invariant == Invariant.REAP_AND_CANCEL


def test_inv8_a_wall_clock_step_alone_makes_no_lease_overdue() -> None:
    """Deadlines are monotonic (DESIGN §4): a wall step of a minute is no expiry."""
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1", expiry=T0 + 1000)
    h.host.clock.now = T0 + 60_000
    # Past REAP_SLACK_S after the step, but not after the monotonic expiry (1 s).
    for i in range(1, 56):
        h.checker.tick(i / 10)
    assert h.violations == []


def test_inv8_lease_on_a_down_node_is_not_overdue() -> None:
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1", expiry=T0 + 1000)
    h.host.clock.now = T0 + 60_000
    h.host.serving = False
    for i in range(100):
        h.checker.tick(float(i))
    assert h.violations == []


def test_inv8_heartbeat_hides_cancel() -> None:
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1")
    h.ev("cancel_requested", job_id="a", status="RUNNING", at_ms=T0)
    token = h.checker.on_heartbeat_start(bytes(pb.HeartbeatRequest(task_id="t1", worker_id="w")))
    h.checker.on_heartbeat_end(token, bytes(pb.HeartbeatResponse(cancelled=True)))
    assert h.violations == []
    token = h.checker.on_heartbeat_start(bytes(pb.HeartbeatRequest(task_id="t1", worker_id="w")))
    h.checker.on_heartbeat_end(token, bytes(pb.HeartbeatResponse(cancelled=False)))
    assert h.invariant == Invariant.REAP_AND_CANCEL


def test_inv9_lease_skips_higher_priority() -> None:
    h = Harness()
    h.enqueue("low", priority=60)
    h.enqueue("high", priority=10)
    h.lease("low", "t1", priority=60)
    assert h.invariant == Invariant.PRIORITY


def test_inv9_future_task_does_not_count_until_due() -> None:
    h = Harness()
    h.enqueue("low", priority=60)
    h.enqueue("high", priority=10, due=T0 + 5000)
    h.lease("low", "t1", priority=60, at=T0 + 100)
    assert h.violations == []
    h.enqueue("low2", priority=60)
    h.lease("low2", "t2", priority=60, at=T0 + 5000)  # "high" is due now: it must go first
    assert h.invariant == Invariant.PRIORITY


def test_inv9_expedited_task_is_due() -> None:
    h = Harness()
    h.enqueue("low", priority=60)
    h.enqueue("high", priority=10, due=T0 + 5000)
    h.ev("task_expedited", job_id="high", attempt=1, old_due_ms=T0 + 5000, due_ms=T0 + 50,
         at_ms=T0 + 50)
    h.lease("low", "t1", priority=60, at=T0 + 60)
    assert h.invariant == Invariant.PRIORITY


def _image(statuses: dict[str, JobStatus], counters: dict[bytes, int]) -> ShardImage:
    items: dict[bytes, bytes] = {}
    for job, st in statuses.items():
        items[key(Prefix.JOB, "t", job)] = JobInfo("t", job, "g", b"").encode()
        items[key(Prefix.STATUS, "t", job)] = JobState(st, T0, attempt=1).encode()
        items[key(Prefix.ATTEMPT, "t", job, 1)] = Attempt(
            1, "t1", AttemptState.SUCCEEDED, "w", T0, T0).encode()
        items[key(Prefix.JOB_FINGERPRINT, "t", job)] = b"\x00" * 16
    for k, v in counters.items():
        items[k] = encode_int(v)
    return ShardImage.parse(sorted(items.items()))


def test_inv12_counters_differ_from_recount() -> None:
    good = _image({"a": JobStatus.SUCCEEDED}, {
        JOBS_TOTAL: 1, JOBS_TERMINAL: 1, status_counter("t", JobStatus.SUCCEEDED): 1,
    })
    assert audit_image(good, "x") == []
    bad = _image({"a": JobStatus.SUCCEEDED}, {
        JOBS_TOTAL: 2, JOBS_TERMINAL: 1, status_counter("t", JobStatus.SUCCEEDED): 1,
    })
    problems = audit_image(bad, "x")
    assert [inv for inv, _ in problems] == [12]
    h = Harness()
    h.checker.final_shard(h.host, 0, bad, "x")
    assert h.invariant == Invariant.COUNTERS


def test_audit_fingerprint_rows() -> None:
    img = _image({"a": JobStatus.SUCCEEDED}, {
        JOBS_TOTAL: 1, JOBS_TERMINAL: 1, status_counter("t", JobStatus.SUCCEEDED): 1,
    })
    del img.fingerprints[("t", "a")]
    img.fingerprints[("t", "gone")] = JobFingerprint(b"\x00" * 16)
    messages = [m for _, m in audit_image(img, "x")]
    assert any("fingerprint of missing job" in m for m in messages)
    assert any("has no request fingerprint" in m for m in messages)


def test_audit_terminal_job_with_lease_and_task() -> None:
    img = _image({"a": JobStatus.FAILED}, {
        JOBS_TOTAL: 1, JOBS_TERMINAL: 1, status_counter("t", JobStatus.FAILED): 1,
    })
    img.leases["t1"] = Lease("t1", "t", "a", 1, "g", "w", T0, T0 + 5)
    img.expiries.append((T0 + 5, "t1"))
    img.queued.append(("ready", Task("t2", "t", "a", 2, "g", 50, T0)))
    invs = sorted({inv for inv, _ in audit_image(img, "x")})
    assert invs == [5]


def test_audit_running_job_without_lease() -> None:
    img = _image({"a": JobStatus.RUNNING}, {
        JOBS_TOTAL: 1, status_counter("t", JobStatus.RUNNING): 1,
    })
    invs = sorted({inv for inv, _ in audit_image(img, "x")})
    assert 3 in invs


@pytest.mark.parametrize(
    ("src", "dst", "ok"),
    [(None, "SUCCEEDED", True), ("SUCCEEDED", "SCHEDULED", False), ("FAILED", "RUNNING", True),
     ("SCHEDULED", "SCHEDULED", True), ("SUCCEEDED", "FAILED", False)],
)
def test_reachable(src: str | None, dst: str, ok: bool) -> None:
    assert reachable(src, dst) is ok


def _enqueue_with_retries(h: Harness, job: str, retries: int) -> None:
    h.ev("job_enqueued", job_id=job, task_group="g", priority=50, due_ms=T0,
         retry_count=retries)
    h.ev("status_changed", job_id=job, old=None, new="SCHEDULED", attempt=1, at_ms=T0,
         task_group="g", priority=50, due_ms=T0)


def test_inv8_failure_with_retries_left_must_be_retried() -> None:
    h = Harness()
    _enqueue_with_retries(h, "a", 1)
    h.lease("a", "t1")
    h.end("a", "t1", state="FAILED", new="FAILED", outcome="reaped")
    assert h.invariant == Invariant.REAP_AND_CANCEL


def test_retries_stop_when_the_budget_is_spent() -> None:
    h = Harness()
    _enqueue_with_retries(h, "a", 1)
    h.lease("a", "t1")
    h.end("a", "t1", state="FAILED", new="SCHEDULED", due=T0)
    h.lease("a", "t2", attempt=2)
    h.end("a", "t2", attempt=2, state="FAILED", new="SCHEDULED", due=T0)
    assert h.invariant == Invariant.TRANSITIONS
    assert "not FAILED" in h.violations[0].message


def test_inv3_success_must_end_succeeded() -> None:
    h = Harness()
    _enqueue_with_retries(h, "a", 3)
    h.lease("a", "t1")
    h.end("a", "t1", state="SUCCEEDED", new="FAILED")
    assert h.invariant == Invariant.TRANSITIONS


def test_cancel_flag_beats_retry() -> None:
    h = Harness()
    _enqueue_with_retries(h, "a", 3)
    h.lease("a", "t1")
    h.ev("cancel_requested", job_id="a", status="RUNNING", at_ms=T0)
    h.end("a", "t1", state="FAILED", new="SCHEDULED", due=T0)
    assert h.invariant == Invariant.TRANSITIONS
    h2 = Harness()
    _enqueue_with_retries(h2, "a", 3)
    h2.lease("a", "t1")
    h2.ev("cancel_requested", job_id="a", status="RUNNING", at_ms=T0)
    h2.end("a", "t1", state="FAILED", new="CANCELLED")
    assert h2.violations == []


# -- invariant 2: concurrency slots -----------------------------------------------------------


def _grant(h: Harness, task: str, holders: int, max_: int = 2, queue: str = "q") -> None:
    h.ev("slot_granted", queue=queue, task_id=task, job_id=f"j-{task}", attempt=1,
         holders=holders, max=max_, at_ms=T0)


def _release(h: Harness, task: str, queue: str = "q") -> None:
    h.ev("slot_released", queue=queue, task_id=task, job_id=f"j-{task}", at_ms=T0)


def test_inv2_legal_grants_and_releases_pass() -> None:
    h = Harness()
    _grant(h, "t1", 1)
    _grant(h, "t2", 2)
    _release(h, "t1")
    _grant(h, "t3", 2)
    _release(h, "t2")
    _release(h, "t3")
    _grant(h, "t1b", 1, queue="other")
    assert h.violations == []


def test_inv2_grant_past_the_max() -> None:
    h = Harness()
    _grant(h, "t1", 1, max_=1)
    _grant(h, "t2", 2, max_=1)
    assert h.invariant == Invariant.SLOT_LIMIT
    assert "max is 1" in h.violations[0].message


def test_inv2_slot_granted_twice_to_a_task() -> None:
    h = Harness()
    _grant(h, "t1", 1)
    _grant(h, "t1", 2)
    assert h.invariant == Invariant.SLOT_LIMIT
    assert "granted twice" in h.violations[0].message


def test_inv2_release_without_grant() -> None:
    h = Harness()
    _release(h, "t1")
    assert h.invariant == Invariant.SLOT_LIMIT


def test_inv2_holder_count_drift() -> None:
    h = Harness()
    _grant(h, "t1", 1)
    _release(h, "t1")
    _grant(h, "t2", 2)  # the shard still counts t1
    assert h.invariant == Invariant.SLOT_LIMIT
    assert "drifted" in h.violations[0].message


def test_inv2_resync_adopts_holder_rows() -> None:
    h = Harness()
    _grant(h, "t1", 1)
    h.checker.resync_shard(h.host, 0, ShardImage(), "n1:data/shards/0")
    assert h.violations == []
    assert (h.host.name, 0, "t", "q") not in h.checker.holders  # the grant did not survive
    _grant(h, "t2", 1)
    assert h.violations == []


def test_inv2_resync_finds_orphan_holder_row() -> None:
    h = Harness()
    img = ShardImage()
    img.holders[("t", "q")] = {"t9": ("j9", 1)}
    img.queues[("t", "q")] = QueueState(1)
    h.checker.resync_shard(h.host, 0, img, "n1:data/shards/0")
    assert h.invariant == Invariant.SLOT_LIMIT
    assert "holder row left behind" in h.violations[0].message


def test_inv9_parked_and_token_waiting_tasks_are_not_due() -> None:
    h = Harness()
    h.enqueue("low", priority=60)
    h.enqueue("parked", priority=10)
    h.ev("task_moved", job_id="parked", attempt=1, due_ms=T0, where=PARKED, limits_left=1,
         at_ms=T0)
    h.enqueue("token", priority=10)
    h.ev("task_moved", job_id="token", attempt=1, due_ms=T0, where=TIMER, limits_left=1,
         at_ms=T0)
    h.lease("low", "t1", priority=60, at=T0 + 10)
    assert h.violations == []
    h.enqueue("low2", priority=60)
    h.ev("task_moved", job_id="parked", attempt=1, due_ms=T0, where=READY, limits_left=0,
         at_ms=T0 + 20)
    h.lease("low2", "t2", priority=60, at=T0 + 30)
    assert h.invariant == Invariant.PRIORITY


def _high_timer_then_back_step(h: Harness) -> None:
    """``high`` (priority 10) waits in the timer index, due at T0+3000 (monotonic 3000); at
    monotonic 1000 the node's wall clock steps back 2.5 s."""
    h.ev("job_enqueued", job_id="high", task_group="g", priority=10, due_ms=T0 + 3000)
    h.ev("status_changed", job_id="high", old=None, new="SCHEDULED", attempt=1, at_ms=T0,
         task_group="g", priority=10, due_ms=T0 + 3000, where=TIMER, limits_left=0, mono_ms=0)
    h.host.clock.now = T0 + 1000
    h.host.clock.offset = -2500
    h.checker.on_clock_step(h.host)


def _lease_ready(h: Harness, job: str, task: str, mono: int, seen_at: int | None = None) -> None:
    """Queue ``job`` (priority 60) ready and lease it, at monotonic ``mono``; with ``seen_at``,
    the events reach the checker only at that monotonic time (once the lease's write is
    durable)."""
    h.host.clock.now = T0 + mono
    wall = h.host.clock.now_ms()
    if seen_at is not None:
        h.host.clock.now = T0 + seen_at
    h.ev("job_enqueued", job_id=job, task_group="g", priority=60, due_ms=wall)
    h.ev("status_changed", job_id=job, old=None, new="SCHEDULED", attempt=1, at_ms=wall,
         task_group="g", priority=60, due_ms=wall, where=READY, limits_left=0, mono_ms=mono)
    h.ev("task_leased", job_id=job, task_id=task, attempt=1, worker_id="w", task_group="g",
         priority=60, due_ms=wall, expiry_ms=wall + 1000, at_ms=wall, mono_ms=mono)


def test_inv9_a_wall_step_moves_no_timer_of_a_running_shard() -> None:
    """Timers fall due by the monotonic clock (DESIGN §4): a backward wall step does not delay
    ``high``, so a lower-priority lease at monotonic 4000 skips it."""
    h = Harness()
    _high_timer_then_back_step(h)
    _lease_ready(h, "low", "t1", 4000)
    assert h.invariant == Invariant.PRIORITY


def test_inv9_timers_are_re_based_when_their_shard_reopens() -> None:
    """A shard that opens (here after a restart) re-bases its stored timers on the wall clock
    of the moment (DESIGN §4), so after the backward step ``high`` falls due at monotonic
    3000 + 2500: a lower-priority lease before that is legal, one after it is not (chaos seed
    817402018)."""
    h = Harness()
    _high_timer_then_back_step(h)
    h.host.generation = 2  # type: ignore[attr-defined]  # the node restarted
    h.host.clock.now = T0 + 1500
    h.ev("shard_opened", node="n1", at_ms=h.host.clock.now_ms(), mono_ms=1500)
    _lease_ready(h, "low", "t1", 4000)
    assert h.violations == []
    _lease_ready(h, "low2", "t2", 5500)
    assert h.invariant == Invariant.PRIORITY


def _high_key() -> bytes:
    return timer_key(Task("", "t", "high", 1, "g", 10, T0 + 3000))


def test_inv9_a_timer_on_disk_only_is_judged_on_the_wall_clock() -> None:
    """A timer beyond the node's timer frontier is not in its memory (paged out): it is re-based
    when read back, so until then the backward step does delay it (a lease at monotonic 4000
    is legal), but the node must have read it back once the wall clock reaches its due time."""
    h = Harness()
    _high_timer_then_back_step(h)
    h.ev("timers_paged", node="n1", before=None, after=bytes((Prefix.TIMER,)).hex(),
         at_ms=h.host.clock.now_ms(), mono_ms=1000)  # paged out
    _lease_ready(h, "low", "t1", 4000)
    assert h.violations == []
    _lease_ready(h, "low2", "t2", 5500)  # wall T0 + 3000: due, still on disk only
    assert h.invariant == Invariant.PRIORITY


def test_inv9_a_timer_read_back_is_re_based_on_the_readings_of_its_page_in() -> None:
    """Read back (``timers_paged`` covering its key) after the backward step, ``high`` falls
    due at monotonic 3000 + 2500, on the monotonic clock from then on."""
    h = Harness()
    _high_timer_then_back_step(h)
    h.ev("timers_paged", node="n1", before=None, after=bytes((Prefix.TIMER,)).hex(),
         at_ms=T0 + 1000 - 2500, mono_ms=1000)
    h.ev("timers_paged", node="n1", before=bytes((Prefix.TIMER,)).hex(), after=_high_key().hex(),
         at_ms=T0 + 1200 - 2500, mono_ms=1200)  # read back: due at monotonic 5500
    h.host.clock.offset = 0  # a forward step once it is in memory moves nothing
    h.checker.on_clock_step(h.host)
    _lease_ready(h, "low", "t1", 5499)
    assert h.violations == []
    _lease_ready(h, "low2", "t2", 5500)
    assert h.invariant == Invariant.PRIORITY


def test_inv9_a_lease_decided_before_a_page_in_is_judged_on_the_prior_deadline() -> None:
    """``high`` is read back at monotonic 1200 after a forward step of 2.5 s, re-based to fall
    due at monotonic 500 (due at once). A lower-priority lease decided at 1100, whose event
    arrives only after the page-in (its write was slow), saw the prior deadline (3000): legal
    (wide seed 96186921). One decided after the page-in skips ``high``."""
    h = Harness()
    h.ev("job_enqueued", job_id="high", task_group="g", priority=10, due_ms=T0 + 3000)
    h.ev("status_changed", job_id="high", old=None, new="SCHEDULED", attempt=1, at_ms=T0,
         task_group="g", priority=10, due_ms=T0 + 3000, where=TIMER, limits_left=0, mono_ms=0)
    h.ev("timers_paged", node="n1", before=None, after=bytes((Prefix.TIMER,)).hex(),
         at_ms=T0 + 900, mono_ms=900)  # paged out
    h.host.clock.now = T0 + 1000
    h.host.clock.offset = 2500
    h.checker.on_clock_step(h.host)
    h.ev("timers_paged", node="n1", before=bytes((Prefix.TIMER,)).hex(), after=_high_key().hex(),
         at_ms=T0 + 1200 + 2500, mono_ms=1200)  # read back: due at monotonic 500
    _lease_ready(h, "low", "t1", 1100, seen_at=1400)
    assert h.violations == []
    # Decided in the page-in's millisecond: taken to follow it (an open pages in, then leases).
    _lease_ready(h, "low2", "t2", 1200, seen_at=1500)
    assert h.invariant == Invariant.PRIORITY


def test_inv9_an_open_re_bases_only_the_timers_it_reads() -> None:
    """``shard_opened`` names the frontier: a timer beyond it is on disk only, not re-based by
    the open, so a later forward step makes it due (the node must read it back then)."""
    h = Harness()
    _high_timer_then_back_step(h)
    h.host.generation = 2  # type: ignore[attr-defined]
    h.host.clock.now = T0 + 1500
    h.ev("shard_opened", node="n1", at_ms=h.host.clock.now_ms(), mono_ms=1500,
         timers_to=bytes((Prefix.TIMER,)).hex())
    h.host.clock.offset = 0  # forward again: the wall clock reads T0 + 3000 at monotonic 3000
    h.checker.on_clock_step(h.host)
    _lease_ready(h, "low", "t1", 2999)
    assert h.violations == []
    _lease_ready(h, "low2", "t2", 3000)
    assert h.invariant == Invariant.PRIORITY


def _holder_image(status: JobStatus, holder_task: str, max_: int = 1,
                  extra_holders: int = 0) -> ShardImage:
    img = _image({"a": status}, {})
    st = img.states[("t", "a")]
    st.lease_task_id = "t1" if status == JobStatus.RUNNING else None
    img.holders[("t", "q")] = {holder_task: ("a", 1)}
    for i in range(extra_holders):
        img.holders[("t", "q")][f"x{i}"] = ("a", 1)
    img.queues[("t", "q")] = QueueState(max_)
    return img


def test_audit_holder_row_of_terminal_job() -> None:
    problems = audit_holders(_holder_image(JobStatus.SUCCEEDED, "t1"), "x")
    assert problems and problems[0][0] == Invariant.SLOT_LIMIT
    assert "holder row left behind" in problems[0][1]


def test_audit_holder_row_of_running_attempt_passes() -> None:
    assert audit_holders(_holder_image(JobStatus.RUNNING, "t1"), "x") == []
    problems = audit_holders(_holder_image(JobStatus.RUNNING, "t0"), "x")
    assert problems and "left behind" in problems[0][1]


def test_audit_holders_over_max_unless_max_changed() -> None:
    img = _holder_image(JobStatus.RUNNING, "t1", max_=1, extra_holders=0)
    img.holders[("t", "q")]["t1"] = ("a", 1)
    img.queues[("t", "q")] = QueueState(0)
    problems = audit_holders(img, "x")
    assert any("holders, max 0" in m for _, m in problems)
    assert audit_holders(img, "x", frozenset({("t", "q")})) == []


def test_inv2_released_slot_whose_holder_row_stays_on_disk() -> None:
    from silo.shard.tables import holder_key

    durable: dict[bytes, bytes] = {}
    h = Harness(durable)
    _grant(h, "t1", 1)
    durable[holder_key("t", "q", "t1")] = b"x"
    _release(h, "t1")
    assert h.invariant == Invariant.SLOT_LIMIT
    assert "still on disk" in h.violations[0].message


def test_audit_idle_queue_rows_and_zero_counters() -> None:
    counters = {JOBS_TOTAL: 1, JOBS_TERMINAL: 1, status_counter("t", JobStatus.SUCCEEDED): 1}
    img = _image({"a": JobStatus.SUCCEEDED}, counters)
    img.queues[("t", "busy")] = QueueState(1)
    img.holders[("t", "busy")] = {}
    img.requests[("t", "busy")] = 1
    img.queues[("t", "refreshing")] = QueueState(1, floating=True, refresh_task_id="r1")
    assert audit_image(img, "x") == []
    img.queues[("t", "idle")] = QueueState(1)
    img.counters[status_counter("t", JobStatus.RUNNING)] = 0
    problems = audit_image(img, "x")
    assert [inv for inv, _ in problems] == [12, 12]
    assert "idle queue 'idle'" in problems[0][1]
    assert "stored as zero" in problems[1][1]


def _token(h: Harness, job: str, slot: int, *, limit: int = 2, per_ms: int = 1000) -> None:
    h.ev("token_taken", name="api", key="k", limit=limit, per_ms=per_ms, slot_ms=slot,
         job_id=job, attempt=1, at_ms=slot)


def test_inv13_tokens_within_the_rate_pass() -> None:
    h = Harness()
    for i, slot in enumerate([T0, T0, T0 + 1000, T0 + 1000, T0 + 2500, T0 + 2000]):
        _token(h, f"j{i}", slot)
    assert h.violations == []


def test_inv13_a_window_with_one_token_too_many() -> None:
    h = Harness()
    for i, slot in enumerate([T0, T0 + 400, T0 + 1000]):
        _token(h, f"j{i}", slot)
    assert h.violations == []
    _token(h, "late", T0 + 999)  # [T0 + 400, T0 + 1400) now holds three
    assert h.invariant == Invariant.NOT_BEFORE_DUE
    assert "took 3 tokens within 1000 ms (limit 2)" in h.violations[0].message


def _created_run_and_deleted(h: Harness, job: str, request_id: str) -> None:
    h.ev("job_enqueued", job_id=job, task_group="g", priority=50, due_ms=T0,
         request_id=request_id)
    h.ev("status_changed", job_id=job, old=None, new="SCHEDULED", attempt=1, at_ms=T0,
         task_group="g", priority=50, due_ms=T0)
    h.lease(job, "t1")
    h.end(job, "t1")
    h.ev("job_deleted", job_id=job, status="SUCCEEDED")


def test_inv6_one_call_creating_its_job_again_after_delete() -> None:
    h = Harness()
    _created_run_and_deleted(h, "a", "call-1")
    h.ev("job_enqueued", job_id="a", task_group="g", priority=50, due_ms=T0,
         request_id="call-2")  # a new call re-creates it: legal
    assert h.invariant is None
    h.ev("status_changed", job_id="a", old=None, new="SCHEDULED", attempt=2, at_ms=T0,
         task_group="g", priority=50, due_ms=T0)
    h.lease("a", "t2", attempt=2)
    h.end("a", "t2", attempt=2)
    h.ev("job_deleted", job_id="a", status="SUCCEEDED")
    h.ev("job_enqueued", job_id="a", task_group="g", priority=50, due_ms=T0,
         request_id="call-1")
    assert h.invariant == Invariant.NO_LOST_ENQUEUE
    assert "created again after its delete" in h.violations[0].message


def _batch_answer(h: Harness, job: str, request_id: str, *, deleted: bool) -> None:
    request = bytes(pb.EnqueueBatchRequest(jobs=[pb.JobSpec(tenant="t", id=job)],
                                           request_id=request_id))
    call = h.checker.on_enqueue_start("EnqueueBatch", request)
    response = bytes(pb.EnqueueBatchResponse(results=[pb.EnqueueResult(
        id=job, existed=deleted, deleted=deleted)]))
    h.checker.on_enqueue_end("EnqueueBatch", call, None, response)


def test_inv6_existed_deleted_answered_to_a_call_that_never_created_the_job() -> None:
    h = Harness()
    _created_run_and_deleted(h, "a", "call-1")
    _batch_answer(h, "a", "call-1", deleted=True)
    assert h.invariant is None
    _batch_answer(h, "a", "call-2", deleted=True)
    assert h.invariant == Invariant.NO_LOST_ENQUEUE
    assert "never created them" in h.violations[0].message


# -- invariants 13-17 and fencing --------------------------------------------------------------


def test_inv13_lease_before_the_monotonic_due_time() -> None:
    h = Harness()
    h.ev("job_enqueued", job_id="a", task_group="g", priority=50, due_ms=T0 + 500)
    h.ev("status_changed", job_id="a", old=None, new="SCHEDULED", attempt=1, at_ms=T0,
         task_group="g", priority=50, due_ms=T0 + 500, where=TIMER, limits_left=0, mono_ms=0)
    h.ev("task_moved", job_id="a", attempt=1, due_ms=T0 + 500, where=READY, limits_left=0,
         at_ms=T0 + 400, mono_ms=400)
    h.ev("task_leased", job_id="a", task_id="t1", attempt=1, worker_id="w", task_group="g",
         priority=50, due_ms=T0 + 500, expiry_ms=T0 + 1400, at_ms=T0 + 400, mono_ms=400)
    assert h.invariant == Invariant.NOT_BEFORE_DUE
    assert "100 ms before it was due" in h.violations[0].message


def test_inv13_lease_at_the_due_time_passes_and_clock_steps_relax_it() -> None:
    h = Harness()
    h.ev("job_enqueued", job_id="a", task_group="g", priority=50, due_ms=T0 + 500)
    h.ev("status_changed", job_id="a", old=None, new="SCHEDULED", attempt=1, at_ms=T0,
         task_group="g", priority=50, due_ms=T0 + 500, where=TIMER, limits_left=0, mono_ms=0)
    h.checker.on_clock_step(h.host)
    h.host.generation = 2  # type: ignore[attr-defined]  # restarted: deadlines re-based
    h.ev("task_leased", job_id="a", task_id="t1", attempt=1, worker_id="w", task_group="g",
         priority=50, due_ms=T0 + 500, expiry_ms=T0 + 1400, at_ms=T0 + 400, mono_ms=400)
    assert h.violations == []


def test_inv13_lease_of_a_parked_task() -> None:
    h = Harness()
    h.ev("job_enqueued", job_id="a", task_group="g", priority=50, due_ms=T0)
    h.ev("status_changed", job_id="a", old=None, new="SCHEDULED", attempt=1, at_ms=T0,
         task_group="g", priority=50, due_ms=T0, where=PARKED, limits_left=1, mono_ms=0)
    h.lease("a", "t1")
    assert h.invariant == Invariant.NOT_BEFORE_DUE
    assert "concurrency slot" in h.violations[0].message


def test_inv14_undelivered_attempt_charged() -> None:
    h = Harness()
    _enqueue_with_retries(h, "a", 1)
    h.lease("a", "t1")
    h.ev("lease_ended", job_id="a", task_id="t1", attempt=1, outcome="undelivered",
         at_ms=T0 + 10, state="UNDELIVERED")
    h.ev("status_changed", job_id="a", old="RUNNING", new="SCHEDULED", attempt=2,
         at_ms=T0 + 10, task_group="g", priority=50, due_ms=T0 + 10, run_attempts=1)
    assert h.invariant == Invariant.RETRY_BUDGET


def test_inv14_undelivered_attempt_free_passes() -> None:
    h = Harness()
    _enqueue_with_retries(h, "a", 1)
    h.lease("a", "t1")
    h.ev("lease_ended", job_id="a", task_id="t1", attempt=1, outcome="undelivered",
         at_ms=T0 + 10, state="UNDELIVERED")
    h.ev("status_changed", job_id="a", old="RUNNING", new="SCHEDULED", attempt=2,
         at_ms=T0 + 10, task_group="g", priority=50, due_ms=T0 + 10, run_attempts=0)
    assert h.violations == []


def test_inv15_computed_result_neither_recorded_nor_dropped() -> None:
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1")
    h.checker.on_outcome_computed("w", "t1", "SUCCEEDED")
    h.end("a", "t1", state="FAILED", new="FAILED", outcome="reaped")
    h.checker.final_results()
    assert h.invariant == Invariant.RESULTS_RECORDED


def test_inv15_dropped_with_a_reason_or_recorded_passes() -> None:
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1")
    h.checker.on_outcome_computed("w", "t1", "SUCCEEDED")
    h.checker.on_report_dropped("w", "t1", "refused with NOT_FOUND: lease expired")
    h.end("a", "t1", state="FAILED", new="FAILED", outcome="reaped")
    h.enqueue("b")
    h.lease("b", "t2")
    h.checker.on_outcome_computed("w", "t2", "SUCCEEDED")
    h.end("b", "t2")
    h.checker.final_results()
    assert h.violations == []


def test_inv16_wait_for_cycle() -> None:
    img = ShardImage()
    img.holders[("t", "A")] = {"t1": ("j", 1)}
    img.holders[("t", "B")] = {"t2": ("k", 1)}
    img.parked[("t", "B")] = [Task("t1", "t", "j", 1, "g", 50, T0)]
    assert wait_for_cycle(img) is None
    img.parked[("t", "A")] = [Task("t2", "t", "k", 1, "g", 50, T0)]
    cycle = wait_for_cycle(img)
    assert cycle is not None and len(cycle) == 2
    problems = audit_image(img, "x")
    assert problems[0][0] == Invariant.NO_WAIT_CYCLE


def test_inv17_poison_item() -> None:
    h = Harness()
    h.ev("poison_item", what="report t1", error="OverflowError: boom", at_ms=T0)
    assert h.invariant == Invariant.NO_NODE_DEATH
    h = Harness()
    h.checker.on_poison_count(h.host, 0, 0)
    assert h.violations == []
    h.checker.on_poison_count(h.host, 0, 1)
    assert h.invariant == Invariant.NO_NODE_DEATH


def test_fencing_heartbeat_of_another_workers_lease_answered_ok() -> None:
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1")
    token = h.checker.on_heartbeat_start(bytes(pb.HeartbeatRequest(task_id="t1",
                                                                   worker_id="zombie")))
    h.checker.on_heartbeat_end(token, bytes(pb.HeartbeatResponse()))
    assert h.invariant == Invariant.FENCING


def test_fencing_lease_event_caused_by_a_non_owner() -> None:
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1")
    h.ev("lease_extended", job_id="a", task_id="t1", attempt=1, expiry_ms=T0 + 2000,
         at_ms=T0 + 5, by_worker_id="w")
    assert h.violations == []
    h.ev("lease_ended", job_id="a", task_id="t1", attempt=1, outcome="succeeded",
         at_ms=T0 + 10, state="SUCCEEDED", by_worker_id="zombie")
    assert h.invariant == Invariant.FENCING


def test_fencing_report_of_another_workers_lease_refused_passes() -> None:
    h = Harness()
    h.enqueue("a")
    h.lease("a", "t1")
    req = pb.ReportOutcomesRequest(outcomes=[pb.Outcome(task_id="t1", worker_id="zombie")])
    token = h.checker.on_report_start("ReportOutcomes", bytes(req))
    resp = pb.ReportOutcomesResponse(statuses=[pb.OutcomeStatus(code=9, message="mismatch")])
    h.checker.on_report_end("ReportOutcomes", token, bytes(resp), None)
    assert h.violations == []
    resp = pb.ReportOutcomesResponse(statuses=[pb.OutcomeStatus(code=0)])
    h.checker.on_report_end("ReportOutcomes", token, bytes(resp), None)
    assert h.invariant == Invariant.FENCING
