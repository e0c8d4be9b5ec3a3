"""Views that enqueue and read silo jobs with one shared, thread-safe BlockingSiloClient.

The client is made on first use (so each pre-forked worker process makes its own) from
``settings.SILO_ADDRESS``.
"""

from __future__ import annotations

import json
import threading

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from silo.client import BlockingSiloClient
from silo.errors import NotFound

_client: BlockingSiloClient | None = None
_client_lock = threading.Lock()


def silo() -> BlockingSiloClient:
    global _client
    with _client_lock:
        if _client is None:
            _client = BlockingSiloClient.connect(settings.SILO_ADDRESS)
        return _client


@csrf_exempt
@require_POST
def enqueue(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body or b"{}")
    job = silo().enqueue(body["task_group"], body.get("payload"))
    return JsonResponse({"id": job.id})


@require_GET
def status(request: HttpRequest, job_id: str) -> JsonResponse:
    try:
        job = silo().job(job_id).get()
    except NotFound:
        return JsonResponse({"error": "job not found"}, status=404)
    return JsonResponse({"id": job.id, "status": job.status.name})
