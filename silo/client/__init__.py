"""The Python client: SiloClient (enqueue and manage jobs), JobHandle, and Worker."""

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

__all__ = [
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
