"""The simulated world of one run: hosts, network, faults, checkers, phases and the final audit.

One :class:`Simulator` lives inside one ``trio.run`` under a ``MockClock`` with deterministic
scheduling (see :mod:`sim.runner`). A scenario builds the world through it, drives a fault phase,
calls :meth:`Simulator.heal`, then :meth:`Simulator.settle` (the liveness phase); the runner then
calls :meth:`Simulator.final_audit`. The first violated invariant, crash of the code under test, or
missed liveness bound stops the run.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from silo.client.client import RetrySettings
from silo.errors import Code, SiloError
from silo.runtime import RandomSource
from sim import events
from sim.audit import diff_counters, wait_for_cycle
from sim.checkers import Checker, Violation
from sim.faults import FaultBoard
from sim.hosts import ClientHost, NodeHost, SimWorker
from sim.invariants import Invariant
from sim.network import NetConfig, SimNetwork
from sim.polls import IdlePolls
from sim.trace import Trace, format_fields

TICK_S = 0.25
WAIT_FOR_EVERY_TICKS = 20
"""The wait-for graph (invariant 16) is checked every this many ticks."""
CLEANUP_BOUND_S = 300.0
"""Simulated seconds the final audit waits for split cleanups still running to finish."""
COUNTER_PASSES_MAX = 5
"""Counter passes of the final audit, each after waiting for split cleanups (a shard that
moves after the wait may start its sweep again on its new owner)."""
MAX_RUN_S = 1800.0
"""Simulated seconds after which a run that has not finished counts as a missed liveness bound
(e.g. a node that never manages to restart)."""


@dataclass
class FaultPlan:
    """What the fault phase injects. Rates are per message / per write; intervals are mean
    simulated seconds between injections (None: never)."""

    rates: dict[str, float] = field(default_factory=dict)
    crash_every_s: float | None = None
    clean_restart_every_s: float | None = None
    restart_delay_s: tuple[float, float] = (0.2, 3.0)
    partition_every_s: float | None = None
    partition_s: tuple[float, float] = (0.5, 5.0)
    clock_jump_every_s: float | None = None
    clock_jump_ms: tuple[int, int] = (-3000, 8000)
    worker_crash_every_s: float | None = None
    worker_restart_s: tuple[float, float] = (0.5, 5.0)
    worker_stop_every_s: float | None = None
    """Clean worker stops (``Worker.stop`` with 0.1-2 s for running handlers; the prefetched
    tasks are handed back), each followed by a restart after ``worker_restart_s``."""


class Simulator:
    def __init__(
        self,
        seed: int,
        *,
        mutations: tuple[str, ...] = (),
        echo: Callable[[str], None] | None = None,
        trace_echo: Callable[[str], None] | None = None,
    ) -> None:
        self.seed = seed
        self.mutations = tuple(mutations)
        self.echo = echo or (lambda line: None)
        self.trace = Trace(trace_echo)
        self.random = RandomSource(seed)
        self.board = FaultBoard(self.trace)
        self.board.choose_buggify(self.random.stream("buggify"))
        self.net = SimNetwork(self, self.random.stream("net"), self.board, self.trace)
        self.checker = Checker(self._on_violation, probe=self._probe, now=self._now)
        self.nodes: dict[str, NodeHost] = {}
        self.hosts: dict[str, ClientHost] = {}
        self.workers: dict[str, SimWorker] = {}
        self.params: dict[str, Any] = {}
        self.retry = RetrySettings(
            attempts=8, initial_backoff_s=0.05, max_backoff_s=1.0, call_timeout_s=2.0
        )
        self.nursery: trio.Nursery | None = None
        self._fault_nursery: trio.Nursery | None = None
        self.violation: Violation | None = None
        self.crash_report: str | None = None
        self.crash_invariant: Invariant | None = None
        """Set when the crash is the code under test dying from a request (invariant 17)."""
        self.liveness_report: str | None = None
        self.stopped = False
        self.phase = "setup"
        self.healed_at: float | None = None
        self.stats: dict[str, int] = {}
        self.polls = IdlePolls()
        self.zombie_calls: list[Any] = []
        """Every heartbeat and report a zombie made (sim.actors.ZombieCall)."""
        self.plan = FaultPlan()
        self.worker_discover_interval_s: float | None = None
        """Workers' ``discover_interval_s`` (a cluster's scenario sets it)."""
        self.cluster: Any = None
        """The :class:`sim.cluster_nodes.ClusterWorld` of a multi-node run (None: one node)."""

    # -- parameters and bookkeeping ---------------------------------------------------------

    def param(self, name: str, value: Any) -> Any:
        """Record (and print) a parameter the scenario drew."""
        self.params[name] = value
        self.echo(f"param {name}={value!r}")
        return value

    def count(self, stat: str, n: int = 1) -> None:
        self.stats[stat] = self.stats.get(stat, 0) + n

    @staticmethod
    def _now() -> float:
        try:
            return trio.current_time()
        except RuntimeError:
            return 0.0

    @property
    def ok(self) -> bool:
        return self.violation is None and self.crash_report is None and (
            self.liveness_report is None
        )

    def stop(self) -> None:
        self.stopped = True
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def _on_violation(self, v: Violation) -> None:
        if not self.ok:
            return
        self.violation = v
        self.trace.record(f"VIOLATION {v.title}: {v.message}")
        self.stop()

    def code_crash(self, what: str, exc: BaseException) -> None:
        if not self.ok:
            return
        tb = "".join(traceback.format_exception(exc))
        self.crash_report = f"crash: {what}: {exc!r}\n{tb}"
        self.crash_invariant = Invariant.NO_NODE_DEATH
        self.trace.record(f"CRASH {what}: {exc!r}")
        self.stop()

    # -- hooks from hosts and network -------------------------------------------------------

    def on_event(self, host: Any, kind: str, fields: dict[str, Any],
                 origin: str | None = None) -> None:
        """The node's event sink: typed here (see :mod:`sim.events`), then checked. ``host`` is
        what the checkers see (the node, or a cluster's shared data root); ``origin`` the node
        that emitted it, when that differs."""
        self.trace.record(f"ev {origin or host.name} {kind} {format_fields(fields)}")
        try:
            ev = events.parse(kind, fields)
        except events.UnknownEvent as exc:
            # The shard and the simulator disagree on what an event is: a simulator crash.
            if self.ok:
                self.crash_report = f"crash: {exc}"
                self.stop()
            return
        self.checker.on_event(host, kind, ev)

    def on_serve_start(self, server: Any, method: str, request: bytes) -> Any:
        name = method.rsplit("/", 1)[-1]
        if name == "Heartbeat":
            return (name, self.checker.on_heartbeat_start(request))
        if name in ("Enqueue", "EnqueueBatch"):
            return (name, self.checker.on_enqueue_start(name, request))
        if name in ("ReportOutcome", "ReportOutcomes"):
            return (name, self.checker.on_report_start(name, request))
        if name == "LeaseTasks":
            return (name, self.polls.on_request(
                request, server.name if self.cluster is not None else ""))
        return (name, None)

    def on_serve_end(self, token: Any, response: bytes | None, error: Any) -> None:
        name, data = token
        if error is not None:
            self.count(f"rpc.{name}.{error.code.name}")
        if data is None:
            return
        if name == "LeaseTasks":
            self.polls.on_reply(data, response)
        elif name == "Heartbeat":
            self.checker.on_heartbeat_end(data, response)
        elif name in ("ReportOutcome", "ReportOutcomes"):
            self.checker.on_report_end(name, data, response, error)
        else:
            self.checker.on_enqueue_end(name, data, error, response)

    def _probe(self, host: Any, shard: int, key: bytes) -> bytes | None:
        return host.disk.durable_get(f"{host.config.data_dir}/shards/{shard}", key)

    # -- building the world -----------------------------------------------------------------

    def seed_addresses(self) -> list[str]:
        return [n.address for n in self.nodes.values()]

    async def add_node(
        self, name: str, *, shards: int, lease_ms: int, write_latency_s: float = 0.001
    ) -> NodeHost:
        if self.nodes:
            # Coordination "none": one node owns every shard. Several nodes are a cluster
            # (coordination etcd): see start_cluster.
            raise ValueError("a run without a cluster has exactly one node")
        host = NodeHost(self, name, shards=shards, lease_ms=lease_ms,
                        write_latency_s=write_latency_s)
        self.nodes[name] = host
        await host.start()
        return host

    async def start_cluster(
        self, *, shards: int, ttl_s: int, interval_s: float, lease_ms: int,
        write_latency_s: float = 0.001,
    ) -> Any:
        """Start etcd and the shared data root of a multi-node run (coordination etcd); nodes
        are added with :meth:`add_cluster_node`. Returns the
        :class:`sim.cluster_nodes.ClusterWorld`."""
        from sim.cluster_nodes import ClusterWorld

        if self.nodes or self.cluster is not None:
            raise ValueError("the cluster must be started before any node")
        self.cluster = ClusterWorld(self, shards=shards, ttl_s=ttl_s, interval_s=interval_s,
                                    lease_ms=lease_ms, write_latency_s=write_latency_s)
        await self.cluster.start()
        return self.cluster

    async def add_cluster_node(self, name: str) -> NodeHost:
        """A real node with coordination etcd, its disk a view of the shared data root."""
        assert self.cluster is not None, "start_cluster first"
        host: NodeHost = await self.cluster.add_node(name)
        return host

    def add_host(self, name: str) -> ClientHost:
        host = ClientHost(self, name)
        self.hosts[name] = host
        return host

    async def add_worker(
        self, name: str, task_group: str, handler: Callable[..., Any], *, concurrency: int,
        lease_wait_ms: int = 2000, refresh_handler: Callable[..., Any] | None = None,
        heartbeat_fraction: float = 1 / 3, prefetch: int | None = None,
    ) -> SimWorker:
        w = SimWorker(self, name, task_group, handler, concurrency=concurrency,
                      lease_wait_ms=lease_wait_ms, refresh_handler=refresh_handler)
        w.prefetch = prefetch
        w.heartbeat_fraction = heartbeat_fraction
        self.workers[name] = w
        await w.start()
        return w

    def set_network(self, config: NetConfig) -> None:
        self.net.config = config

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn`` for the rest of the run."""
        assert self.nursery is not None
        self.nursery.start_soon(fn, *args)

    def spawn_fault_phase(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn`` until :meth:`heal` (fault drivers, operators)."""
        assert self._fault_nursery is not None
        self._fault_nursery.start_soon(fn, *args)

    # -- the run ----------------------------------------------------------------------------

    async def main(self, scenario: Callable[[Simulator, random.Random], Awaitable[None]],
                   rng: random.Random) -> None:
        async with trio.open_nursery() as root:
            self.nursery = root
            self.net.nursery = root
            root.start_soon(self._ticker)
            await root.start(self._fault_host)
            self.trace.record(f"run seed={self.seed} mutations={list(self.mutations)}")
            try:
                with trio.move_on_after(MAX_RUN_S) as watchdog:
                    self.phase = "faults"
                    await scenario(self, rng)
                    if self.ok:
                        if self.healed_at is None:
                            await self.heal()
                            await self.settle(120.0)
                    if self.ok:
                        self.phase = "audit"
                        await self.final_audit()
                if watchdog.cancelled_caught and self.ok:
                    self.liveness_report = (
                        f"the run did not finish within {MAX_RUN_S:.0f} simulated seconds "
                        f"(stuck in phase {self.phase!r}; nodes serving: "
                        f"{[n.name for n in self.nodes.values() if n.serving]})"
                    )
                    self.trace.record("LIVENESS run bound missed")
            finally:
                self.phase = "done"
                root.cancel_scope.cancel()

    async def _fault_host(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as n:
            self._fault_nursery = n
            task_status.started()
            await trio.sleep_forever()

    async def _ticker(self) -> None:
        n = 0
        while True:
            await trio.sleep(TICK_S)
            self.checker.tick(trio.current_time())
            self._check_poison()
            n += 1
            if n % WAIT_FOR_EVERY_TICKS == 0:
                self._check_wait_for()
            if self.cluster is not None:
                for node in self.cluster.nodes():
                    node.check_served_alone()

    def _check_wait_for(self) -> None:
        """Invariant 16 on every serving node's durable shard images: no wait-for cycle among
        parked requests (a cycle never resolves by itself, so a periodic look finds it)."""
        for _, node in sorted(self.nodes.items()):
            if not node.serving:
                continue
            for path in node.shard_paths():
                cycle = wait_for_cycle(node.shard_image(path))
                if cycle is not None:
                    self.checker.fail(Invariant.NO_WAIT_CYCLE,
                                      f"{node.name}:{path}: wait-for cycle among parked "
                                      f"requests (each holds a slot the next waits for)", *cycle)
                    return

    def _check_poison(self) -> None:
        """Invariant 17 for errors that emit no event (a background-loop round that raised)."""
        for _, node in sorted(self.nodes.items()):
            if node.serving and node.node is not None:
                for sid, shard in sorted(node.node.shards.items()):
                    self.checker.on_poison_count(node, sid, shard.statistics().poison_items)

    # -- fault phase ------------------------------------------------------------------------

    def start_faults(self, plan: FaultPlan) -> None:
        """Switch on ``plan``: message/disk fault rates now, injection drivers in background."""
        self.plan = plan
        self.board.set_rates(plan.rates)
        self.board.enabled = True
        drivers: list[tuple[float | None, str, Callable[[random.Random], Awaitable[None]]]] = [
            (plan.crash_every_s, "node.crash", self._inject_crash),
            (plan.clean_restart_every_s, "node.restart", self._inject_clean_restart),
            (plan.partition_every_s, "net.partition", self._inject_partition),
            (plan.clock_jump_every_s, "clock.jump", self._inject_clock_jump),
            (plan.worker_crash_every_s, "worker.crash", self._inject_worker_crash),
            (plan.worker_stop_every_s, "worker.stop", self._inject_worker_stop),
        ]
        for every, point, fn in drivers:
            if every:
                self.spawn_fault_phase(self._driver, every, point, fn)

    async def _driver(
        self, every: float, point: str, fn: Callable[[random.Random], Awaitable[None]]
    ) -> None:
        rng = self.random.stream(f"faults/{point}")
        while True:
            await trio.sleep(rng.expovariate(1.0 / every))
            if self.board.enabled:
                await fn(rng)

    async def _inject_crash(self, rng: random.Random) -> None:
        up = [n for n in self.nodes.values() if n.serving]
        if not up:
            return
        host = rng.choice(up)
        delay = rng.uniform(*self.plan.restart_delay_s)
        if rng.random() < 0.5:
            self._crash(host, delay, "")
        else:  # at the start of the node's next write, with its neighbours mid-flight
            host.at_next_write(lambda: self._crash(host, delay, "at-write"))

    def crash_host(self, host: NodeHost, delay: float, how: str) -> None:
        """Crash ``host`` now (if faults are on and it serves) and restart it ``delay`` s
        later (scenarios that crash at a point of their own choosing)."""
        self._crash(host, delay, how)

    def stop_host(self, host: NodeHost, delay: float, how: str) -> None:
        """Stop ``host`` cleanly now and restart it ``delay`` s later."""
        self._clean_stop(host, delay, how)

    def _crash(self, host: NodeHost, delay: float, how: str) -> None:
        if not self.board.enabled or not host.serving:
            return
        self.board.count("node.crash", f"{host.name} {how}".rstrip())
        host.crash()
        self.spawn(self._restart_later, host, delay)

    async def _inject_clean_restart(self, rng: random.Random) -> None:
        up = [n for n in self.nodes.values() if n.serving]
        if not up:
            return
        host = rng.choice(up)
        delay = rng.uniform(*self.plan.restart_delay_s)
        if rng.random() < 0.5:
            self._clean_stop(host, delay, "")
        else:
            host.at_next_write(lambda: self._clean_stop(host, delay, "at-write"))

    def _clean_stop(self, host: NodeHost, delay: float, how: str) -> None:
        if not self.board.enabled or not host.serving:
            return
        self.board.count("node.restart", f"{host.name} {how}".rstrip())
        host.begin_stop()
        self.spawn(self._clean_restart, host, delay)

    async def _clean_restart(self, host: NodeHost, delay: float) -> None:
        await host.stop()
        await trio.sleep(delay)
        await host.start()

    async def _restart_later(self, host: NodeHost, delay: float) -> None:
        await trio.sleep(delay)
        await host.start()

    async def _inject_partition(self, rng: random.Random) -> None:
        others = sorted([*self.hosts, *self.workers])
        if not others or not self.nodes:
            return
        a = rng.choice(sorted(self.nodes))
        b = rng.choice(others)
        duration = rng.uniform(*self.plan.partition_s)
        self.board.count("net.partition", f"{a}|{b} {duration:.3f}s")
        self.net.partition(a, b)
        self.spawn(self._heal_later, a, b, duration)

    async def _heal_later(self, a: str, b: str, delay: float) -> None:
        await trio.sleep(delay)
        self.net.heal(a, b)

    async def _inject_clock_jump(self, rng: random.Random) -> None:
        host = self.nodes[rng.choice(sorted(self.nodes))]
        delta = rng.randint(*self.plan.clock_jump_ms)
        self.board.count("clock.jump", f"{host.name} {delta:+d}ms")
        host.clock.step_wall_ms(delta)
        self.checker.on_clock_step(host)

    async def _inject_worker_crash(self, rng: random.Random) -> None:
        live = [w for name, w in sorted(self.workers.items()) if w.running]
        if not live:
            return
        w = rng.choice(live)
        self.board.count("worker.crash", w.worker_id)
        self.checker.on_worker_crash(w.worker_id)
        w.crash()
        self.spawn(self._restart_worker_later, w, rng.uniform(*self.plan.worker_restart_s))

    async def _inject_worker_stop(self, rng: random.Random) -> None:
        live = [w for name, w in sorted(self.workers.items()) if w.running]
        if not live:
            return
        w = rng.choice(live)
        self.board.count("worker.stop", w.worker_id)
        self.spawn(self._stop_worker_and_restart, w, round(rng.uniform(0.1, 2.0), 3),
                   rng.uniform(*self.plan.worker_restart_s))

    async def _stop_worker_and_restart(self, w: SimWorker, timeout: float, delay: float) -> None:
        await w.stop(timeout)
        await self._restart_worker_later(w, delay)

    async def _restart_worker_later(self, w: SimWorker, delay: float) -> None:
        await trio.sleep(delay)
        await w.start()

    async def heal(self) -> None:
        """End the fault phase: faults stop, partitions heal, crashed hosts restart."""
        self.phase = "liveness"
        self.board.enabled = False
        if self._fault_nursery is not None:
            self._fault_nursery.cancel_scope.cancel()
        self.net.heal_all()
        self.healed_at = trio.current_time()
        self.trace.record("heal")
        if self.cluster is not None:
            await self.cluster.heal()
        for _, node in sorted(self.nodes.items()):
            node.disk.before_write = None
        for _, node in sorted(self.nodes.items()):
            if self.cluster is None or node.name not in self.cluster.gone:
                await node.start()
        for _, w in sorted(self.workers.items()):
            await w.start()

    async def settle(self, bound_s: float, done: Callable[[], bool] = lambda: True) -> bool:
        """The liveness phase: wait until ``done()`` and every known job is terminal (and every
        acknowledged job known), at most ``bound_s`` simulated seconds."""
        deadline = trio.current_time() + bound_s
        while True:
            if done() and self.checker.settled():
                self.trace.record("settled")
                return True
            if trio.current_time() >= deadline:
                break
            await trio.sleep(TICK_S)
        self._check_wait_for()  # a deadlock is the better report than its missed bound
        if not self.ok:
            return False
        open_jobs = self.checker.open_jobs()
        lines = [f"{len(open_jobs)} job(s) not terminal {bound_s:.0f}s after healing"]
        for j in open_jobs[:5]:
            lines.append("  " + j.describe())
            lines.extend("    " + h for h in j.history[-5:])
        missing = self.checker.missing_acked()
        if missing:
            lines.append(f"acknowledged but never seen durable: {missing[:5]}")
        if not done():
            lines.append("the scenario's own work (producers) did not finish")
        if self.cluster is not None and not self.cluster.all_served():
            lines.append(self.cluster.liveness_report())
        if self.checker.live_leases:
            lines.append(f"live leases: {sorted(self.checker.live_leases)[:5]}")
        if self.ok:
            self.liveness_report = "\n".join(lines)
            self.trace.record("LIVENESS bound missed")
            self.stop()
        return False

    # -- final audit ------------------------------------------------------------------------

    def _pending_cleanups(self) -> list[str]:
        out = []
        if self.cluster is not None and not self.cluster.all_served():
            # A shard between owners may carry a sweep its next owner resumes.
            out.append(f"shards between owners: {self.cluster.unserved()}")
        for _, node in sorted(self.nodes.items()):
            if node.node is None:
                continue
            for sid, shard in sorted(node.node.shards.items()):
                marker = shard.split_marker()
                if marker is not None and not marker.done:
                    out.append(f"{node.name} shard {sid} ({marker.stage}, {marker.deleted} "
                               f"rows deleted)")
            if node.node.clustered:
                continue  # a cluster's records live in etcd; each child notes its own sweep
            for parent, record in sorted(node.node.splitter.records.items()):
                if record.phase.committed and not record.phase.finished:
                    out.append(f"{node.name} split of shard {parent} still "
                               f"{record.phase.label}")
        return out

    async def _wait_split_cleanups(self, bound_s: float) -> bool:
        """Split cleanups must finish once faults stop (their counters are audited after)."""
        deadline = trio.current_time() + bound_s
        while self._pending_cleanups():
            if trio.current_time() >= deadline:
                self.liveness_report = (f"split cleanup not done {bound_s:.0f}s into the "
                                        f"audit: {self._pending_cleanups()}")
                self.trace.record("LIVENESS split cleanup bound missed")
                self.stop()
                return False
            await trio.sleep(TICK_S)
        return True

    async def _check_counters(self) -> bool:
        """Invariant 12 on every open shard at rest. A cluster may still move a shard after
        the audit began; one whose new owner resumed a split sweep is judged once the sweep
        is done (its recount ends it), so the pass starts over then (a few times at most)."""
        for _ in range(COUNTER_PASSES_MAX):
            if not await self._wait_split_cleanups(CLEANUP_BOUND_S):
                return False
            if await self._counters_pass():
                return self.ok
            if not self.ok:
                return False
        self.checker.fail(Invariant.COUNTERS, f"shards kept moving with split sweeps pending "
                          f"through {COUNTER_PASSES_MAX} counter passes")
        return False

    async def _counters_pass(self) -> bool:
        """Compare counters with a recount on each open shard; False (nothing judged for the
        shard) when it is sweeping after a move."""
        for _, node in sorted(self.nodes.items()):
            if node.node is None:
                assert self.cluster is not None and node.name in self.cluster.gone
                continue
            for sid, shard in sorted(node.node.shards.items()):
                counters, recount = shard.counters(), await shard.recount()
                marker = shard.split_marker()
                if marker is not None and not marker.done:
                    return False
                diff = diff_counters(counters, recount)
                if diff:
                    self.checker.fail(Invariant.COUNTERS,
                                      f"{node.name} shard {sid}: JobShard.counters() differ "
                                      f"from JobShard.recount(): {diff}")
                    return True
        return True

    async def final_audit(self) -> None:
        """Through the API, on the live shards, then directly on each node's disk."""
        if not await self._wait_split_cleanups(CLEANUP_BOUND_S):
            return
        jobs = sorted(self.checker.jobs.items())
        auditor = self.add_host("auditor").client() if jobs else None
        for key, j in jobs:
            assert auditor is not None
            try:
                job = await auditor.job(j.job_id, j.tenant).get()
                status: str | None = job.status.name
            except SiloError as exc:
                if exc.code != Code.NOT_FOUND:
                    raise
                status = None
            want = None if j.deleted else j.status
            if status != want:
                lost = status is None and key in self.checker.acked
                inv = Invariant.NO_LOST_ENQUEUE if lost else Invariant.TRANSITIONS
                self.checker.fail(inv, f"API shows job {key} as {status}, events say {want}",
                                  j.describe(), *j.history[-5:])
                return
        self.checker.final_acked()
        if not self.ok:
            return
        for _, w in sorted(self.workers.items()):
            await w.stop(2.0)
        self.checker.final_results()
        busy = self.polls.busy_loop(trio.current_time())
        if busy is not None:
            self.checker.fail(Invariant.IDLE_POLLS, busy)
        self._check_poison()
        if not self.ok:
            return
        if not await self._check_counters():
            return
        for _, node in sorted(self.nodes.items()):
            await node.stop()
        audited: list[Any] = [self.cluster.site] if self.cluster is not None else [
            node for _, node in sorted(self.nodes.items())]
        for host in audited:
            for path in host.shard_paths():
                img = host.shard_image(path)
                self.checker.final_shard(host, host.shard_of_path(path), img,
                                         f"{host.name}:{path}")
                if not self.ok:
                    return
        self.trace.record("audit passed")
        self.stats["timers.paged"] = self.checker.timer_pages
        self.stats["slots.granted"] = self.checker.grants
        self.stats["slots.released"] = self.checker.releases
        self.stats["slots.granted_during_backoff"] = self.checker.grants_during_backoff
        self.stats["enqueue.resent_deleted"] = self.checker.resent_deleted
        self.stats["task.max_moves_per_attempt"] = max(self.checker.moves.values(), default=0)
        for outcome, n in self.checker.refreshes.items():
            if n:
                self.stats[f"refresh.{outcome}"] = n
        self.stats["slots.peak_holders"] = max(self.checker.peak_holders.values(), default=0)


def resync_after_crash(sim: Simulator, host: NodeHost) -> None:
    """Right after ``host`` crashed: audit each shard's durable image, check it against the
    model, adopt it, and check that every acknowledged enqueue survived."""
    present: set[tuple[str, str]] = set()
    shard_map = host.shard_map()
    if shard_map is not None:
        sim.checker.adopt_map(host, shard_map)
    for path in host.shard_paths():
        img = host.shard_image(path)
        present.update(img.states)
        sim.checker.resync_shard(host, host.shard_of_path(path), img, f"{host.name}:{path}")
    sim.checker.check_acked_present(host, present, host.name)


__all__ = ["FaultPlan", "Simulator", "resync_after_crash"]
