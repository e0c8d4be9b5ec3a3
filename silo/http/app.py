"""HTTP endpoints (placeholder)."""

from __future__ import annotations

from typing import Any

import trio


async def serve_http(
    node: Any, metrics: Any, host: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    task_status.started(port)
    await trio.sleep_forever()
