"""examples/fastapi_app.py against a real silo node: enqueue over HTTP, read the job back."""

from __future__ import annotations

import asyncio

import pytest
import trio

from silo.client import unpack
from tests.integration.support import Raw

pytest.importorskip("fastapi")
import httpx  # noqa: E402

from examples.fastapi_app import create_app  # noqa: E402


async def requests(address: str) -> tuple[int, dict[str, str], dict[str, str], int]:
    app = create_app(address)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            made = await http.post("/jobs", json={"task_group": "web", "payload": {"n": 1}})
            job = made.json()
            status = (await http.get(f"/jobs/{job['id']}")).json()
            missing = (await http.get("/jobs/nope")).status_code
    return made.status_code, job, status, missing


def drive(address: str) -> tuple[int, dict[str, str], dict[str, str], int]:
    # A real asyncio loop (this process's default loop policy is trio-asyncio's).
    loop = asyncio.SelectorEventLoop()
    try:
        return loop.run_until_complete(requests(address))
    finally:
        loop.close()


async def test_fastapi_app_enqueues_with_the_asyncio_client(address: str) -> None:
    from silo.client import SiloClient

    code, job, status, missing = await trio.to_thread.run_sync(drive, address)
    assert code == 200 and status == {"id": job["id"], "status": "SCHEDULED"}
    assert missing == 404
    async with SiloClient.connect(address) as client:
        stored = await Raw(client, address).get(job["id"])
    assert stored.task_group == "web" and unpack(stored.payload) == {"n": 1}
