"""The three clients offer the same methods with the same parameters, and so do the handles."""

from __future__ import annotations

import inspect

from silo.client import AsyncioSiloClient, BlockingJobHandle, BlockingSiloClient, JobHandle
from silo.client.client import SiloClient


def public(cls: type) -> dict[str, list[str]]:
    out = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or name in ("backend", "open_connector", "aclose", "close"):
            continue
        if callable(member):
            out[name] = list(inspect.signature(member).parameters)
    return out


def test_clients_share_their_methods_and_parameters() -> None:
    trio_api = public(SiloClient)
    assert {"enqueue", "enqueue_jobs", "job", "queue", "cluster_info", "connect"} <= set(trio_api)
    assert public(AsyncioSiloClient) == trio_api
    assert public(BlockingSiloClient) == trio_api


def test_handles_share_their_methods_and_parameters() -> None:
    assert public(BlockingJobHandle) == public(JobHandle)
