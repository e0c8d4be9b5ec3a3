"""Prometheus metrics of one node (placeholder: filled in with prometheus_client)."""

from __future__ import annotations

from typing import Any

from silo.rpc import Handler


class Metrics:
    def attach(self, node: Any) -> None:
        self.node = node


def instrument(handlers: dict[str, Handler], metrics: Metrics) -> dict[str, Handler]:
    return handlers
