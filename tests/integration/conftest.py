"""Fixtures for the integration tests: real silo nodes on 127.0.0.1 (port 0) with a temporary
data directory, in this process or (``server_process``) as a child process.

- ``start_node(**overrides)`` starts an in-process node with :class:`ServerConfig` overrides
  (``token=...``, ``lease_ms=...``, ``limits=ShardLimits(...)``...) and returns a
  :class:`~tests.integration.support.Node`; every node it started stops at the end of the test.
- ``node`` / ``address``: one node with the default settings (4 shards).
- ``client``: a :class:`SiloClient` connected to ``address``; ``raw``: single-attempt calls.
- ``server_process(**settings)``: a :class:`~tests.integration.support.ServerProcess` (not yet
  started); killed at the end of the test if still running.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from silo.client import SiloClient
from silo.config import ServerConfig
from silo.server import serve
from tests.integration.support import HOST, Node, Raw, ServerProcess

StartNode = Callable[..., Awaitable[Node]]


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[StartNode]:
    count = 0
    async with trio.open_nursery() as nursery:

        async def start(**overrides: Any) -> Node:
            nonlocal count
            count += 1
            settings: dict[str, Any] = {
                "data_dir": str(tmp_path / f"node-{count}"),
                "grpc_addr": f"{HOST}:0",
                "http_addr": f"{HOST}:0",
                "shards": 4,
                "shutdown_grace_s": 2.0,
            }
            settings.update(overrides)
            config = ServerConfig(**settings)
            grpc_port, http_port = await nursery.start(
                partial(serve, config, handle_signals=False)
            )
            return Node(f"{HOST}:{grpc_port}", grpc_port, http_port, config)

        yield start
        nursery.cancel_scope.cancel()


@pytest.fixture
async def node(start_node: StartNode) -> Node:
    return await start_node()


@pytest.fixture
async def address(node: Node) -> str:
    return node.address


@pytest.fixture
async def client(address: str) -> AsyncIterator[SiloClient]:
    async with SiloClient.connect(address) as c:
        yield c


@pytest.fixture
async def raw(client: SiloClient, address: str) -> Raw:
    return Raw(client, address)


@pytest.fixture
async def server_process(tmp_path: Path) -> AsyncIterator[Callable[..., ServerProcess]]:
    made: list[ServerProcess] = []

    def make(*, limits: dict[str, Any] | None = None, **settings: Any) -> ServerProcess:
        proc = ServerProcess(tmp_path / f"proc-{len(made) + 1}" / "data", dict(settings),
                             dict(limits or {}))
        made.append(proc)
        return proc

    try:
        yield make
    finally:
        for proc in made:
            await proc.stop()
