"""The simulated etcd beyond what a real etcd can be made to do in a test: crashes and restarts,
the etcd.unavailable fault point, history compaction, determinism. (Behaviour shared with real
etcd is in tests/cluster/test_etcd_conformance.py.)"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from silo.cluster.coordinator import EtcdCoordinator
from silo.cluster.etcd import EtcdClient, EtcdRetry, WatchCompacted
from silo.cluster.layout import ClusterKeys
from silo.errors import Unavailable
from sim.etcd import EtcdHost
from sim.simulator import Simulator

RETRY = EtcdRetry(attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2, call_timeout_s=0.5)


@asynccontextmanager
async def etcd_world(seed: int = 5, **host_kwargs) -> AsyncIterator[tuple[Simulator, EtcdHost]]:
    sim = Simulator(seed=seed)
    async with trio.open_nursery() as nursery:
        sim.nursery = nursery
        sim.net.nursery = nursery
        host = EtcdHost(sim, **host_kwargs)
        await host.start()
        yield sim, host
        nursery.cancel_scope.cancel()


async def client(sim: Simulator, host: EtcdHost, name: str = "n1") -> EtcdClient:
    channel = await sim.net.connector(name).connect(host.address)
    return EtcdClient(channel, rng=random.Random(1), retry=RETRY)


async def test_watch_resumes_across_an_etcd_restart_without_loss_or_repeats(
    autojump_clock,
) -> None:
    async with etcd_world() as (sim, host):
        c = await client(sim, host)
        seen: list[bytes] = []
        async with c.watch(b"/w/", prefix=True) as w:
            await w.created.wait()

            async def writer() -> None:
                for i in range(30):
                    await c.put(f"/w/{i:02}".encode(), b"x")
                    if i in (9, 19):
                        await host.restart()  # breaks the watch stream mid-flight

            async with trio.open_nursery() as n:
                n.start_soon(writer)
                with trio.fail_after(60):
                    async for _, events in w:
                        seen += [e.key for e in events]
                        if len(seen) >= 30:
                            break
        assert seen == [f"/w/{i:02}".encode() for i in range(30)]


async def test_a_restart_gives_leases_a_fresh_ttl_and_keeps_data(autojump_clock) -> None:
    async with etcd_world() as (sim, host):
        c = await client(sim, host)
        lease, ttl = await c.grant_lease(2)
        await c.put(b"/m/a", b"1", lease=lease)
        await c.put(b"/m/b", b"2")
        host.crash()
        await trio.sleep(10)  # far past the TTL, but nobody can expire leases while down
        await host.start()
        assert await c.get(b"/m/a") is not None
        assert await c.get(b"/m/b") is not None
        await trio.sleep(ttl + 1)
        assert await c.get(b"/m/a") is None  # not renewed after the restart: expired


async def test_unavailable_fault_point_fails_calls_with_unavailable(autojump_clock) -> None:
    async with etcd_world() as (sim, host):
        c = await client(sim, host)
        sim.board.set_rates({"etcd.unavailable": 1.0})
        with pytest.raises(Unavailable, match="after 3 attempts"):
            await c.put(b"/k", b"v")
        assert sim.board.fired["etcd.unavailable"] == 3
        sim.board.set_rates({})
        assert await c.get(b"/k") is None  # nothing was applied
        sim.board.set_rates({"etcd.unavailable": 0.5})
        ok = 0
        for i in range(20):
            try:
                await c.put(f"/k{i}".encode(), b"v")
                ok += 1
            except Unavailable:
                pass
        assert ok > 10  # retries absorb most single failures


async def test_watch_below_the_retained_history_is_compacted(autojump_clock) -> None:
    async with etcd_world(history_revisions=5) as (sim, host):
        c = await client(sim, host)
        first = await c.put(b"/h/0", b"x")
        for i in range(1, 10):
            await c.put(f"/h/{i}".encode(), b"x")
        with pytest.raises(WatchCompacted) as info:
            async with c.watch(b"/h/", prefix=True, start_revision=first) as w:
                with trio.fail_after(10):
                    async for _ in w:
                        pass
        assert info.value.compact_revision >= first
        async with c.watch(b"/h/", prefix=True, start_revision=first + 6) as w:
            with trio.fail_after(10):
                revision, events = await w.__anext__()
        assert revision == first + 6 and events[0].key == b"/h/6"


async def test_ownership_stays_exclusive_when_responses_are_lost(autojump_clock) -> None:
    """Acquire and release are retried over a network that loses a third of the responses and
    requests; each node's belief matches the owner key whenever it acts on it."""
    async with etcd_world(seed=9) as (sim, host):
        sim.board.set_rates({"net.drop.response": 0.3, "net.drop.request": 0.1})
        retry = EtcdRetry(attempts=20, initial_backoff_s=0.01, max_backoff_s=0.1,
                          call_timeout_s=0.2)
        key = ClusterKeys("/c").owner(0)
        acquired = 0

        async def node(name: str) -> None:
            nonlocal acquired
            channel = await sim.net.connector(name).connect(host.address)
            coord = EtcdCoordinator(
                EtcdClient(channel, rng=random.Random(name), retry=retry), ClusterKeys("/c"), name
            )
            for _ in range(15):
                if (await coord.acquire(0)).acquired:
                    acquired += 1
                    held = host.model.kv.get(key)
                    assert held is not None and held.value == name.encode()
                    await trio.sleep(0.05)
                    assert host.model.kv[key].value == name.encode()  # nobody took it meanwhile
                    assert await coord.release(0) != name
                    held = host.model.kv.get(key)
                    assert held is None or held.value != name.encode()
                await trio.sleep(0.01)

        async with trio.open_nursery() as n:
            for i in range(3):
                n.start_soon(node, f"n{i}")
        assert acquired >= 5
        assert sim.board.fired.get("net.drop.response", 0) > 5


async def _traced_run(seed: int) -> list[str]:
    async with etcd_world(seed=seed) as (sim, host):
        c = await client(sim, host)
        lease, ttl = await c.grant_lease(1)
        async with c.keep_alive(lease, ttl):
            async with c.watch(b"/d/", prefix=True) as w:
                await w.created.wait()
                for i in range(5):
                    await c.put(f"/d/{i}".encode(), b"x", lease=lease)
                async for _, events in w:
                    if events[-1].key == b"/d/4":
                        break
            await trio.sleep(2)
        return [sim.trace.digest(), str(sim.trace.lines)]


def test_runs_are_deterministic() -> None:
    """Same seed, same trace, under the runner's deterministic trio scheduling."""
    import trio.testing

    core = trio._core._run  # type: ignore[attr-defined]

    def run(seed: int) -> list[str]:
        saved = (core._ALLOW_DETERMINISTIC_SCHEDULING, core._r)
        core._ALLOW_DETERMINISTIC_SCHEDULING = True
        core._r = random.Random(f"trio-scheduler/{seed}")
        try:
            return trio.run(_traced_run, seed,
                            clock=trio.testing.MockClock(autojump_threshold=0))
        finally:
            core._ALLOW_DETERMINISTIC_SCHEDULING, core._r = saved

    first = run(11)
    assert int(first[1]) > 20
    assert run(11) == first


def test_the_simulated_etcd_and_the_cluster_layer_import_no_grpclib_or_asyncio() -> None:
    import subprocess
    import sys

    code = (
        "import sys, sim.etcd, silo.cluster.coordinator, silo.cluster.placement\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('grpclib', 'asyncio', 'trio_asyncio', 'h2'))\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
