"""`silo serve`: one node with its gRPC and HTTP endpoints, until SIGINT/SIGTERM.

Shutdown order: stop accepting RPCs and let in-flight ones finish (up to the grace period),
then flush and close every shard, then exit.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from silo.cluster.coordinator import Coordinator
from silo.config import ServerConfig
from silo.http.app import serve_http
from silo.http.metrics import Metrics, instrument
from silo.node import ClusterSettings, NodeConfig, open_node
from silo.reply_size import max_reply_bytes
from silo.runtime import Runtime, real_runtime
from silo.service import SiloService
from silo.shard import ShardConfig

log = logging.getLogger("silo.server")


def node_config(config: ServerConfig) -> NodeConfig:
    return NodeConfig(
        data_dir=config.data_dir,
        shards=config.shards,
        node_id=config.node_id,
        advertise_address=config.advertise_addr or config.grpc_addr,
        shard=ShardConfig(limits=config.limits, lease_ms=config.lease_ms),
        max_reply_bytes=max_reply_bytes(config.max_message_bytes),
    )


@asynccontextmanager
async def open_coordinator(config: ServerConfig, runtime: Runtime
                           ) -> AsyncIterator[Coordinator | None]:
    """The cluster's coordinator for coordination etcd (None for none)."""
    if config.coordination != "etcd":
        yield None
        return
    from silo.cluster.coordinator import EtcdCoordinator
    from silo.cluster.etcd import EtcdClient
    from silo.cluster.layout import ClusterKeys
    from silo.transport.grpc import GrpcConnector

    async with GrpcConnector.open() as connector:
        channel = await connector.connect(config.etcd)
        client = EtcdClient(channel, rng=runtime.random.stream("etcd"), address=config.etcd)
        yield EtcdCoordinator(client, ClusterKeys(config.etcd_prefix), config.node_id)


async def serve(
    config: ServerConfig,
    *,
    task_status: trio.TaskStatus[tuple[int, int]] = trio.TASK_STATUS_IGNORED,
    handle_signals: bool = True,
) -> None:
    """Run a node until cancelled or signalled. ``task_status.started((grpc_port, http_port))``
    once both endpoints listen (ports may be 0 in the config to pick free ones)."""
    from silo.transport.aio import open_asyncio_loop
    from silo.transport.grpc import GrpcServer, parse_address

    grpc_host, grpc_port = parse_address(config.grpc_addr, allow_zero=True)
    http_host, http_port = parse_address(config.http_addr, allow_zero=True)
    runtime = real_runtime(config.node_id)
    metrics = Metrics()
    cluster = ClusterSettings(
        membership_ttl_s=config.membership_ttl_s,
        reconcile_interval_s=config.reconcile_interval_s,
        sticky=config.placement == "sticky",
    )
    async with (
        open_asyncio_loop(),
        open_coordinator(config, runtime) as coordinator,
        open_node(runtime, node_config(config), coordinator, cluster) as node,
    ):
        metrics.attach(node)
        server = GrpcServer(
            instrument(SiloService(node).handlers(), metrics),
            token=config.token,
            max_message_bytes=config.max_message_bytes,
            shutdown_grace=config.shutdown_grace_s,
        )
        async with trio.open_nursery() as nursery:
            bound_grpc = await nursery.start(server.serve, grpc_host, grpc_port)
            if not config.advertise_addr:
                node.advertise_address = f"{grpc_host}:{bound_grpc}"
            if node.clustered:
                await node.join_cluster(node.advertise_address)
                log.info("silo node %s joined the cluster at etcd %s (prefix %s): %d shards",
                         config.node_id, config.etcd, config.etcd_prefix, len(node.shards))
            bound_http = await nursery.start(serve_http, node, metrics, http_host, http_port)
            log.info(
                "silo node %s serving gRPC on %s:%d, HTTP on %s:%d, data in %s",
                config.node_id, grpc_host, bound_grpc, http_host, bound_http, config.data_dir,
            )
            task_status.started((bound_grpc, bound_http))
            try:
                if handle_signals:
                    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for signum in signals:
                            log.info("received %s; shutting down", signal.Signals(signum).name)
                            break
                else:
                    await trio.sleep_forever()
            finally:
                # Waiting LeaseTasks long polls answer now instead of holding up the drain.
                node.stop_long_polls()
            await server.shutdown(config.shutdown_grace_s)
            nursery.cancel_scope.cancel()
        # Leaving open_node flushes and closes every shard.
    log.info("silo node %s stopped", config.node_id)
