"""Simulated hosts: silo nodes (real ``open_node`` + ``SiloService``), clients and workers.

Every host owns one :class:`~silo.runtime.RandomSource` for its whole life, so the streams a
restarted node draws (task ids, job ids, jitter) continue instead of repeating. A node host keeps
its :class:`~sim.disk.MemoryDisk` across crashes and restarts, and restarts with the same node id.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import trio

from silo.client.client import RetrySettings, SiloClient
from silo.client.worker import TaskContext
from silo.cluster.shard_map import ShardMap
from silo.errors import SiloError
from silo.node import NodeConfig, SiloNode, open_node
from silo.rpc import Handler
from silo.runtime import RandomSource, Runtime
from silo.service import SiloService
from silo.shard import ShardConfig
from sim.audit import ShardImage, image_of
from sim.clock import SimClock
from sim.disk import MemoryDisk
from sim.faults import SimFaults
from sim.observed_worker import ObservedWorker

if TYPE_CHECKING:
    from sim.simulator import Simulator

DATA_DIR = "data"


def _timer_paging(rng: random.Random) -> dict[str, int]:
    """Tiny timer pages, so that the shard pages timers in and out in every run."""
    page = rng.choice((1, 1, 2, 3))
    return {
        "timer_page_rows": page,
        "timer_memory_rows": 2 * page + rng.randrange(3),
        "timer_lookahead_ms": rng.choice((0, 20, 200, 2000)),
    }


def _group_paging(rng: random.Random) -> dict[str, int]:
    """Ready and parked-request pages from tiny (the shard pages each task group's ready rows
    and each queue's requests in and out all the time, a lease gets at most a page or so, and
    grants read on in the middle of operations) through pages wider than any lease, to none at
    all (0: every row in memory)."""
    page = rng.choice((0, 1, 2, 3, 5, 64))
    requests = rng.choice((0, 1, 2, 3, 5, 64))
    return {"ready_page_rows": page, "ready_memory_rows": 2 * page + rng.randrange(4),
            "request_page_rows": requests,
            "request_memory_rows": 2 * requests + rng.randrange(4)}


class NodeHost:
    """One silo node on the simulated runtime."""

    def __init__(
        self, sim: Simulator, name: str, *, shards: int, lease_ms: int, write_latency_s: float
    ) -> None:
        self.sim = sim
        self.name = name
        self.address = f"{name}:7450"
        self.random = RandomSource(sim.random.stream(f"host/{name}").getrandbits(64))
        self.clock = SimClock()
        self.faults: SimFaults = sim.board.faults_for(
            self.random.stream("faults"), sim.mutations, name
        )
        self.disk = MemoryDisk(
            self.random.stream("disk"), self.faults, write_latency=write_latency_s
        )
        self.config = NodeConfig(
            data_dir=DATA_DIR, shards=shards, node_id=name, advertise_address=self.address,
            shard=ShardConfig(lease_ms=lease_ms, **_timer_paging(self.random.stream("paging")),
                              **_group_paging(self.random.stream("ready-paging"))),
        )
        self.generation = 0
        self.serving = False
        self.crashed = False
        self.node: SiloNode | None = None
        self.handlers: dict[str, Handler] = {}
        self.handler_nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._stopped.set()
        self._lifecycle = trio.Lock()
        self.started_at = 0.0
        sim.net.register(self)

    def shard_map(self) -> ShardMap | None:
        """The shard map on the node's disk (what a restart serves), None before the first
        start."""
        raw = self.disk.durable_file(f"{DATA_DIR}/shard_map")
        return None if raw is None else ShardMap.decode(raw)

    def shard_paths(self) -> list[str]:
        """Stores of the shards in the node's map: a split parent's left-over directory or a
        split's clones before its commit are not served, so they are not audited."""
        prefix = f"{DATA_DIR}/shards/"
        shard_map = self.shard_map()
        return [p for p in self.disk.store_paths() if p.startswith(prefix)
                and (shard_map is None or shard_map.get(self.shard_of_path(p)) is not None)]

    def shard_image(self, path: str) -> ShardImage:
        """The durable image of a shard store as the node would serve it (see
        :func:`sim.audit.image_of`)."""
        return image_of(self.disk.durable_items(path), self.shard_of_path(path))

    @staticmethod
    def shard_of_path(path: str) -> int:
        return int(path.rsplit("/", 1)[1])

    def _sink(self, gen: int) -> Callable[[str, dict[str, Any]], None]:
        def sink(kind: str, fields: dict[str, Any]) -> None:
            if self.generation == gen and not self.crashed:
                self.sim.on_event(self, kind, fields)

        return sink

    async def start(self) -> None:
        """Start (or restart, on the same disk) the node; returns once it serves RPCs. A no-op
        when it is already serving."""
        async with self._lifecycle:
            if self.serving:
                return
            await self._stopped.wait()
            await self._start()

    async def _start(self) -> None:
        self.generation += 1
        self.crashed = False
        self.sim.trace.record(f"host {self.name} start gen={self.generation}")
        assert self.sim.nursery is not None
        await self.sim.nursery.start(self._run, self.generation)

    async def _run(self, gen: int, task_status: trio.TaskStatus[None]) -> None:
        runtime = Runtime(
            clock=self.clock, random=self.random, disk=self.disk, faults=self.faults,
            events=self._sink(gen), node_id=self.name,
        )
        self._stopped = trio.Event()
        self._scope = trio.CancelScope()
        try:
            with self._scope:
                async with self._open_node(runtime) as node, trio.open_nursery() as hn:
                    self.node = node
                    self.handlers = SiloService(node).handlers()
                    self.handler_nursery = hn
                    self.serving = True
                    self.started_at = trio.current_time()
                    task_status.started()
                    await self._serve(node)
        except Exception:
            if not (self.crashed and gen == self.generation):
                raise
            # A crash makes every store handle fail: the shutdown path's errors are expected.
        finally:
            if gen == self.generation:
                self.serving = False
                self.node = None
                self.handler_nursery = None
            self._stopped.set()

    def _open_node(self, runtime: Runtime) -> AbstractAsyncContextManager[SiloNode]:
        """The node this host runs (a clustered host connects to etcd first)."""
        return open_node(runtime, self.config)

    async def _serve(self, node: SiloNode) -> None:
        """What the process does once it serves RPCs, until it stops or crashes."""
        await trio.sleep_forever()

    def crash(self) -> None:
        """Crash now: unsynced writes are lost as the disk's seed decides; the process dies."""
        if not self.serving:
            return
        self.crashed = True
        self.serving = False
        report = self.disk.crash()
        self.sim.trace.record(
            f"host {self.name} crash gen={self.generation} "
            + " ".join(f"{p}:{k}/{n}" for p, (k, n) in report.items())
        )
        self.sim.net.host_down(self)
        from sim.simulator import resync_after_crash

        resync_after_crash(self.sim, self)
        assert self._scope is not None
        self._scope.cancel()

    def begin_stop(self) -> None:
        """Start a clean stop now (synchronously): refuse new calls, fail unanswered ones, and
        cancel the node, whose shutdown then flushes and closes every shard."""
        if not self.serving:
            return
        self.serving = False
        self.sim.trace.record(f"host {self.name} stop gen={self.generation}")
        self.sim.net.host_down(self)
        assert self._scope is not None
        self._scope.cancel()

    async def stop(self) -> None:
        """Stop cleanly and wait until the node has shut down."""
        self.begin_stop()
        await self._stopped.wait()

    def at_next_write(self, action: Callable[[], None]) -> None:
        """Run ``action`` at the very start of the node's next store write."""

        def hook(path: str) -> None:
            self.disk.before_write = None
            if self.serving:
                action()

        self.disk.before_write = hook

    @property
    def up(self) -> bool:
        return self.serving


class ClientHost:
    """A host running application code: a producer, an operator, a worker, the auditor."""

    def __init__(self, sim: Simulator, name: str) -> None:
        self.sim = sim
        self.name = name
        self.random = RandomSource(sim.random.stream(f"host/{name}").getrandbits(64))
        self.clock = SimClock()
        self._clients = 0

    def client(self, retry: RetrySettings | None = None) -> SiloClient:
        self._clients += 1
        return SiloClient(
            self.sim.net.connector(self.name), self.sim.seed_addresses(),
            rng=self.random.stream(f"client/{self._clients}"),
            retry=retry or self.sim.retry,
        )


class SimWorker:
    """A real :class:`~silo.client.worker.Worker` on its own host, which the simulator can crash
    (abruptly: running handlers vanish without a report) and restart with a new worker id."""

    def __init__(
        self, sim: Simulator, name: str, task_group: str,
        handler: Callable[[TaskContext], Any], *, concurrency: int, lease_wait_ms: int,
        refresh_handler: Callable[..., Any] | None = None,
    ) -> None:
        self.refresh_handler = refresh_handler
        self.sim = sim
        self.name = name
        self.host = ClientHost(sim, name)
        self.task_group = task_group
        self.handler = handler
        self.concurrency = concurrency
        self.lease_wait_ms = lease_wait_ms
        self.incarnation = 0
        self.prefetch: int | None = None
        """The worker's ``prefetch`` (None: its default)."""
        self.heartbeat_fraction = 1 / 3
        """A fraction above 1 makes a slow worker: its leases lapse between heartbeats."""
        self.discover_interval_s: float | None = sim.worker_discover_interval_s
        """How often the worker looks for nodes that gained shards (None: only the nodes known
        at its start; one node has nothing to discover)."""
        self.faults = sim.board.faults_for(self.host.random.stream("faults"), sim.mutations, name)
        self.worker: ObservedWorker | None = None
        self.running = False
        self._scope: trio.CancelScope | None = None
        self._done = trio.Event()
        self._done.set()

    @property
    def worker_id(self) -> str:
        return f"{self.name}.{self.incarnation}"

    async def start(self) -> None:
        """Start a new incarnation (a no-op while one runs)."""
        if self.running:
            return
        await self._done.wait()
        if self.running:
            return
        self.incarnation += 1
        self.running = True
        self.worker = None
        self._done = trio.Event()
        self._scope = trio.CancelScope()
        self.sim.trace.record(f"worker {self.worker_id} start")
        assert self.sim.nursery is not None
        self.sim.nursery.start_soon(self._run, self._scope, self._done)

    async def _run(self, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                client = self.host.client()
                while True:
                    try:
                        await client.refresh_shard_map()
                        break
                    except SiloError:
                        await trio.sleep(0.5)
                self.worker = ObservedWorker(
                    self.sim.checker, client, self.task_group, self.handler,
                    max_concurrent_tasks=self.concurrency, prefetch=self.prefetch,
                    worker_id=self.worker_id,
                    lease_wait_ms=self.lease_wait_ms, refresh_handler=self.refresh_handler,
                    heartbeat_fraction=self.heartbeat_fraction, faults=self.faults,
                    discover_interval_s=self.discover_interval_s,
                )
                await self.worker.run()
        finally:
            self.running = False
            done.set()

    def crash(self) -> None:
        if self.running and self._scope is not None:
            self.sim.trace.record(f"worker {self.worker_id} crash")
            if self.worker is not None:
                self.worker.killed = True
            self._scope.cancel()

    async def stop(self, timeout: float = 5.0) -> None:
        if self.running and self.worker is not None:
            self.worker.stop(timeout)
        elif self._scope is not None:
            self._scope.cancel()
        await self._done.wait()
