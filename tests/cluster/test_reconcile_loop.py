"""The reconcile loop's effects against the etcd model and a real etcd: shards end up served
exactly once, move close-before-release, are reclaimed by a restarted node, are closed when the
membership is lost, and follow a force-release; sticky placement never moves them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from silo.cluster.reconcile import ClusterView, Reconciler, ReconcileSettings
from tests.cluster.conftest import EtcdEnv

SHARDS = 8


class World:
    """Which node has which shard open, checking that no two ever do at once."""

    def __init__(self) -> None:
        self.open_by: dict[int, str] = {}
        self.log: list[tuple[str, str, int]] = []


class FakeHost:
    def __init__(self, world: World, node: str) -> None:
        self.world = world
        self.node = node
        self.open: set[int] = set()
        self.paused: dict[int, str] = {}
        self.views: list[ClusterView] = []

    def serving(self) -> frozenset[int]:
        return frozenset(self.open)

    async def open_shard(self, shard_id: int) -> object:
        other = self.world.open_by.get(shard_id)
        assert other is None, f"{self.node} opens shard {shard_id} while {other} serves it"
        await trio.sleep(0.01)
        self.world.open_by[shard_id] = self.node
        self.open.add(shard_id)
        self.world.log.append(("open", self.node, shard_id))
        return None

    async def close_shard(self, shard_id: int) -> None:
        if shard_id not in self.open:
            return
        await trio.sleep(0.01)
        self.open.discard(shard_id)
        del self.world.open_by[shard_id]
        self.world.log.append(("close", self.node, shard_id))

    def pause(self, shard_id: int, reason: str) -> None:
        self.paused[shard_id] = reason

    def resume(self, shard_id: int) -> None:
        self.paused.pop(shard_id, None)

    def observe_view(self, view: ClusterView) -> None:
        self.views = [view]


class Cluster:
    def __init__(self, env: EtcdEnv, nursery: trio.Nursery, *, sticky: bool = False) -> None:
        self.env = env
        self.nursery = nursery
        self.world = World()
        self.sticky = sticky
        self.nodes: dict[str, tuple[Reconciler, FakeHost, trio.CancelScope]] = {}

    async def start(self, node: str) -> Reconciler:
        coord = await self.env.coordinator(node)
        host = FakeHost(self.world, node)
        rec = Reconciler(coord, host, ReconcileSettings(
            address=f"127.0.0.1:{7000 + len(self.nodes)}", initial_shards=SHARDS,
            membership_ttl_s=1, interval_s=0.1, sticky=self.sticky, rejoin_backoff_s=0.1))
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await rec.run(task_status=task_status)

        await self.nursery.start(run)
        self.nodes[node] = (rec, host, scope)
        return rec

    def stop(self, node: str) -> None:
        self.nodes.pop(node)[2].cancel()

    def serving(self) -> dict[str, list[int]]:
        return {n: sorted(h.open) for n, (_, h, _) in sorted(self.nodes.items())}

    async def settle(self, want: int = SHARDS, timeout: float = 20.0) -> dict[int, str]:
        """Wait until ``want`` shards are served and match the ownership keys."""
        coord = await self.env.coordinator("observer")
        with trio.fail_after(timeout):
            while True:
                owners = await coord.owners()
                served = dict(self.world.open_by)
                if len(served) == want and all(owners.get(s) == n for s, n in served.items()):
                    await trio.sleep(0.3)
                    if dict(self.world.open_by) == served:
                        return served
                await trio.sleep(0.05)


@asynccontextmanager
async def cluster(env: EtcdEnv, **kw) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        c = Cluster(env, nursery, **kw)
        yield c
        nursery.cancel_scope.cancel()


async def test_three_nodes_serve_every_shard_once_and_a_fourth_rebalances(
        env: EtcdEnv, clock) -> None:
    async with cluster(env) as c:
        for n in ("a", "b", "c"):
            await c.start(n)
        served = await c.settle()
        counts = {n: len(s) for n, s in c.serving().items()}
        assert sum(counts.values()) == SHARDS and max(counts.values()) <= 4
        await c.start("d")
        served = await c.settle()
        assert "d" in served.values()
        # Every move closed on the old node before the new node opened it.
        last: dict[int, tuple[str, str]] = {}
        for what, node, shard in c.world.log:
            if what == "open" and shard in last:
                assert last[shard][0] == "close", c.world.log
            last[shard] = (what, node)


async def test_a_restarted_node_reclaims_its_shards_and_force_release_frees_them(
        env: EtcdEnv, clock) -> None:
    async with cluster(env) as c:
        for n in ("a", "b", "c"):
            await c.start(n)
        await c.settle()
        before = c.serving()["c"]
        assert before
        c.stop("c")
        await trio.sleep(0.5)
        assert not set(before) & set(c.world.open_by), "a stopped node's shards stay unserved"
        await c.settle(SHARDS - len(before))
        await c.start("c")
        await c.settle()
        assert c.serving()["c"] == before
        # c goes away for good; an operator releases its shards and the others take them.
        c.stop("c")
        await trio.sleep(1.5)
        coord = await env.coordinator("operator")
        for shard in before:
            assert await coord.force_release(shard, "c")
        served = await c.settle()
        assert set(served.values()) <= {"a", "b"}


async def test_losing_etcd_closes_every_shard_and_rejoining_reopens(env: EtcdEnv, clock) -> None:
    async with cluster(env) as c:
        recs = [await c.start(n) for n in ("a", "b")]
        await c.settle()
        env.pause()
        try:
            with trio.fail_after(5):
                while c.world.open_by:
                    await trio.sleep(0.05)
            assert not any(r.alive for r in recs)
        finally:
            env.resume()
        await c.settle()
        assert all(r.stats.fail_closed >= 1 for r in recs)


async def test_sticky_placement_keeps_shards_where_they_are(env: EtcdEnv, clock) -> None:
    async with cluster(env, sticky=True) as c:
        await c.start("a")
        first = await c.settle()
        assert set(first.values()) == {"a"}
        await c.start("b")
        await trio.sleep(1.0)
        assert await c.settle() == first
