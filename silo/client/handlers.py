"""What a handler receives, how its kind is told, and how each kind is called.

Kinds: "trio" (``async def``, the default for coroutine functions), "asyncio" (``async def``
marked with :func:`asyncio_handler`, run through trio-asyncio) and "sync" (a plain function, run
in a thread). A cancelled trio handler is cancelled; a cancelled thread or asyncio handler is
abandoned at once and its body keeps its worker slot until it really returns (see
:mod:`silo.client.slots`).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from silo.client.slots import Slot


@dataclass
class TaskContext:
    """What a handler receives for one task."""

    payload: Any
    job_id: str
    tenant: str
    attempt: int
    task_id: str
    task_group: str
    priority: int
    metadata: dict[str, str]
    cancelled: trio.Event = field(default_factory=trio.Event)
    """Set when a heartbeat reports that the job was cancelled."""
    timeout_ms: int | None = None
    """How long this attempt may run (the job's ``timeout_ms`` or the worker's default); the
    attempt is failed with ``TIMEOUT`` after that. ``None``: no timeout."""

    @property
    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()


@dataclass
class RefreshContext:
    """What a refresh handler receives: compute and return the queue's new max."""

    queue: str
    tenant: str
    current_max: int
    metadata: dict[str, str]


HandlerFn = Callable[[TaskContext], Any]
RefreshFn = Callable[[RefreshContext], Any]


def handler_kind(handler: Callable[..., Any]) -> str:
    """"trio", "asyncio" or "sync". Async functions are trio functions unless marked with
    :func:`asyncio_handler`."""
    if getattr(handler, "__silo_asyncio__", False):
        return "asyncio"
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        type(handler).__call__
    ):
        return "trio"
    return "sync"


def asyncio_handler(fn: Callable[[TaskContext], Awaitable[Any]]) -> Callable[..., Any]:
    """Mark an ``async def`` handler as asyncio code (run through trio-asyncio)."""
    fn.__silo_asyncio__ = True  # type: ignore[attr-defined]
    return fn


async def call_handler(fn: Callable[..., Any], kind: str, ctx: Any,
                       slot: Slot | None = None) -> Any:
    """Run a handler of ``kind`` ("trio", "asyncio" or "sync") on ``ctx``; return its value.

    With ``slot``, a thread or asyncio body runs on that worker slot: the slot stays held until
    the body really ends, also after the caller was cancelled and abandoned it."""
    if kind == "trio":
        return await fn(ctx)
    if kind == "asyncio":
        from silo.transport.aio import run_asyncio_handler

        if slot is None:
            return await run_asyncio_handler(fn, ctx)
        return await run_asyncio_handler(fn, ctx, on_start=slot.body_started,
                                         on_end=slot.body_ended)
    from silo.runtime.threads import run_in_thread

    return await run_in_thread(fn, ctx, limiter=None if slot is None else slot.thread_limiter())
