"""``siloctl``: manage jobs and inspect a silo cluster over gRPC.

Exit status: 0 success; 1 the server refused (NOT_FOUND, ...) or could not be reached;
2 usage error (bad flags, bad --payload JSON, ...); 3 ``job result``: the job has not finished
(within --wait); 4 ``job result``: the job ended FAILED or CANCELLED.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TextIO

import trio

from silo.cli.common import (
    DEFAULT_ADDRESS,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_JOB_UNSUCCESSFUL,
    EXIT_NOT_FINISHED,
    EXIT_OK,
    CliError,
    address_list,
    describe_silo_error,
    dumps,
    format_ms,
    jsonable,
    leaf_exception,
    timeout_seconds,
)
from silo.errors import SiloError
from silo.model import (
    DEFAULT_PRIORITY,
    DEFAULT_TENANT,
    Attempt,
    AttemptState,
    ConcurrencyLimit,
    FloatingConcurrencyLimit,
    Limit,
    RateLimit,
    RetryPolicy,
)

if TYPE_CHECKING:
    from silo.client.client import SiloClient
    from silo.client.types import Job

Command = Callable[["SiloClient", argparse.Namespace, "Output"], Awaitable[int]]


# -- argument types --------------------------------------------------------------------------


def json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def concurrency_limit(text: str) -> ConcurrencyLimit:
    key, sep, value = text.rpartition("=")
    if not sep or not key or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected KEY=MAX, got {text!r}")
    return ConcurrencyLimit(key, int(value))


def rate_limit(text: str) -> RateLimit:
    head, sep, spec = text.rpartition("=")
    name, colon, key = head.partition(":")
    limit, slash, per = spec.partition("/")
    if not sep or not name or not slash or not limit.isdigit() or not per.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME:KEY=LIMIT/MS, got {text!r}")
    return RateLimit(name, key if colon else "", int(limit), int(per))


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def positive(text: str) -> int:
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# -- parser ----------------------------------------------------------------------------------


def _connection_flags(parser: argparse.ArgumentParser, *, root: bool) -> None:
    """-a/--token/--json, accepted before the command (root) and after it (leaves)."""

    def default(value: Any) -> Any:
        return value if root else argparse.SUPPRESS

    parser.add_argument(
        "-a", "--address", type=address_list, metavar="HOST:PORT[,...]",
        default=default(os.environ.get("SILO_ADDRESS", DEFAULT_ADDRESS)),
        help=f"silo server(s) to contact (default $SILO_ADDRESS or {DEFAULT_ADDRESS})",
    )
    parser.add_argument("--token", default=default(os.environ.get("SILO_TOKEN") or None),
                        help="bearer token (default $SILO_TOKEN)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print machine-readable JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siloctl",
        description="Manage jobs and inspect a silo cluster.",
        epilog=(
            "exit status: 0 ok; 1 server error or unreachable; 2 usage error; "
            "3 job not finished (job result); 4 job FAILED or CANCELLED (job result)"
        ),
    )
    _connection_flags(parser, root=True)
    top = parser.add_subparsers(dest="area", metavar="{job,queue,cluster,shard,tenant}",
                                required=True)

    job = top.add_parser("job", help="enqueue and manage jobs",
                         description="Enqueue and manage jobs.")
    jobs = job.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def job_command(name: str, help: str, fn: Command) -> argparse.ArgumentParser:
        p = jobs.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        p.add_argument("--tenant", "-t", default=DEFAULT_TENANT,
                       help=f"tenant (default {DEFAULT_TENANT!r})")
        _connection_flags(p, root=False)
        p.set_defaults(fn=fn)
        return p

    p = job_command("enqueue", "enqueue a job and print its id", cmd_enqueue)
    p.add_argument("--task-group", "-g", required=True, metavar="G")
    p.add_argument("--id", metavar="ID", help="job id (default: a random one)")
    p.add_argument("--payload", "-p", type=json_value, default=None, metavar="JSON",
                   help="payload as JSON (stored as msgpack; default null)")
    p.add_argument("--priority", type=int, default=DEFAULT_PRIORITY, metavar="P",
                   help=f"0 (first) .. 99 (last); default {DEFAULT_PRIORITY}")
    p.add_argument("--start-in", type=non_negative, default=None, metavar="SECONDS",
                   help="do not start before this many seconds from now")
    p.add_argument("--retries", type=non_negative_int, default=0, metavar="N",
                   help="retries after a failed attempt (default 0)")
    p.add_argument("--timeout", type=timeout_seconds, default=None, metavar="SECONDS",
                   help="fail an attempt with TIMEOUT after this long (default: the worker's "
                        "--timeout)")
    p.add_argument("--metadata", "-m", type=key_value, action="extend", nargs="+",
                   default=[], metavar="K=V", help="metadata entries (repeatable)")
    p.add_argument("--concurrency", action="append", type=concurrency_limit, default=[],
                   metavar="KEY=MAX", help="concurrency limit (repeatable, acquired in order)")
    p.add_argument("--rate", action="append", type=rate_limit, default=[],
                   metavar="NAME:KEY=LIMIT/MS",
                   help="rate limit: at most LIMIT per MS milliseconds (repeatable)")

    p = job_command("get", "show a job", cmd_get)
    p.add_argument("id", metavar="ID")
    p.add_argument("--attempts", nargs="?", type=positive, const=True, default=False,
                   metavar="N",
                   help="also show the newest attempts (N of them; default 100, at most 1000)")
    p.add_argument("--attempts-before", type=positive, default=0, metavar="K",
                   help="with --attempts: only attempts numbered below K (the next page)")

    p = job_command("result", "show a job's result, optionally waiting for it", cmd_result)
    p.add_argument("id", metavar="ID")
    p.add_argument("--wait", "-w", type=non_negative, default=None, metavar="SECONDS",
                   help="wait up to SECONDS for the job to finish (default: do not wait)")

    for name, help in (("cancel", "cancel a job"),
                       ("restart", "run a failed or cancelled job again"),
                       ("expedite", "start a scheduled job now instead of at its start time"),
                       ("delete", "delete a finished job")):
        p = job_command(name, help, _action_command(name))
        p.add_argument("id", metavar="ID")

    queue = top.add_parser("queue", help="inspect concurrency queues",
                           description="Inspect concurrency queues.")
    queues = queue.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = queues.add_parser("show", help="show a queue's max, holders and waiting jobs",
                          description="Show a concurrency queue's max, holders and waiting jobs.")
    p.add_argument("key", metavar="KEY")
    p.add_argument("--tenant", "-t", default=DEFAULT_TENANT,
                   help=f"tenant (default {DEFAULT_TENANT!r})")
    _connection_flags(p, root=False)
    p.set_defaults(fn=cmd_queue_show)

    cluster = top.add_parser("cluster", help="inspect the cluster",
                             description="Inspect the cluster.")
    clusters = cluster.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = clusters.add_parser("info", help="show nodes and shards",
                            description="Show the shard map and shard owners.")
    _connection_flags(p, root=False)
    p.set_defaults(fn=cmd_cluster_info)

    shard = top.add_parser("shard", help="split shards and follow splits",
                           description="Split shards and follow splits.")
    shards = shard.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = shards.add_parser(
        "split", help="split a shard in two",
        description="Split SHARD in two at a tenant hash: the parent pauses, is cloned into "
                    "two children, the shard map is switched (the commit point), and the "
                    "children serve at once while each deletes the other's tenants in the "
                    "background. Answers once both children serve.")
    p.add_argument("shard", metavar="SHARD", type=int)
    p.add_argument("--at-hash", type=_hash_arg, default=0, metavar="H",
                   help="first hash of the right child, strictly inside the shard's range "
                        "(decimal or 0x hex; default: the median tenant hash of its data)")
    _connection_flags(p, root=False)
    p.set_defaults(fn=cmd_shard_split)
    p = shards.add_parser("split-status", help="show splits and their cleanup progress",
                          description="Show the splits the node knows of (phase, children, "
                                      "cleanup progress).")
    p.add_argument("shard", metavar="SHARD", type=int, nargs="?",
                   help="only the split of this parent shard")
    _connection_flags(p, root=False)
    p.set_defaults(fn=cmd_shard_split_status)
    p = shards.add_parser(
        "force-release", help="release the shard of a node that is gone for good",
        description="Delete SHARD's ownership key (coordination etcd) so that a live node "
                    "takes it over. Refused while the owner is a live member.")
    p.add_argument("shard", metavar="SHARD", type=int)
    p.add_argument("--owner", default="", metavar="NODE",
                   help="only if NODE holds it (default: whoever holds it)")
    _connection_flags(p, root=False)
    p.set_defaults(fn=cmd_shard_force_release)

    tenant = top.add_parser("tenant", help="find where tenants live",
                            description="Find where tenants live.")
    tenants = tenant.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = tenants.add_parser("locate", help="show a tenant's hash, shard and owner",
                           description="Show the shard a tenant routes to and its owner.")
    p.add_argument("tenant", metavar="TENANT")
    _connection_flags(p, root=False)
    p.set_defaults(fn=cmd_tenant_locate)
    return parser


def _hash_arg(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a hash: {text!r}") from None
    if not 0 < value < 1 << 64:
        raise argparse.ArgumentTypeError(f"hash {text} is outside 1..2**64-1")
    return value


# -- output ----------------------------------------------------------------------------------


class Output:
    """Where commands print: JSON or rich text on stdout."""

    def __init__(self, json_mode: bool, stream: TextIO | None = None) -> None:
        from rich.console import Console

        self.json = json_mode
        self.stream = stream or sys.stdout
        self.console = Console(file=self.stream, highlight=False, soft_wrap=False)

    def emit_json(self, value: Any) -> None:
        print(dumps(value), file=self.stream)

    def line(self, text: str) -> None:
        print(text, file=self.stream)


def _value_text(value: Any) -> str:
    return json.dumps(jsonable(value), ensure_ascii=False)


def _retry_dict(r: RetryPolicy) -> dict[str, Any]:
    return {
        "retry_count": r.retry_count,
        "initial_backoff_ms": r.initial_backoff_ms,
        "max_backoff_ms": r.max_backoff_ms,
        "backoff_factor": r.backoff_factor,
        "randomize": r.randomize,
    }


def _decode(data: bytes | None) -> Any:
    from silo.client.types import unpack

    if data is None:
        return None
    try:
        return unpack(data)
    except Exception:
        return data  # shown as {"base64": ...}


def attempt_dict(a: Attempt) -> dict[str, Any]:
    return {
        "attempt": a.attempt,
        "task_id": a.task_id,
        "state": a.state.name,
        "worker_id": a.worker_id,
        "started_at_ms": a.started_at_ms,
        "ended_at_ms": a.ended_at_ms,
        "result": _decode(a.result),
        "error_code": a.error_code,
        "error_data": _decode(a.error_data),
    }


def job_dict(job: Job) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id,
        "tenant": job.tenant,
        "task_group": job.task_group,
        "status": job.status.name,
        "payload": job.payload,
        "priority": job.priority,
        "retry": _retry_dict(job.retry),
        "metadata": dict(job.metadata),
        "enqueued_at_ms": job.enqueued_at_ms,
        "start_at_ms": job.start_at_ms,
        "status_changed_at_ms": job.status_changed_at_ms,
        "next_attempt_at_ms": job.next_attempt_at_ms,
        "attempt_count": job.attempt_count,
        "undelivered_count": job.undelivered_count,
        "cancel_requested": job.cancel_requested,
        "cancelled_at_ms": job.cancelled_at_ms,
    }
    if job.timeout_ms:
        out["timeout_ms"] = job.timeout_ms
    if job.limits:
        out["limits"] = [_limit_dict(x) for x in job.limits]
    if job.waiting_for:
        out["waiting_for"] = job.waiting_for
    if job.attempts is not None:
        out["attempts"] = [attempt_dict(a) for a in job.attempts]
        out["attempts_total"] = job.attempts_total
    return out


def _limit_dict(limit: Limit) -> dict[str, Any]:
    if isinstance(limit, ConcurrencyLimit):
        return {"concurrency": {"key": limit.key, "max": limit.max_concurrency}}
    if isinstance(limit, FloatingConcurrencyLimit):
        return {"floating": {"key": limit.key, "default_max": limit.default_max_concurrency,
                             "refresh_interval_ms": limit.refresh_interval_ms,
                             "metadata": dict(limit.metadata)}}
    return {"rate": {"name": limit.name, "key": limit.key, "limit": limit.limit,
                     "per_ms": limit.per_ms}}


def _print_job(out: Output, job: Job) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    r = job.retry
    rows = [
        ("id", job.id),
        ("tenant", job.tenant),
        ("task group", job.task_group),
        ("status", job.status.name + (" (cancel requested)" if job.cancel_requested
                                      and not job.status.terminal else "")),
        ("priority", str(job.priority)),
        ("attempt count", str(job.attempt_count)
         + (f" ({job.undelivered_count} undelivered)" if job.undelivered_count else "")),
        ("enqueued at", format_ms(job.enqueued_at_ms)),
        ("start at", format_ms(job.start_at_ms)),
        ("status changed", format_ms(job.status_changed_at_ms)),
    ]
    if job.next_attempt_at_ms:
        rows.append(("next attempt", format_ms(job.next_attempt_at_ms)))
    if job.waiting_for:
        rows.append(("waiting for", job.waiting_for))
    if job.timeout_ms:
        rows.append(("timeout", f"{job.timeout_ms} ms"))
    for limit in job.limits:
        rows.append(("limit", json.dumps(_limit_dict(limit))))
    if job.cancelled_at_ms:
        rows.append(("cancelled at", format_ms(job.cancelled_at_ms)))
    rows.append(("retry", f"{r.retry_count} retries, backoff {r.initial_backoff_ms} ms "
                          f"x{r.backoff_factor:g} up to {r.max_backoff_ms} ms"
                          + (", randomized" if r.randomize else "")))
    if job.metadata:
        rows.append(("metadata", ", ".join(f"{k}={v}" for k, v in sorted(job.metadata.items()))))
    rows.append(("payload", _value_text(job.payload)))
    for key, value in rows:
        table.add_row(key, value)
    out.console.print(table)
    if job.attempts is not None:
        at = Table(title=f"{len(job.attempts)} of {job.attempts_total} attempts (newest first)",
                   title_justify="left")
        for col in ("#", "state", "worker", "started", "took", "outcome"):
            at.add_column(col, overflow="fold")
        for a in job.attempts:
            if a.state == AttemptState.UNDELIVERED:
                outcome = "lease expired before the worker acknowledged it; re-queued"
            elif a.error_code:
                outcome = f"{a.error_code} {_value_text(_decode(a.error_data))}"
            elif a.result is not None:
                outcome = _value_text(_decode(a.result))
            else:
                outcome = ""
            took = f"{a.ended_at_ms - a.started_at_ms} ms" if a.ended_at_ms else "-"
            at.add_row(str(a.attempt), a.state.name, a.worker_id, format_ms(a.started_at_ms),
                       took, outcome)
        out.console.print(at)


# -- commands --------------------------------------------------------------------------------


async def cmd_enqueue(client: SiloClient, args: argparse.Namespace, out: Output) -> int:
    start_at_ms = None
    if args.start_in:
        from silo.runtime.clock import SystemClock

        start_at_ms = SystemClock().now_ms() + round(args.start_in * 1000)
    handle = await client.enqueue(
        args.task_group,
        args.payload,
        tenant=args.tenant,
        id=args.id,
        priority=args.priority,
        start_at_ms=start_at_ms,
        retry=RetryPolicy(retry_count=args.retries),
        metadata=dict(args.metadata),
        limits=[*args.concurrency, *args.rate],
        timeout_ms=args.timeout,
    )
    if out.json:
        out.emit_json({"id": handle.id, "tenant": handle.tenant})
    else:
        out.line(handle.id)
    return EXIT_OK


async def cmd_get(client: SiloClient, args: argparse.Namespace, out: Output) -> int:
    job = await client.job(args.id, args.tenant).get(
        attempts=args.attempts, attempts_before=args.attempts_before if args.attempts else 0
    )
    if out.json:
        out.emit_json(job_dict(job))
    else:
        _print_job(out, job)
    return EXIT_OK


async def cmd_result(client: SiloClient, args: argparse.Namespace, out: Output) -> int:
    from silo.client.types import JobCancelled, JobFailed

    handle = client.job(args.id, args.tenant)
    base = {"id": handle.id, "tenant": handle.tenant}
    try:
        if args.wait:
            value = await handle.result(timeout=args.wait)
        else:
            job = await handle.get()
            if not job.status.terminal:
                raise trio.TooSlowError
            value = await handle.result()
    except trio.TooSlowError:
        status = (await handle.get()).status
        if out.json:
            out.emit_json({**base, "status": status.name, "finished": False})
        else:
            waited = f" after waiting {args.wait:g}s" if args.wait else ""
            print(f"job {handle.id} is not finished{waited} (status {status.name})",
                  file=sys.stderr)
        return EXIT_NOT_FINISHED
    except JobFailed as exc:
        if out.json:
            out.emit_json({**base, "status": "FAILED", "finished": True,
                           "error_code": exc.error_code, "error_data": exc.error_data})
        else:
            print(f"job {handle.id} FAILED with {exc.error_code}", file=sys.stderr)
            if exc.error_data is not None:
                data = exc.error_data
                if isinstance(data, dict) and isinstance(data.get("traceback"), str):
                    out.line(data["traceback"].rstrip())
                else:
                    out.line(dumps(data))
        return EXIT_JOB_UNSUCCESSFUL
    except JobCancelled as exc:
        if out.json:
            out.emit_json({**base, "status": "CANCELLED", "finished": True,
                           "cancelled_at_ms": exc.cancelled_at_ms})
        else:
            print(f"job {handle.id} was CANCELLED at {format_ms(exc.cancelled_at_ms)}",
                  file=sys.stderr)
        return EXIT_JOB_UNSUCCESSFUL
    if out.json:
        out.emit_json({**base, "status": "SUCCEEDED", "finished": True, "result": value})
    else:
        out.line(dumps(value))
    return EXIT_OK


_PAST = {"cancel": "cancelled", "restart": "restarted", "expedite": "expedited",
         "delete": "deleted"}


def _action_command(name: str) -> Command:
    async def command(client: SiloClient, args: argparse.Namespace, out: Output) -> int:
        handle = client.job(args.id, args.tenant)
        await getattr(handle, name)()
        if out.json:
            out.emit_json({"id": handle.id, "tenant": handle.tenant, "action": name, "ok": True})
        else:
            out.line(f"{_PAST[name]} job {handle.id} (tenant {handle.tenant!r})")
        return EXIT_OK

    command.__name__ = f"cmd_{name}"
    return command


async def cmd_queue_show(client: SiloClient, args: argparse.Namespace, out: Output) -> int:
    q = await client.queue(args.key, tenant=args.tenant)
    data = {
        "tenant": q.tenant,
        "key": q.key,
        "max_concurrency": q.max_concurrency,
        "floating": q.floating,
        "holders": q.holders,
        "holder_task_ids": list(q.holder_task_ids),
        "waiting": q.waiting,
        "first_waiting": [
            {"job_id": w.job_id, "attempt": w.attempt, "priority": w.priority,
             "due_ms": w.due_ms}
            for w in q.first_waiting
        ],
    }
    if q.floating:
        data["next_refresh_ms"] = q.next_refresh_ms
        data["refresh_backoff_ms"] = q.refresh_backoff_ms
    if out.json:
        out.emit_json(data)
        return EXIT_OK
    from rich.table import Table

    kind = "floating " if q.floating else ""
    out.line(f"{kind}concurrency queue {q.key!r} (tenant {q.tenant!r}): max {q.max_concurrency}, "
             f"{q.holders} holding, {q.waiting} waiting")
    if q.floating:
        out.line(f"next refresh {format_ms(q.next_refresh_ms)}"
                 + (f", backing off {q.refresh_backoff_ms} ms" if q.refresh_backoff_ms else ""))
    if q.first_waiting:
        table = Table(title=f"first {len(q.first_waiting)} waiting", title_justify="left")
        for col in ("job", "attempt", "priority", "due"):
            table.add_column(col)
        for w in q.first_waiting:
            table.add_row(w.job_id, str(w.attempt), str(w.priority), format_ms(w.due_ms))
        out.console.print(table)
    return EXIT_OK


async def cmd_cluster_info(client: SiloClient, args: argparse.Namespace, out: Output) -> int:
    from silo.wire import pb

    info = await client.call("GetClusterInfo", pb.GetClusterInfoRequest(),
                             pb.GetClusterInfoResponse)
    shards = [
        {
            "id": s.id,
            "range_start": s.range_start,
            "range_end": None if s.range_end_max else s.range_end,
            "owner_node": s.owner_node or None,
            "owner_address": s.owner_address or None,
        }
        for s in info.shards
    ]
    members = [{"node_id": n.node_id, "address": n.address, "shards": list(n.shards)}
               for n in info.nodes]
    if out.json:
        out.emit_json({"node_id": info.node_id, "map_version": info.map_version,
                       "coordination": info.coordination or "none", "nodes": members,
                       "shards": shards})
        return EXIT_OK
    from rich.table import Table

    nodes = sorted({(s["owner_node"] or "-", s["owner_address"] or "-") for s in shards})
    out.line(f"answered by node {info.node_id}; shard map version {info.map_version}; "
             f"{len(shards)} shards on {len(nodes)} node(s)")
    for m in members:
        held = ", ".join(str(x) for x in m["shards"]) or "none"
        out.line(f"node {m['node_id']} at {m['address']}: shards {held}")
    table = Table()
    table.add_column("shard", justify="right")
    table.add_column("hash range")
    table.add_column("owner")
    table.add_column("address")
    for s in shards:
        end = "2^64" if s["range_end"] is None else f"{s['range_end']:#018x}"
        table.add_row(str(s["id"]), f"{s['range_start']:#018x} .. {end}",
                      s["owner_node"] or "-", s["owner_address"] or "-")
    out.console.print(table)
    return EXIT_OK


SPLIT_TIMEOUT_S = 600.0


async def cmd_shard_force_release(client: SiloClient, args: argparse.Namespace,
                                  out: Output) -> int:
    from silo.wire import pb

    resp = await client.call(
        "ForceReleaseShard", pb.ForceReleaseShardRequest(shard=args.shard, owner=args.owner),
        pb.ForceReleaseShardResponse)
    if out.json:
        out.emit_json({"shard": args.shard, "released": resp.released,
                       "previous_owner": resp.previous_owner or None})
        return EXIT_OK
    if resp.released:
        out.line(f"shard {args.shard} released (was owned by {resp.previous_owner}); a live "
                 "node takes it over")
    else:
        out.line(f"shard {args.shard} had no owner; nothing released")
    return EXIT_OK


async def cmd_tenant_locate(client: SiloClient, args: argparse.Namespace, out: Output) -> int:
    from silo.cluster.shard_map import tenant_hash

    info = await client.cluster_info()
    h = tenant_hash(args.tenant)
    assert client.shard_map is not None
    rng = client.shard_map.shard_for_hash(h)
    shard = next(s for s in info.shards if s.id == rng.shard_id)
    found = {"tenant": args.tenant, "hash": h, "shard": rng.shard_id,
             "range_start": rng.start, "range_end": None if rng.end == 1 << 64 else rng.end,
             "owner_node": shard.owner_node or None, "owner_address": shard.owner_address or None}
    if out.json:
        out.emit_json(found)
        return EXIT_OK
    out.line(f"tenant {args.tenant!r}: hash {h:#018x}, shard {rng.shard_id}, owner "
             f"{shard.owner_node or '-'} at {shard.owner_address or '-'}")
    return EXIT_OK


def split_to_dict(s: Any) -> dict[str, Any]:
    def end(start: int, e: int, is_max: bool) -> int | None:
        return None if is_max else e

    return {
        "parent": s.parent, "phase": s.phase, "split_hash": s.split_hash,
        "range_start": s.range_start, "range_end": end(s.range_start, s.range_end,
                                                       s.range_end_max),
        "map_version": s.map_version, "requested_at_ms": s.requested_at_ms,
        "changed_at_ms": s.changed_at_ms, "reason": s.reason or None,
        "children": [
            {"shard": c.shard, "range_start": c.range_start,
             "range_end": end(c.range_start, c.range_end, c.range_end_max),
             "cleanup_stage": c.cleanup_stage, "keys_deleted": c.keys_deleted,
             "keys_examined": c.keys_examined, "open": c.open}
            for c in s.children
        ],
    }


def _print_splits(splits: list[dict[str, Any]], out: Output) -> None:
    if not splits:
        out.line("no splits")
        return
    for s in splits:
        line = (f"shard {s['parent']}: {s['phase']}, split at hash {s['split_hash']:#018x} "
                f"(planned on shard map version {s['map_version']})")
        if s["reason"]:
            line += f"; aborted: {s['reason']}"
        out.line(line)
        for c in s["children"]:
            end = "2^64" if c["range_end"] is None else f"{c['range_end']:#018x}"
            out.line(f"  child {c['shard']} [{c['range_start']:#018x}, {end}): cleanup "
                     f"{c['cleanup_stage']}, {c['keys_deleted']} keys deleted of "
                     f"{c['keys_examined']} examined{'' if c['open'] else ' (not open here)'}")


async def cmd_shard_split(client: SiloClient, args: argparse.Namespace, out: Output) -> int:
    from silo.wire import pb

    resp = await client.call(
        "SplitShard", pb.SplitShardRequest(shard=args.shard, at_hash=args.at_hash),
        pb.SplitShardResponse, shard_id=args.shard, timeout=SPLIT_TIMEOUT_S)
    split = split_to_dict(resp.split)
    if out.json:
        out.emit_json(split)
        return EXIT_OK
    left, right = split["children"]
    out.line(f"shard {split['parent']} split at hash {split['split_hash']:#018x} into shards "
             f"{left['shard']} and {right['shard']} (shard map version "
             f"{split['map_version'] + 1}); cleanup runs in the background "
             f"(siloctl shard split-status {split['parent']})")
    return EXIT_OK


async def cmd_shard_split_status(client: SiloClient, args: argparse.Namespace,
                                 out: Output) -> int:
    from silo.wire import pb

    resp = await client.call("GetSplitStatus", pb.GetSplitStatusRequest(shard=args.shard),
                             pb.GetSplitStatusResponse)
    splits = [split_to_dict(s) for s in resp.splits]
    if out.json:
        out.emit_json({"splits": splits})
        return EXIT_OK
    _print_splits(splits, out)
    return EXIT_OK


# -- main ------------------------------------------------------------------------------------


async def _run(args: argparse.Namespace, out: Output) -> int:
    from silo.client.client import RetrySettings, SiloClient

    retry = RetrySettings(attempts=4, max_backoff_s=1.0)
    async with SiloClient.connect(*args.address, token=args.token, retry=retry) as client:
        return int(await args.fn(client, args, out))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(args.json)
    try:
        return trio.run(_run, args, out)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - user-facing errors become one message
        leaf = leaf_exception(exc)
        if isinstance(leaf, SiloError):
            lines = describe_silo_error(leaf, args.address)
            code = EXIT_ERROR
        elif isinstance(leaf, CliError):
            lines, code = [leaf.message], leaf.exit_code
        elif isinstance(leaf, OSError):
            lines, code = [str(leaf)], EXIT_ERROR
        else:
            raise
        print("error: " + "\n".join(lines), file=sys.stderr)
        return code
