"""examples/django_app against a real silo node, through Django's test client."""

from __future__ import annotations

import pytest
import trio

from silo.client import SiloClient, unpack
from tests.integration.support import Raw

django = pytest.importorskip("django")


def drive(address: str) -> tuple[int, dict[str, str], dict[str, str], int]:
    from django.conf import settings

    if not settings.configured:
        settings.configure(ROOT_URLCONF="examples.django_app.urls", ALLOWED_HOSTS=["*"],
                           SECRET_KEY="test", INSTALLED_APPS=[], DATABASES={},
                           SILO_ADDRESS=address)
        django.setup()
    from django.test import Client
    from django.test.utils import override_settings

    from examples.django_app import views

    with override_settings(SILO_ADDRESS=address):
        views._client = None
        try:
            http = Client()
            made = http.post("/jobs/", {"task_group": "web", "payload": {"n": 2}},
                             content_type="application/json")
            job = made.json()
            status = http.get(f"/jobs/{job['id']}/").json()
            missing = http.get("/jobs/nope/").status_code
        finally:
            if views._client is not None:
                views._client.close()
                views._client = None
    return made.status_code, job, status, missing


async def test_django_view_enqueues_with_the_blocking_client(address: str) -> None:
    code, job, status, missing = await trio.to_thread.run_sync(drive, address)
    assert code == 200 and status == {"id": job["id"], "status": "SCHEDULED"}
    assert missing == 404
    async with SiloClient.connect(address) as client:
        stored = await Raw(client, address).get(job["id"])
    assert stored.task_group == "web" and unpack(stored.payload) == {"n": 2}
