"""The no-op handlers the peers benchmark runs under each library's own worker CLI.

Both append one line per run to the job log (:mod:`silo.bench.joblog`) and do nothing else.

- silo: ``silo worker silo.bench.peer_handlers:silo_noop --task-group G``
- pgqueuer: ``pgq run silo.bench.peer_handlers:pgqueuer_factory`` with ``$PGDSN`` set; the
  factory registers :data:`PGQUEUER_ENTRYPOINT` on a ``PgQueuer`` over one asyncpg
  connection, as pgqueuer's documentation shows.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from silo.bench.joblog import append_run

PGQUEUER_ENTRYPOINT = "bench"


async def silo_noop(ctx: Any) -> None:
    append_run(ctx.job_id, time.time())


@contextlib.asynccontextmanager
async def pgqueuer_factory() -> AsyncIterator[Any]:
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver

    connection = await asyncpg.connect(os.environ["PGDSN"])
    try:
        pgq = PgQueuer(AsyncpgDriver(connection))

        @pgq.entrypoint(PGQUEUER_ENTRYPOINT)
        async def noop(job: Any) -> None:
            append_run(str(job.id), time.time())

        yield pgq
    finally:
        await connection.close()
