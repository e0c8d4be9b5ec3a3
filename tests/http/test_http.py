"""silo.http: Prometheus metrics, the instrument() wrapper, /healthz and /metrics over real HTTP."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from silo.client.client import SiloClient
from silo.client.worker import TaskContext, Worker
from silo.config import ServerConfig
from silo.errors import Code, InvalidArgument, NotFound
from silo.http.app import serve_http
from silo.http.metrics import Metrics, instrument, method_label, status_name
from silo.rpc import CallContext, RpcError, method_path
from silo.server import serve
from silo.shard import ShardStatistics

# -- helpers ----------------------------------------------------------------------------------


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http_get(port: int, path: str, accept: str | None = None) -> HttpResponse:
    """A minimal HTTP/1.1 GET over a fresh connection (Connection: close)."""
    extra = f"Accept: {accept}\r\n" if accept else ""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n"
    ).encode()
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            chunks = []
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert "chunked" not in headers.get("transfer-encoding", "")
    return HttpResponse(int(status_line.split()[1]), headers, body)


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: bytes, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def total(text: bytes, name: str, **labels: str) -> float:
    """Sum of ``name`` over every sample whose labels include ``labels`` (e.g. all shards)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples(text).items() if n == name and want <= ls)


def stats(shard_id: int, **overrides: Any) -> ShardStatistics:
    base: dict[str, Any] = dict(
        shard_id=shard_id,
        synced_writes=7,
        groups_committed=5,
        batches_committed=6,
        jobs_total=3,
        jobs_by_status={"SCHEDULED": 1, "RUNNING": 1, "SUCCEEDED": 1, "FAILED": 0, "CANCELLED": 0},
        leases_held=1,
        due_tasks_per_task_group={"emails": 2, "video": 1},
        scheduled_future_tasks=0,
        enqueued=3,
        leased=2,
        completed={"succeeded": 1, "failed": 0, "cancelled": 0},
        retried=4,
        reaped=1,
        poison_items=2,
        undelivered=2,
    )
    base.update(overrides)
    return ShardStatistics(**base)


class FakeShard:
    def __init__(self, shard_id: int) -> None:
        self.shard_id = shard_id
        self.closing = False

    def statistics(self) -> ShardStatistics:
        return stats(self.shard_id)


@dataclass
class FakeConfig:
    node_id: str = "node-7"


@dataclass
class FakeNode:
    shards: dict[int, Any] = field(default_factory=dict)
    config: FakeConfig = field(default_factory=FakeConfig)


# -- instrument() -------------------------------------------------------------------------------


def rpc_count(metrics: Metrics, method: str, code: str) -> float | None:
    return metrics.registry.get_sample_value(
        "silo_rpc_duration_seconds_count", {"method": method, "code": code}
    )


def rpc_sum(metrics: Metrics, method: str, code: str) -> float | None:
    return metrics.registry.get_sample_value(
        "silo_rpc_duration_seconds_sum", {"method": method, "code": code}
    )


async def test_instrument_records_method_status_and_trio_time(autojump_clock: Any) -> None:
    class Boom(Exception):
        pass

    async def ok(request: bytes, ctx: CallContext) -> bytes:
        await trio.sleep(0.25)
        return request + b"!"

    async def not_found(request: bytes, ctx: CallContext) -> bytes:
        await trio.sleep(0.5)
        raise NotFound("no such job")

    async def rpc_error(request: bytes, ctx: CallContext) -> bytes:
        raise RpcError(Code.ABORTED, "conflict")

    async def crash(request: bytes, ctx: CallContext) -> bytes:
        raise Boom("bug")

    async def grouped(request: bytes, ctx: CallContext) -> bytes:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 0)
            raise InvalidArgument("bad")
        return b""  # pragma: no cover

    metrics = Metrics()
    paths = {name: method_path(name) for name in ("Ok", "NotFound", "Abort", "Crash", "Group")}
    handlers = {
        paths["Ok"]: ok,
        paths["NotFound"]: not_found,
        paths["Abort"]: rpc_error,
        paths["Crash"]: crash,
        paths["Group"]: grouped,
    }
    wrapped = instrument(handlers, metrics)
    assert list(wrapped) == list(handlers)
    ctx = CallContext(paths["Ok"])

    assert await wrapped[paths["Ok"]](b"hi", ctx) == b"hi!"
    with pytest.raises(NotFound) as nf:
        await wrapped[paths["NotFound"]](b"", ctx)
    assert nf.value.message == "no such job"
    with pytest.raises(RpcError) as ab:
        await wrapped[paths["Abort"]](b"", ctx)
    assert ab.value.code is Code.ABORTED
    with pytest.raises(Boom):
        await wrapped[paths["Crash"]](b"", ctx)
    with pytest.raises(BaseExceptionGroup):
        await wrapped[paths["Group"]](b"", ctx)

    assert rpc_count(metrics, "Ok", "OK") == 1
    assert rpc_sum(metrics, "Ok", "OK") == pytest.approx(0.25)  # trio's (mock) clock
    assert rpc_count(metrics, "NotFound", "NOT_FOUND") == 1
    assert rpc_sum(metrics, "NotFound", "NOT_FOUND") == pytest.approx(0.5)
    assert rpc_count(metrics, "Abort", "ABORTED") == 1
    assert rpc_count(metrics, "Crash", "INTERNAL") == 1
    assert rpc_count(metrics, "Group", "INVALID_ARGUMENT") == 1
    assert rpc_count(metrics, "Ok", "INTERNAL") is None

    # Bucket boundaries: 0.25 s lands in le=0.25, not in le=0.1.
    def bucket(le: str) -> float | None:
        return metrics.registry.get_sample_value(
            "silo_rpc_duration_seconds_bucket", {"method": "Ok", "code": "OK", "le": le}
        )

    assert (bucket("0.0001"), bucket("0.1"), bucket("0.25"), bucket("10.0")) == (0, 0, 1, 1)


async def test_instrument_records_cancelled_calls() -> None:
    async def slow(request: bytes, ctx: CallContext) -> bytes:
        await trio.sleep_forever()
        return b""  # pragma: no cover

    metrics = Metrics()
    wrapped = instrument({method_path("Slow"): slow}, metrics)
    with trio.move_on_after(0.01):
        await wrapped[method_path("Slow")](b"", CallContext(method_path("Slow")))
    assert rpc_count(metrics, "Slow", "CANCELLED") == 1


def test_labels() -> None:
    assert method_label("/silo.v1.Silo/Enqueue") == "Enqueue"
    assert method_label("/grpc.health.v1.Health/Check") == "grpc.health.v1.Health/Check"
    assert status_name(None) == "OK"
    assert status_name(NotFound("x")) == "NOT_FOUND"
    assert status_name(RpcError(Code.UNAVAILABLE)) == "UNAVAILABLE"
    assert status_name(ValueError()) == "INTERNAL"


# -- the shard collector ------------------------------------------------------------------------


def test_metrics_from_shard_statistics_and_separate_registries() -> None:
    node = FakeNode({1: FakeShard(1), 0: FakeShard(0)})
    metrics = Metrics()
    metrics.attach(node)
    other = Metrics()  # a second node in the same process: no duplicate-registration error
    other.attach(FakeNode())
    text = metrics.render()

    for shard in ("0", "1"):
        assert value(text, "silo_jobs_enqueued_total", shard=shard) == 3
        assert value(text, "silo_tasks_leased_total", shard=shard) == 2
        assert value(text, "silo_jobs_retried_total", shard=shard) == 4
        assert value(text, "silo_leases_reaped_total", shard=shard) == 1
        assert value(text, "silo_poison_items_total", shard=shard) == 2
        assert value(text, "silo_leases_undelivered_total", shard=shard) == 2
        assert value(text, "silo_synced_writes_total", shard=shard) == 7
        assert value(text, "silo_write_groups_total", shard=shard) == 5
        assert value(text, "silo_active_leases", shard=shard) == 1
        assert value(text, "silo_due_tasks", shard=shard, task_group="emails") == 2
        assert value(text, "silo_due_tasks", shard=shard, task_group="video") == 1
        assert value(text, "silo_jobs", shard=shard, status="running") == 1
        assert value(text, "silo_jobs", shard=shard, status="failed") == 0
        for outcome, n in (("succeeded", 1), ("failed", 0), ("cancelled", 0)):
            assert value(text, "silo_jobs_completed_total", shard=shard, outcome=outcome) == n
    assert b"# TYPE silo_jobs_enqueued_total counter" in text
    assert b"# TYPE silo_jobs gauge" in text
    assert b"# TYPE silo_rpc_duration_seconds histogram" in text
    # Shards appear in id order.
    assert text.index(b'silo_jobs_enqueued_total{shard="0"}') < text.index(
        b'silo_jobs_enqueued_total{shard="1"}'
    )
    # Read at scrape time: a shard opened later shows up in the next scrape.
    node.shards[2] = FakeShard(2)
    assert value(metrics.render(), "silo_jobs_enqueued_total", shard="2") == 3
    assert value(other.render(), "silo_jobs_enqueued_total", shard="0") is None

    # Re-attaching replaces the collector instead of failing on duplicate names.
    metrics.attach(FakeNode({5: FakeShard(5)}))
    text = metrics.render()
    assert value(text, "silo_jobs_enqueued_total", shard="5") == 3
    assert value(text, "silo_jobs_enqueued_total", shard="0") is None


def test_exposition_negotiates_openmetrics() -> None:
    metrics = Metrics()
    metrics.attach(FakeNode({0: FakeShard(0)}))
    body, content_type = metrics.exposition(None)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert body == metrics.render()
    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


# -- serve_http with a fake node ------------------------------------------------------------------


async def test_serve_http_health_and_metrics_on_port_zero() -> None:
    node = FakeNode({0: FakeShard(0), 1: FakeShard(1)})
    metrics = Metrics()
    metrics.attach(node)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, node, metrics, "127.0.0.1", 0)
        assert isinstance(port, int) and port > 0

        health = await http_get(port, "/healthz")
        assert health.status == 200
        assert health.headers["content-type"] == "application/json"
        assert health.json() == {"status": "ok", "node_id": "node-7", "shards": 2,
                                 "shard_ids": [0, 1]}

        node.shards[1].closing = True
        health = await http_get(port, "/healthz")
        assert health.status == 503
        assert health.json()["status"] == "unavailable"
        assert health.json()["closing_shards"] == [1]

        scrape = await http_get(port, "/metrics")
        assert scrape.status == 200
        assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert value(scrape.body, "silo_jobs_enqueued_total", shard="1") == 3

        om = await http_get(port, "/metrics", accept="application/openmetrics-text; version=1.0.0")
        assert om.headers["content-type"].startswith("application/openmetrics-text")

        assert (await http_get(port, "/nope")).status == 404
        nursery.cancel_scope.cancel()

    # Cancelled cleanly: the port no longer accepts connections.
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


# -- a real node --------------------------------------------------------------------------------


async def test_real_node_health_and_metrics(tmp_path: Any) -> None:
    config = ServerConfig(
        data_dir=str(tmp_path),
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        shards=2,
        lease_ms=2000,
    )
    async with trio.open_nursery() as nursery:
        grpc_port, http_port = await nursery.start(
            lambda task_status: serve(config, task_status=task_status, handle_signals=False)
        )
        assert grpc_port > 0 and http_port > 0 and grpc_port != http_port

        health = await http_get(http_port, "/healthz")
        assert health.status == 200
        assert health.json() == {"status": "ok", "node_id": config.node_id, "shards": 2,
                                 "shard_ids": [0, 1]}

        before = (await http_get(http_port, "/metrics")).body
        assert total(before, "silo_jobs_enqueued_total") == 0
        assert value(before, "silo_jobs_enqueued_total", shard="0") == 0
        assert value(before, "silo_jobs_enqueued_total", shard="1") == 0

        async with SiloClient.connect(f"127.0.0.1:{grpc_port}") as client:
            handle = await client.enqueue("http-test", {"x": 1})

            async def handler(ctx: TaskContext) -> Any:
                return {"got": ctx.payload}

            worker = Worker(client, "http-test", handler, lease_wait_ms=200)
            async with trio.open_nursery() as workers:
                workers.start_soon(worker.run)
                with trio.fail_after(10):
                    assert await handle.result() == {"got": {"x": 1}}
                worker.stop(5)

            with pytest.raises(NotFound):
                await client.job("nope").get()

        scrape = await http_get(http_port, "/metrics")
        text = scrape.body
        assert scrape.headers["content-type"].startswith("text/plain")
        assert total(text, "silo_jobs_enqueued_total") == 1
        assert total(text, "silo_tasks_leased_total") == 1
        assert total(text, "silo_jobs_completed_total", outcome="succeeded") == 1
        assert total(text, "silo_jobs_completed_total", outcome="failed") == 0
        assert total(text, "silo_jobs", status="succeeded") == 1
        assert total(text, "silo_active_leases") == 0
        assert total(text, "silo_synced_writes_total") >= 1
        assert total(text, "silo_write_groups_total") >= 1

        def rpc_calls(method: str, code: str) -> float:
            return value(text, "silo_rpc_duration_seconds_count", method=method, code=code) or 0

        assert rpc_calls("Enqueue", "OK") == 1
        assert rpc_calls("LeaseTasks", "OK") >= 1
        assert rpc_calls("ReportOutcomes", "OK") + rpc_calls("ReportOutcome", "OK") >= 1
        assert rpc_calls("GetJob", "NOT_FOUND") == 1
        assert rpc_calls("GetJob", "OK") == 0
        nursery.cancel_scope.cancel()
