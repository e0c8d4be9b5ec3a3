"""Fixtures for the etcd conformance suite: the same tests against the simulated etcd (on the
simulated network, under a MockClock) and against a real etcd process (real clock, loopback).

A test takes ``env`` (an :class:`EtcdEnv`) and ``clock`` (the MockClock for the model, so that
pytest-trio runs the test on simulated time; None for real etcd).
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from silo.cluster.coordinator import EtcdCoordinator
from silo.cluster.etcd import EtcdClient, EtcdRetry
from silo.cluster.layout import ClusterKeys
from tests.cluster.etcd_process import ETCD_BINARY, etcd_process

RETRY = EtcdRetry(attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2, call_timeout_s=0.5)
_prefixes = itertools.count(1)


@dataclass
class EtcdEnv:
    backend: str
    prefix: str
    _connect: Any
    _pause: Any
    _resume: Any
    _clients: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self, name: str) -> bytes:
        """A key private to this test (tests share one real etcd)."""
        return f"{self.prefix}/{name}".encode()

    async def client(self, name: str = "") -> EtcdClient:
        self._clients += 1
        channel = await self._connect(name or f"client{self._clients}")
        return EtcdClient(channel, rng=random.Random(self._clients), retry=RETRY)

    async def coordinator(self, node_id: str) -> EtcdCoordinator:
        return EtcdCoordinator(await self.client(node_id), ClusterKeys(self.prefix), node_id)

    def pause(self) -> None:
        """Make etcd unreachable: calls time out or fail UNAVAILABLE, nothing is applied."""
        self._pause()

    def resume(self) -> None:
        self._resume()


@pytest.fixture(params=["model", "etcd"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "etcd" and ETCD_BINARY is None:
        pytest.skip("the etcd binary is not installed (Debian package etcd-server; CI installs "
                    "it with ci/install-etcd)")
    return str(request.param)


@pytest.fixture
def clock(backend: str) -> trio.testing.MockClock | None:
    return trio.testing.MockClock(autojump_threshold=0) if backend == "model" else None


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[tuple[str, subprocess.Popen]]:
    with etcd_process() as server:
        yield server


@pytest.fixture
def etcd_endpoint(backend: str, request: pytest.FixtureRequest) -> Any:
    if backend != "etcd":
        return None
    return request.getfixturevalue("etcd_server")


@pytest.fixture
async def env(backend: str, etcd_endpoint: Any) -> AsyncIterator[EtcdEnv]:
    prefix = f"/silo-test/{os.getpid()}-{next(_prefixes)}"
    if backend == "model":
        from sim.etcd import EtcdHost
        from sim.simulator import Simulator

        sim = Simulator(seed=7)
        async with trio.open_nursery() as nursery:
            sim.nursery = nursery
            sim.net.nursery = nursery
            host = EtcdHost(sim)
            await host.start()

            async def connect(name: str) -> Any:
                return await sim.net.connector(name).connect(host.address)

            e = EtcdEnv(backend, prefix, connect, lambda: host.set_unavailable(True),
                        lambda: host.set_unavailable(False))
            e.extra.update(sim=sim, host=host)
            yield e
            nursery.cancel_scope.cancel()
        return

    from silo.transport.grpc import GrpcConnector

    address, proc = etcd_endpoint
    async with GrpcConnector.open() as connector:

        async def connect(name: str) -> Any:
            return await connector.connect(address)

        e = EtcdEnv(backend, prefix, connect, lambda: proc.send_signal(signal.SIGSTOP),
                    lambda: proc.send_signal(signal.SIGCONT))
        try:
            yield e
        finally:
            proc.send_signal(signal.SIGCONT)
