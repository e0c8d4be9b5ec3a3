"""Dishonest and unlucky actors the workload drawer can add to a run.

- :func:`zombie`: a worker that heartbeats and reports task ids it never owned (random ids),
  owned before a reap (it leases, falls silent past the lease and the reap slack, then speaks up),
  or took from another worker's live lease. Fencing must refuse every such call
  (FAILED_PRECONDITION or NOT_FOUND) and change nothing. Each call is recorded in the trace
  (``zombie ...``) and in :attr:`Simulator.zombie_calls` (see :class:`ZombieCall`) so that a
  checker can assert that none of them changed state; an OK answer to a call about a lease the
  zombie did not own at that moment ends the run at once (a fencing violation).
- :func:`vanisher`: a worker that leases tasks and crashes before its first heartbeat.
- :func:`sim.bad_input.bad_input` (in 30% of runs): a client whose enqueues each carry one value
  past its limit.

The slow worker (heartbeats too rare: its handlers outlive their leases), hung handlers and the
retrying client are knobs of :class:`sim.workload.Workload` (``slow_worker``, ``hung_prob``,
``retrying_client``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from silo.model import Failure, OutcomeReport, Success
from silo.rpc import RpcError
from silo.wire import outcome_to_pb, pb
from sim.bad_input import BAD_INPUT_PROB, bad_input
from sim.checkers import REAP_SLACK_S
from sim.invariants import Invariant

if TYPE_CHECKING:
    from sim.simulator import Simulator
    from sim.workload import Workload

ZOMBIE_MODES = ("never", "stolen", "reaped")


@dataclass(frozen=True)
class ZombieCall:
    """One heartbeat or report a zombie made, and what it was told."""

    at: float
    worker_id: str
    mode: str
    """"never" (a random id), "stolen" (another worker's live lease) or "reaped" (its own
    lease, after the lease and the reap slack passed)."""
    call: str
    """"Heartbeat" or "ReportOutcomes"."""
    shard: int
    task_id: str
    code: str
    """The gRPC code (per report for ReportOutcomes), "OK" if accepted."""
    owned: bool
    """The zombie still owned the lease (by the checker's model) when it called or was
    answered: an OK is then legitimate."""


def start_actors(sim: Simulator, w: Workload) -> None:
    """Start the actors ``w`` asks for."""
    task_group = w.task_group(0)
    if w.zombie:
        sim.spawn(zombie, sim, sim.add_host("zombie"), task_group, w.shards, w.lease_ms,
                  sim.random.stream("actors/zombie"))
    if w.vanisher:
        sim.spawn_fault_phase(vanisher, sim, sim.add_host("vanisher"), task_group, w.lease_ms,
                              sim.random.stream("actors/vanisher"))
    # Drawn from a stream of its own, so that adding it left every other draw of a seed alone.
    coin = sim.random.stream("actors/bad_input.coin")
    if sim.param("bad_input", coin.random() < BAD_INPUT_PROB):
        sim.spawn_fault_phase(bad_input, sim, sim.add_host("bad-input"), task_group,
                              sim.random.stream("actors/bad_input"))


def _owner(sim: Simulator, task_id: str) -> str | None:
    key = sim.checker.live_leases.get(task_id)
    if key is None:
        return None
    lease = sim.checker.jobs[key].lease
    return None if lease is None else lease.worker_id


def _address(sim: Simulator) -> str | None:
    up = [n for _, n in sorted(sim.nodes.items()) if n.serving]
    return up[0].address if up else None


async def zombie(sim: Simulator, host: Any, task_group: str, shards: int, lease_ms: int,
                 rng: random.Random) -> None:
    client = host.client()
    worker_id = "zombie.1"
    held: list[tuple[pb.Task, float]] = []
    while True:
        await trio.sleep(rng.expovariate(1.0 / max(0.2, lease_ms / 2000)))
        address = _address(sim)
        if address is None:
            continue
        mode = rng.choice(("lease", *ZOMBIE_MODES))
        if mode == "lease":
            if sim.healed_at is not None:
                continue
            try:
                resp = await client.call_address(
                    address, "LeaseTasks",
                    pb.LeaseTasksRequest(worker_id=worker_id, task_group=task_group,
                                         max_tasks=1, all_shards=True, wait_ms=lease_ms),
                    pb.LeaseTasksResponse, timeout=lease_ms / 1000 + 2.0,
                )
            except RpcError:
                continue
            sim.count("zombie.leases", len(resp.tasks))
            for task in resp.tasks:
                sim.trace.record(f"zombie lease {task.task_id} (falls silent)")
                held.append((task, trio.current_time()))
            continue
        now = trio.current_time()
        if mode == "never":
            task_id, shard = f"t{rng.getrandbits(96):024x}", rng.randrange(shards)
            tenant, job_id, attempt = "", "", 0
        elif mode == "stolen":
            live = sorted(sim.checker.live_leases.items())
            live = [(t, k) for t, k in live if _owner(sim, t) not in (None, worker_id)]
            if not live:
                continue
            task_id, key = rng.choice(live)
            j = sim.checker.jobs[key]
            lease = j.lease
            assert lease is not None
            shard, tenant, job_id, attempt = j.shard, key[0], key[1], lease.attempt
        else:
            due = [(t, at) for t, at in held if now > at + lease_ms / 1000 + REAP_SLACK_S + 1]
            if not due:
                continue
            task, _ = rng.choice(due)
            task_id, shard = task.task_id, task.shard
            tenant, job_id, attempt = task.tenant, task.job_id, task.attempt
        owned_before = _owner(sim, task_id) == worker_id
        call = rng.choice(("Heartbeat", "ReportOutcomes"))
        try:
            if call == "Heartbeat":
                await client.call_address(
                    address, call,
                    pb.HeartbeatRequest(shard=shard, worker_id=worker_id, task_id=task_id),
                    pb.HeartbeatResponse,
                )
                code = "OK"
            else:
                outcome = Success(b"") if rng.random() < 0.5 else Failure("ZOMBIE", b"")
                report = OutcomeReport(worker_id, task_id, outcome, tenant or None,
                                       job_id or None, attempt or None)
                resp = await client.call_address(
                    address, call,
                    pb.ReportOutcomesRequest(outcomes=[outcome_to_pb(shard, report)]),
                    pb.ReportOutcomesResponse,
                )
                status = resp.statuses[0] if resp.statuses else None
                code = "OK" if status is None or not status.code else _code_name(status.code)
        except RpcError as exc:
            code = exc.code.name
        owned = owned_before or _owner(sim, task_id) == worker_id
        record = ZombieCall(trio.current_time(), worker_id, mode, call, shard, task_id, code,
                            owned)
        sim.zombie_calls.append(record)
        sim.count(f"zombie.{mode}.{call}.{code}")
        sim.trace.record(f"zombie {mode} {call} shard={shard} task={task_id} -> {code}"
                         + (" (owned)" if owned else ""))
        if code == "OK" and not owned:
            sim.checker.fail(
                Invariant.FENCING,
                f"fencing: a {call} from {worker_id} for task {task_id} ({mode}: not its "
                f"lease) was accepted", f"zombie call {record}")
            return


def _code_name(code: int) -> str:
    from silo.errors import Code

    try:
        return Code(code).name
    except ValueError:
        return str(code)


async def vanisher(sim: Simulator, host: Any, task_group: str, lease_ms: int,
                   rng: random.Random) -> None:
    """Every few leases: lease 1-3 tasks as a fresh worker incarnation and vanish at once,
    before any heartbeat (the crash between receiving a lease and the first heartbeat)."""
    client = host.client()
    n = 0
    while True:
        await trio.sleep(rng.expovariate(1.0 / max(0.5, 2 * lease_ms / 1000)))
        address = _address(sim)
        if address is None:
            continue
        n += 1
        worker_id = f"vanisher.{n}"
        try:
            resp = await client.call_address(
                address, "LeaseTasks",
                pb.LeaseTasksRequest(worker_id=worker_id, task_group=task_group,
                                     max_tasks=rng.randint(1, 3), all_shards=True,
                                     wait_ms=lease_ms),
                pb.LeaseTasksResponse, timeout=lease_ms / 1000 + 2.0,
            )
        except RpcError:
            continue
        if resp.tasks:
            sim.count("vanisher.vanished_with", len(resp.tasks))
            sim.trace.record(f"vanisher {worker_id} vanishes holding "
                             f"{[t.task_id for t in resp.tasks]}")
