"""Prometheus metrics of one node.

Every :class:`Metrics` owns its own :class:`~prometheus_client.CollectorRegistry` (never the
process-global one), so several nodes in one process (tests, benchmarks) do not clash.

Two kinds of metrics:

- **Shard statistics**, read from every open shard's :meth:`JobShard.statistics` at scrape time by a
  custom collector (see :meth:`Metrics.attach`); nothing is counted twice and a scrape never
  touches the disk. Counters restart at zero when the node restarts (Prometheus handles resets).
- **RPC latency**, ``silo_rpc_duration_seconds{method, code}``, recorded by the handler wrappers
  :func:`instrument` installs. Durations come from ``trio.current_time()`` (the clock seam).

Metric names and labels::

    silo_jobs_enqueued_total{shard}                 counter
    silo_tasks_leased_total{shard}                  counter
    silo_jobs_completed_total{shard, outcome}       counter  outcome: succeeded|failed|cancelled
    silo_jobs_retried_total{shard}                  counter
    silo_leases_reaped_total{shard}                 counter
    silo_poison_items_total{shard}                  counter  items a loop, report or open could
                                                             not process (job FAILED
                                                             INTERNAL_ERROR or row quarantined)
    silo_leases_undelivered_total{shard}            counter  expired unacknowledged: re-queued
    silo_synced_writes_total{shard}                 counter
    silo_write_groups_total{shard}                  counter
    silo_active_leases{shard}                       gauge
    silo_parked_requests{shard}                     gauge    tasks waiting for a concurrency slot
    silo_concurrency_slots_held{shard}              gauge
    silo_due_tasks{shard, task_group}               gauge
    silo_jobs{shard, status}                        gauge    status: JobStatus names
    silo_rpc_duration_seconds{method, code}         histogram  code: gRPC status name (OK, ...)
    silo_split_phase_transitions_total{phase}       counter  split phases recorded by this node
    silo_splits{phase}                              gauge    splits known, by current phase
    silo_split_cleanup_keys_deleted{shard}          gauge    rows a split child's cleanup deleted
    silo_split_cleanup_keys_examined{shard}         gauge    rows its sweep has examined
    silo_split_cleanup_done{shard}                  gauge    1 once the child's cleanup is done
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from silo.errors import Code, SiloError
from silo.rpc import SILO_SERVICE, CallContext, Handler, RpcError

__all__ = ["RPC_BUCKETS", "Metrics", "instrument", "method_label", "status_name"]

RPC_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Histogram buckets of ``silo_rpc_duration_seconds``: 0.1 ms .. 10 s (plus +Inf)."""

OUTCOMES = ("succeeded", "failed", "cancelled")


class ShardCollector(Collector):
    """Exposes the statistics of every shard a node has open, read at scrape time."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def describe(self) -> Iterable[Metric]:
        return list(_shard_families([]))

    def collect(self) -> Iterable[Metric]:
        shards = self.node.shards
        stats = [shards[i].statistics() for i in sorted(shards)]
        return [*_shard_families(stats), *_split_families(self.node),
                *_cluster_families(self.node)]


OWNERSHIP_CHANGES = ("acquired", "released", "opened", "closed", "fail_closed")


def _cluster_families(node: Any) -> Iterator[Metric]:
    """The reconcile loop's counters (coordination etcd only)."""
    reconciler = getattr(node, "reconciler", None)
    if reconciler is None:
        return
    stats = reconciler.stats
    passes = CounterMetricFamily("silo_reconcile_passes", "Reconcile passes run, by result.",
                                 labels=["result"])
    passes.add_metric(["ok"], stats.passes - stats.failed_passes)
    passes.add_metric(["failed"], stats.failed_passes)
    yield passes
    changes = CounterMetricFamily(
        "silo_ownership_changes",
        "Shard ownership changes made by this node: keys acquired and released, shards "
        "opened and closed, and fail-closed events (membership lost).", labels=["change"])
    for change in OWNERSHIP_CHANGES:
        changes.add_metric([change], getattr(stats, change))
    yield changes
    member = GaugeMetricFamily("silo_cluster_member",
                               "1 while this node's membership lease is known alive.")
    member.add_metric([], 1 if reconciler.alive else 0)
    yield member


SPLIT_PHASES = ("requested", "paused", "cloned", "committed", "children_open", "cleanup_done",
                "aborted")


def _split_families(node: Any) -> Iterator[Metric]:
    splitter = getattr(node, "splitter", None)
    if splitter is None:
        return
    transitions = CounterMetricFamily(
        "silo_split_phase_transitions", "Split phases recorded by this node.",
        labels=["phase"])
    current = GaugeMetricFamily("silo_splits", "Splits known, by current phase.",
                                labels=["phase"])
    by_phase = {p: 0 for p in SPLIT_PHASES}
    for record in splitter.records.values():
        by_phase[record.phase.label] += 1
    for phase in SPLIT_PHASES:
        transitions.add_metric([phase], splitter.phase_counts.get(phase, 0))
        current.add_metric([phase], by_phase[phase])
    yield transitions
    yield current
    deleted = GaugeMetricFamily("silo_split_cleanup_keys_deleted",
                                "Rows a split child's cleanup has deleted.", labels=["shard"])
    examined = GaugeMetricFamily("silo_split_cleanup_keys_examined",
                                 "Rows a split child's cleanup sweep has examined.",
                                 labels=["shard"])
    done = GaugeMetricFamily("silo_split_cleanup_done",
                             "1 once a split child's cleanup is done.", labels=["shard"])
    for shard_id in sorted(node.shards):
        marker = node.shards[shard_id].split_marker()
        if marker is None:
            continue
        deleted.add_metric([str(shard_id)], marker.deleted)
        examined.add_metric([str(shard_id)], marker.examined)
        done.add_metric([str(shard_id)], 1 if marker.done else 0)
    yield deleted
    yield examined
    yield done


def _shard_families(stats: list[Any]) -> Iterator[Metric]:
    def counter(name: str, doc: str, attr: str) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["shard"])
        for s in stats:
            family.add_metric([str(s.shard_id)], getattr(s, attr))
        return family

    yield counter("silo_jobs_enqueued_total", "Jobs enqueued.", "enqueued")
    yield counter("silo_tasks_leased_total", "Tasks handed to workers.", "leased")

    completed = CounterMetricFamily(
        "silo_jobs_completed_total",
        "Attempts finished, by outcome (succeeded, failed, cancelled).",
        labels=["shard", "outcome"],
    )
    for s in stats:
        outcomes = [*OUTCOMES, *sorted(k for k in s.completed if k not in OUTCOMES)]
        for outcome in outcomes:
            completed.add_metric([str(s.shard_id), outcome], s.completed.get(outcome, 0))
    yield completed

    yield counter("silo_jobs_retried_total", "Failed attempts scheduled for retry.", "retried")
    yield counter("silo_leases_reaped_total", "Acknowledged leases that expired unreported.",
                  "reaped")
    yield counter("silo_leases_undelivered_total",
                  "Leases that expired before the worker acknowledged them (re-queued).",
                  "undelivered")
    yield counter(
        "silo_poison_items_total",
        "Items the shard could not process: their job failed INTERNAL_ERROR or the row was "
        "quarantined.",
        "poison_items",
    )
    yield counter("silo_synced_writes_total", "Synced (fsynced) store writes.", "synced_writes")
    yield counter("silo_write_groups_total", "Write groups committed.", "groups_committed")

    leases = GaugeMetricFamily("silo_active_leases", "Leases held now.", labels=["shard"])
    for s in stats:
        leases.add_metric([str(s.shard_id)], s.leases_held)
    yield leases

    for name, doc, attr in (
        ("silo_parked_requests", "Tasks waiting for a concurrency slot.", "parked_requests"),
        ("silo_concurrency_slots_held", "Concurrency slots held now.", "slots_held"),
    ):
        gauge = GaugeMetricFamily(name, doc, labels=["shard"])
        for s in stats:
            gauge.add_metric([str(s.shard_id)], getattr(s, attr))
        yield gauge

    due = GaugeMetricFamily(
        "silo_due_tasks",
        "Tasks ready to lease now, per task group.",
        labels=["shard", "task_group"],
    )
    for s in stats:
        for group, n in sorted(s.due_tasks_per_task_group.items()):
            due.add_metric([str(s.shard_id), group], n)
    yield due

    jobs = GaugeMetricFamily("silo_jobs", "Jobs stored, by status.", labels=["shard", "status"])
    for s in stats:
        for status, n in sorted(s.jobs_by_status.items()):
            jobs.add_metric([str(s.shard_id), status.lower()], n)
    yield jobs


class Metrics:
    """The metrics of one node, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rpc_duration = Histogram(
            "silo_rpc_duration_seconds",
            "Time spent handling an RPC, by method and gRPC status code name.",
            labelnames=("method", "code"),
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self._collector: ShardCollector | None = None

    def attach(self, node: Any) -> None:
        """Expose ``node``'s shard statistics (read at every scrape). Attaching another node
        replaces the previous one."""
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = ShardCollector(node)
        self.registry.register(self._collector)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc_duration.labels(method, code).observe(max(0.0, seconds))

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of every metric."""
        return generate_latest(self.registry)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """Body and content type for a scrape with the given ``Accept`` header (OpenMetrics or
        a newer text format when the scraper asks for one, else the classic text format)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def method_label(path: str) -> str:
    """``"/silo.v1.Silo/Enqueue"`` -> ``"Enqueue"``; other services keep ``"Service/Method"``."""
    prefix = f"/{SILO_SERVICE}/"
    if path.startswith(prefix):
        return path[len(prefix) :]
    return path.lstrip("/")


def status_name(exc: BaseException | None) -> str:
    """The gRPC status name a transport reports for a handler that raised ``exc``."""
    if exc is None:
        return Code.OK.name
    # A nursery inside a handler wraps the failure in a group; the transport unwraps it too.
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, RpcError | SiloError):
        return exc.code.name
    if isinstance(exc, trio.Cancelled):
        return Code.CANCELLED.name
    return Code.INTERNAL.name


def _wrap(handler: Handler, method: str, metrics: Metrics) -> Handler:
    @functools.wraps(handler)
    async def timed(request: bytes, ctx: CallContext) -> bytes:
        start = trio.current_time()
        try:
            response = await handler(request, ctx)
        except BaseException as exc:
            metrics.observe_rpc(method, status_name(exc), trio.current_time() - start)
            raise
        metrics.observe_rpc(method, Code.OK.name, trio.current_time() - start)
        return response

    return timed


def instrument(handlers: dict[str, Handler], metrics: Metrics) -> dict[str, Handler]:
    """``handlers`` with each one timed into ``silo_rpc_duration_seconds``; exceptions pass
    through unchanged."""
    return {path: _wrap(h, method_label(path), metrics) for path, h in handlers.items()}
