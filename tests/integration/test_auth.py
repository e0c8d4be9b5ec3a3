"""Bearer-token authentication over real gRPC: on (every RPC needs the token) and off."""

from __future__ import annotations

import pytest
import trio

from silo.client import SiloClient, TaskContext, Worker
from silo.errors import Code, Unauthenticated
from silo.rpc import method_path
from silo.transport.grpc import HEALTH_CHECK_METHOD, GrpcConnector
from silo.wire import pb
from tests.integration.conftest import StartNode
from tests.integration.support import Raw, expect_error

TOKEN = "s3cret-token"

METHODS = [
    "Enqueue", "EnqueueBatch", "GetJob", "GetJobResult", "CancelJob", "RestartJob",
    "ExpediteJob", "DeleteJob", "LeaseTasks", "Heartbeat", "ReportOutcome", "ReportOutcomes",
    "GetClusterInfo",
]


async def test_token_required(start_node: StartNode) -> None:
    node = await start_node(token=TOKEN)

    # Raw channels: no token, a wrong token, a token with the wrong scheme.
    for token in (None, "wrong", TOKEN + "x", ""):
        async with GrpcConnector.open(token=token) as connector:
            channel = await connector.connect(node.address)
            for method in METHODS:
                # Authentication comes first: even a malformed request gets UNAUTHENTICATED.
                await expect_error(channel.call(method_path(method), b"\x0f", timeout=10),
                                   Code.UNAUTHENTICATED, "missing or invalid bearer token")
    async with GrpcConnector.open() as connector:
        channel = await connector.connect(node.address)
        await expect_error(
            channel.call(method_path("GetClusterInfo"), b"", timeout=10,
                         metadata={"authorization": f"Basic {TOKEN}"}),
            Code.UNAUTHENTICATED,
        )
        # The health check stays open.
        assert await channel.call(HEALTH_CHECK_METHOD, b"", timeout=10) == b"\x08\x01"

    # The client without (or with a wrong) token cannot even fetch the shard map.
    for token in (None, "wrong"):
        with pytest.raises(Unauthenticated, match="bearer token"):
            async with SiloClient.connect(node.address, token=token):
                pass

    # With the right token everything works, workers included.
    async with SiloClient.connect(node.address, token=TOKEN) as client:
        raw = Raw(client, node.address)
        await raw.alive()
        job = await client.enqueue("auth", {"n": 2})

        async def square(ctx: TaskContext) -> int:
            return int(ctx.payload["n"]) ** 2

        worker = Worker(client, "auth", square, lease_wait_ms=200)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            assert await job.result(timeout=15) == 4
            worker.stop(5)
        assert worker.completed == 1


async def test_no_token_configured(start_node: StartNode) -> None:
    node = await start_node()
    # Without a server token, calls with or without credentials are accepted.
    for token in (None, "anything"):
        async with SiloClient.connect(node.address, token=token) as client:
            raw = Raw(client, node.address)
            await raw.alive()
            info = await raw("GetClusterInfo", pb.GetClusterInfoRequest(),
                             pb.GetClusterInfoResponse)
            assert len(info.shards) == node.config.shards
