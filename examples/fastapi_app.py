"""A FastAPI app that enqueues silo jobs with the asyncio client.

    SILO_ADDRESS=127.0.0.1:7450 uvicorn examples.fastapi_app:app

``POST /jobs`` with ``{"task_group": "demo", "payload": {...}}`` enqueues a job and answers its
id; ``GET /jobs/{id}`` answers its status.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

from silo.client import AsyncioSiloClient
from silo.errors import NotFound


class EnqueueBody(BaseModel):
    task_group: str
    payload: Any = None


def create_app(address: str) -> FastAPI:
    """The app, connected to the silo node at ``address`` for its lifetime."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncioSiloClient.connect(address) as client:
            app.state.silo = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/jobs")
    async def enqueue(body: EnqueueBody, request: Request) -> dict[str, str]:
        job = await request.app.state.silo.enqueue(body.task_group, body.payload)
        return {"id": job.id}

    @app.get("/jobs/{job_id}")
    async def status(job_id: str, request: Request) -> dict[str, str]:
        try:
            job = await request.app.state.silo.job(job_id).get()
        except NotFound:
            raise HTTPException(status_code=404, detail="job not found") from None
        return {"id": job.id, "status": job.status.name}

    return app


app = create_app(os.environ.get("SILO_ADDRESS", "127.0.0.1:7450"))
