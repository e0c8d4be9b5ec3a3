"""``silo worker MODULE:FUNCTION --task-group G``: run a handler for a task group.

The handler is imported like ``from MODULE import FUNCTION`` with the current directory on
``sys.path``. ``async def`` handlers run on trio (mark asyncio code with
:func:`silo.client.worker.asyncio_handler`); plain functions run in a thread. SIGINT/SIGTERM
stops leasing and gives running handlers ``--stop-timeout`` seconds to finish; a second signal
abandons them at once (their leases expire and the jobs are retried).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import traceback
from typing import Any

import trio

from silo.cli.common import (
    DEFAULT_ADDRESS,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_logging_flags,
    address_list,
    describe_silo_error,
    fail,
    leaf_exception,
    setup_logging,
    timeout_seconds,
)
from silo.client.worker import (
    MAX_CONCURRENT_TASKS_MAX,
    PREFETCH_MAX,
    HandlerFn,
    TaskContext,
    Worker,
)
from silo.errors import SiloError
from silo.model import Cancelled, Failure, Outcome, Success

log = logging.getLogger("silo.worker")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "worker",
        help="run a handler function for a task group",
        description=(
            "Run FUNCTION from MODULE (imported with the current directory on sys.path) for "
            "every task of a task group. async handlers run on trio, plain functions in a "
            "thread. SIGINT/SIGTERM stops leasing and lets running handlers finish for up to "
            "--stop-timeout seconds; a second signal abandons them (their jobs are retried "
            "once the leases expire)."
        ),
    )
    p.add_argument("handler", metavar="MODULE:FUNCTION",
                   help="the handler to import, e.g. examples.handlers:hello")
    p.add_argument("--task-group", "-g", required=True, metavar="G",
                   help="task group to lease tasks from")
    p.add_argument("--concurrency", "-c", type=_positive_int, default=10, metavar="N",
                   help="handlers running at once (default 10)")
    p.add_argument("--prefetch", type=_prefetch, default=None, metavar="N",
                   help="tasks leased beyond the free slots, waiting to start the moment a "
                        "slot frees; handed back unstarted on stop (default: --concurrency; "
                        "0 leases only for free slots)")
    p.add_argument("-a", "--address", type=address_list,
                   default=os.environ.get("SILO_ADDRESS", DEFAULT_ADDRESS),
                   metavar="HOST:PORT[,...]",
                   help=f"silo server(s) (default $SILO_ADDRESS or {DEFAULT_ADDRESS})")
    p.add_argument("--token", default=os.environ.get("SILO_TOKEN") or None,
                   help="bearer token (default $SILO_TOKEN)")
    p.add_argument("--timeout", type=timeout_seconds, default=None, metavar="SECONDS",
                   help="fail an attempt with TIMEOUT after this long unless its job sets "
                        "its own timeout (default: no timeout)")
    p.add_argument("--stop-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGINT/SIGTERM, how long running handlers may finish (default 30)")
    add_logging_flags(p, default_level="info")
    p.set_defaults(run=run)
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value > MAX_CONCURRENT_TASKS_MAX:
        raise argparse.ArgumentTypeError(
            f"{value} is above the limit of {MAX_CONCURRENT_TASKS_MAX} concurrent tasks"
        )
    return value


def _prefetch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer, got {text!r}") from None
    if not 0 <= value <= PREFETCH_MAX:
        raise argparse.ArgumentTypeError(f"prefetch {value} is outside 0..{PREFETCH_MAX}")
    return value


def load_handler(spec: str, cwd: str | None = None) -> HandlerFn:
    """Import ``MODULE:FUNCTION`` (FUNCTION may be dotted). Raises :class:`CliError`."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise CliError(f"handler must look like MODULE:FUNCTION (got {spec!r})", EXIT_USAGE)
    cwd = cwd if cwd is not None else os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CliError(f"cannot import module {module_name!r}: {exc}", EXIT_USAGE) from None
        raise CliError(f"importing {module_name!r} failed:\n{traceback.format_exc()}") from None
    except Exception:
        raise CliError(f"importing {module_name!r} failed:\n{traceback.format_exc()}") from None
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(
                f"module {module_name!r} has no attribute {attr_path!r}", EXIT_USAGE
            ) from None
    if not callable(obj):
        raise CliError(f"{spec} is not callable", EXIT_USAGE)
    return obj  # type: ignore[no-any-return]


class LoggingWorker(Worker):
    """A :class:`Worker` that logs one line per finished task."""

    def _task_finished(self, ctx: TaskContext, outcome: Outcome | None,
                       elapsed_s: float) -> None:
        fields: dict[str, Any] = {"job_id": ctx.job_id, "tenant": ctx.tenant,
                                  "attempt": ctx.attempt, "ms": round(elapsed_s * 1000, 1)}
        if outcome is None:
            log.info("job abandoned", extra=fields)
        elif isinstance(outcome, Success):
            log.info("job succeeded", extra=fields)
        elif isinstance(outcome, Failure):
            log.info("job failed", extra={**fields, "code": outcome.code})
        elif isinstance(outcome, Cancelled):
            log.info("job cancelled", extra=fields)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level or "info", args.log_format or "text")
    try:
        handler = load_handler(args.handler)
    except CliError as exc:
        return fail(exc.message, exc.exit_code)
    try:
        return trio.run(_run, args, handler)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - reported as one line below
        leaf = leaf_exception(exc)
        if isinstance(leaf, SiloError):
            lines = describe_silo_error(leaf, args.address)
            print("error: " + "\n".join(lines), file=sys.stderr)
            return EXIT_ERROR
        if isinstance(leaf, CliError):
            return fail(leaf.message, leaf.exit_code)
        raise


async def _run(args: argparse.Namespace, handler: HandlerFn) -> int:
    from silo.client.client import SiloClient

    exit_code = EXIT_OK
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with SiloClient.connect(*args.address, token=args.token) as client:
            worker = LoggingWorker(client, args.task_group, handler,
                                   max_concurrent_tasks=args.concurrency,
                                   prefetch=args.prefetch,
                                   default_timeout_ms=args.timeout)
            log.info(
                "worker started",
                extra={"worker_id": worker.worker_id, "handler": args.handler,
                       "task_group": args.task_group, "concurrency": args.concurrency,
                       "prefetch": worker.prefetch,
                       "servers": ",".join(client.owner_addresses()), "kind": worker.kind,
                       "timeout_ms": args.timeout},
            )
            async with trio.open_nursery() as nursery:

                async def watch_signals() -> None:
                    nonlocal exit_code
                    count = 0
                    async for signum in signals:
                        count += 1
                        name = signal.Signals(signum).name
                        if count == 1:
                            log.info("stopping worker",
                                     extra={"signal": name, "timeout_s": args.stop_timeout})
                            worker.stop(args.stop_timeout)
                        else:
                            log.warning("second signal: abandoning running tasks",
                                        extra={"signal": name})
                            exit_code = EXIT_INTERRUPTED
                            nursery.cancel_scope.cancel()

                nursery.start_soon(watch_signals)
                await worker.run()
                nursery.cancel_scope.cancel()
            log.info(
                "worker stopped",
                extra={"completed": worker.completed, "failed": worker.failed,
                       "abandoned": worker.abandoned, "timeouts": worker.stats.timeouts,
                       "reports_dropped": worker.stats.reports_dropped},
            )
    return exit_code
