"""The Python clients and the Worker.

- :class:`SiloClient`: for trio code (and the worker); :class:`AsyncioSiloClient`: for asyncio
  code (FastAPI, uvloop...); :class:`BlockingSiloClient`: for blocking code (Django, Flask,
  scripts). The same methods, routing, retries and idempotent ids (:mod:`silo.client.core`).
- :class:`JobHandle` / :class:`BlockingJobHandle`: one job.
- :class:`Worker`: runs handlers for leased tasks (on trio).

``AsyncioSiloClient`` and ``BlockingSiloClient`` are imported on first use, so trio programs
and the simulator never import asyncio or grpclib through this package.
"""

from typing import Any

from silo.client.client import RetrySettings, SiloClient
from silo.client.handle import JobHandle
from silo.client.types import Cancel, Fail, Job, JobCancelled, JobFailed, pack, unpack
from silo.client.worker import RefreshContext, TaskContext, Worker, asyncio_handler
from silo.model import (
    ConcurrencyLimit,
    FloatingConcurrencyLimit,
    JobStatus,
    RateLimit,
    RetryPolicy,
)

_LAZY = {
    "AsyncioSiloClient": "silo.client.asyncio_client",
    "BlockingSiloClient": "silo.client.blocking",
    "BlockingJobHandle": "silo.client.blocking",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'silo.client' has no attribute {name!r}")


__all__ = [
    "AsyncioSiloClient",
    "BlockingJobHandle",
    "BlockingSiloClient",
    "Cancel",
    "ConcurrencyLimit",
    "Fail",
    "FloatingConcurrencyLimit",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "JobStatus",
    "RateLimit",
    "RefreshContext",
    "RetryPolicy",
    "RetrySettings",
    "SiloClient",
    "TaskContext",
    "Worker",
    "asyncio_handler",
    "pack",
    "unpack",
]
