"""Example handlers for ``silo worker``.

    silo worker examples.handlers:hello --task-group demo
    siloctl job enqueue --task-group demo --payload '{"name": "ada"}'

A handler receives a :class:`~silo.client.worker.TaskContext` (``ctx.payload`` is the decoded
JSON/msgpack payload) and returns the job's result. ``raise Fail(code, data)`` fails the attempt
with that code; any other exception fails it with ``HANDLER_ERROR``.
"""

from __future__ import annotations

from typing import Any

import trio

from silo.client.types import Cancel, Fail
from silo.client.worker import TaskContext


async def hello(ctx: TaskContext) -> dict[str, str]:
    """Greet ``payload["name"]`` (default "world")."""
    payload = ctx.payload if isinstance(ctx.payload, dict) else {}
    return {"greeting": f"hello {payload.get('name', 'world')}"}


async def slow(ctx: TaskContext) -> dict[str, Any]:
    """Sleep ``payload["seconds"]`` (default 10) ; stop early, ending the job as
    CANCELLED, when someone runs ``siloctl job cancel``."""
    payload = ctx.payload if isinstance(ctx.payload, dict) else {}
    seconds = float(payload.get("seconds", 10))
    with trio.move_on_after(seconds):
        await ctx.cancelled.wait()
        raise Cancel()
    return {"slept": seconds}


async def fail(ctx: TaskContext) -> None:
    """Always fail with code ``EXAMPLE_FAILURE`` (try it with ``--retries 2``)."""
    raise Fail("EXAMPLE_FAILURE", {"attempt": ctx.attempt, "payload": ctx.payload})
