"""The HTTP endpoints of a node, served by hypercorn's trio worker beside the gRPC server.

- ``GET /healthz``: 200 ``{"status": "ok", "node_id": ..., "shards": N, "shard_ids": [...]}``
  while every shard of the node is open (and, with coordination etcd, its membership is alive:
  ``"member": true``), 503 (``"status": "unavailable"`` and the ids of the closing shards, or
  ``"member": false``) otherwise.
- ``GET /metrics``: the Prometheus exposition of the node's :class:`~silo.http.metrics.Metrics`
  (the classic text format, or OpenMetrics when the scraper's ``Accept`` asks for it).

hypercorn creates and binds the listening socket itself (``config.bind``) and reports the bound
address through its ``task_status``, so :func:`serve_http` learns the real port (port 0 = any free
port) without this package touching sockets.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from silo.http.metrics import Metrics

__all__ = ["build_app", "serve_http"]

log = logging.getLogger("silo.http")

GRACEFUL_TIMEOUT_S = 2.0
"""How long hypercorn lets open HTTP connections finish when it shuts down gracefully."""


def _shard_is_open(shard: Any) -> bool:
    return not shard.closing


def build_app(node: Any, metrics: Metrics) -> Starlette:
    """The Starlette app serving ``node``'s health and ``metrics``."""

    async def healthz(request: Request) -> Response:
        shards = node.shards
        closing = [i for i in sorted(shards) if not _shard_is_open(shards[i])]
        member = getattr(node, "may_serve", True)
        bad = bool(closing) or not member
        body: dict[str, Any] = {
            "status": "unavailable" if bad else "ok",
            "node_id": node.config.node_id,
            "shards": len(shards),
            "shard_ids": sorted(shards),
        }
        if getattr(node, "clustered", False):
            body["member"] = member
        if closing:
            body["closing_shards"] = closing
        return JSONResponse(body, status_code=503 if bad else 200)

    async def prometheus(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type})

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ]
    )


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port_of(bind: str) -> int:
    """``"http://127.0.0.1:54321"`` / ``"http://[::1]:54321"`` -> 54321."""
    return int(bind.rsplit(":", 1)[1])


async def serve_http(
    node: Any,
    metrics: Metrics,
    host: str,
    port: int,
    *,
    access_log: bool = False,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve :func:`build_app` on ``host:port`` until cancelled.

    ``task_status.started(bound_port)`` once listening (``port`` 0 picks a free port). hypercorn's
    messages go to the ``silo.http`` logger; the access log (``silo.http.access``) is off unless
    ``access_log``.
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [_bind(host, port)]
    config.accesslog = logging.getLogger("silo.http.access") if access_log else None
    config.errorlog = log
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    app = build_app(node, metrics)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, app, config, mode="asgi"))
        task_status.started(_port_of(binds[0]))
