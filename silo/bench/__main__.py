"""Benchmarks: ``python -m silo.bench engine [--jobs N] [--workers W]`` (one LevelDB shard),
``python -m silo.bench e2e [--jobs N] [--workers W]`` (server + gRPC + worker processes),
``python -m silo.bench split [--jobs N]`` (split a shard of N jobs; its cleanup rate),
``python -m silo.bench latency`` (enqueue-to-handler-start latency at half the peak rate, from
the trio, asyncio and blocking clients, against ``silo worker`` processes at their defaults),
``python -m silo.bench memory`` (RSS, open time and first lease of a shard of 1.1M jobs),
``python -m silo.bench peers`` (silo side by side with pgqueuer on PostgreSQL 15; needs the
``bench`` extra and Debian's ``postgresql-15``) and ``python -m silo.bench plot`` (the peers
ratios over commits as a PNG)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m silo.bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    eng = sub.add_parser("engine", help="enqueue -> lease -> complete on one LevelDB shard")
    eng.add_argument("--jobs", type=int, default=20_000)
    eng.add_argument("--workers", type=int, default=8)
    eng.add_argument(
        "--limits",
        action="store_true",
        help="also run with one concurrency limit (max 10 over 1000 keys) and compare",
    )
    e2e = sub.add_parser("e2e", help="server process + gRPC enqueues + worker processes")
    e2e.add_argument("--jobs", type=int, default=5000)
    e2e.add_argument("--workers", type=int, default=2)
    e2e.add_argument(
        "--cli-defaults",
        action="store_true",
        help="one sequential single-enqueue caller; `silo worker` processes at CLI defaults",
    )
    from silo.bench.peers import (
        DEFAULT_BATCH,
        DEFAULT_JOBS,
        DEFAULT_RESULTS,
        DEFAULT_ROUNDS,
        DEFAULT_WORKERS,
    )

    peers = sub.add_parser(
        "peers", help="silo vs pgqueuer on PostgreSQL 15: single, bulk, processing",
        description="Start a throwaway PostgreSQL cluster and silo servers and run alternating "
                    "rounds of pgqueuer and silo on the same workload; print the medians, the "
                    "ratios and this stack's ceilings; append the run to a JSON lines file.",
    )
    peers.add_argument("--jobs", type=int, default=DEFAULT_JOBS,
                       help=f"jobs per workload (default {DEFAULT_JOBS})")
    peers.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                       help=f"rounds per library (default {DEFAULT_ROUNDS})")
    peers.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                       help=f"jobs per bulk enqueue call (default {DEFAULT_BATCH})")
    peers.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                       help=f"worker processes (default {DEFAULT_WORKERS})")
    peers.add_argument("--results", default=DEFAULT_RESULTS, metavar="FILE",
                       help=f"append the run as one JSON line here (default {DEFAULT_RESULTS}; "
                            "'' to store nothing)")
    peers.add_argument("--json", action="store_true",
                       help="print the run's JSON record instead of the table")
    plot = sub.add_parser("plot", help="draw the peers ratios over commits (PNG)")
    plot.add_argument("--results", default=DEFAULT_RESULTS, metavar="FILE",
                      help=f"the JSON lines file to read (default {DEFAULT_RESULTS})")
    plot.add_argument("--out", default="bench-ratios.png", metavar="PNG",
                      help="where to write the picture (default bench-ratios.png)")
    spl = sub.add_parser("split", help="split a LevelDB shard of N jobs; time it and its cleanup")
    spl.add_argument("--jobs", type=int, default=100_000)
    spl.add_argument("--tenants", type=int, default=1000)
    spl.add_argument("--batch-keys", type=int, default=500,
                     help="rows per cleanup batch (default 500)")
    from silo.bench.latency import CLIENTS, LatencyConfig

    lat = sub.add_parser(
        "latency", help="enqueue-to-handler-start latency at half the peak processing rate",
        description="Measure the peak processing rate of `silo worker` processes at their "
                    "defaults, then enqueue at a fraction of it (one job per call, paced) from "
                    "each client and print p50/p99/max enqueue-to-handler-start latency.",
    )
    defaults = LatencyConfig()
    lat.add_argument("--jobs", type=int, default=defaults.jobs,
                     help=f"paced jobs per client (default {defaults.jobs})")
    lat.add_argument("--peak-jobs", type=int, default=defaults.peak_jobs,
                     help=f"jobs of the peak measurement (default {defaults.peak_jobs})")
    lat.add_argument("--workers", type=int, default=defaults.workers,
                     help=f"`silo worker` processes (default {defaults.workers})")
    lat.add_argument("--clients", default=",".join(CLIENTS),
                     help=f"comma-separated, of {','.join(CLIENTS)} (default all)")
    lat.add_argument("--load-fraction", type=float, default=defaults.load_fraction,
                     help=f"paced rate as a fraction of the peak (default "
                          f"{defaults.load_fraction:g})")
    lat.add_argument("--max-seconds", type=float, default=defaults.max_seconds,
                     help=f"each paced phase stops sending after this long (default "
                          f"{defaults.max_seconds:g})")
    lat.add_argument("--prefetch", type=int, default=None,
                     help="pass --prefetch N to the workers (default: the CLI's default)")
    lat.add_argument("--json", action="store_true", help="print the result as JSON")
    mem = sub.add_parser("memory", help="RSS, open time and first lease of a shard of many jobs")
    mem.add_argument("--scheduled", type=int, default=1_000_000,
                     help="jobs scheduled over the next day (default 1,000,000)")
    mem.add_argument("--ready", type=int, default=100_000,
                     help="jobs due now (default 100,000)")
    mem.add_argument("--parked", type=int, default=0,
                     help="jobs parked on one concurrency queue with one slot (default 0)")
    mem.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ew = sub.add_parser("e2e-worker", help=argparse.SUPPRESS)
    ew.add_argument("--address", required=True)
    ew.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.bench == "e2e":
        from silo.bench.e2e import print_e2e, run_e2e

        if args.jobs < 1 or args.workers < 1:
            parser.error("--jobs and --workers must be positive")
        result = run_e2e(args.jobs, args.workers, args.cli_defaults)
        print_e2e(result)
        return 0 if result.exactly_once else 1
    if args.bench == "peers":
        return _peers(parser, args)
    if args.bench == "latency":
        from silo.bench.latency import format_latency, run_latency

        config = LatencyConfig(args.jobs, args.peak_jobs, args.workers,
                               tuple(c for c in args.clients.split(",") if c),
                               args.load_fraction, args.max_seconds, args.prefetch)
        try:
            config.check()
        except ValueError as exc:
            parser.error(str(exc))
        say = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr))
        result = run_latency(config, say)
        print(result.to_json() if args.json else format_latency(result))
        return 0
    if args.bench == "plot":
        from silo.bench.peers_report import read_records
        from silo.bench.plot import plot_ratios

        try:
            records = read_records(args.results)
        except FileNotFoundError:
            parser.error(f"no results file {args.results!r}")
        if not records:
            parser.error(f"{args.results!r} holds no peers records")
        plot_ratios(records, args.out)
        print(f"wrote {args.out} ({len(records)} runs)")
    if args.bench == "split":
        from silo.bench.split import print_split, run_split

        if args.jobs < 1 or args.tenants < 2 or not 1 <= args.batch_keys <= 100_000:
            parser.error("--jobs must be positive, --tenants at least 2, --batch-keys 1..100000")
        print_split(run_split(args.jobs, args.tenants, args.batch_keys))
        return 0
    if args.bench == "memory":
        import json

        from silo.bench.memory import asdict, print_memory, run_memory

        if args.scheduled < 0 or args.ready < 1 or args.parked < 0:
            parser.error("--scheduled and --parked must be >= 0 and --ready >= 1")
        memory = run_memory(args.scheduled, args.ready, progress=not args.json,
                            parked=args.parked)
        if args.json:
            print(json.dumps(asdict(memory)))
        else:
            print_memory(memory)
        return 0
    if args.bench == "e2e-worker":
        from silo.bench.e2e import worker_main

        worker_main(args.address, args.out)
        return 0
    if args.bench == "engine":
        from silo.bench.engine import print_engine, run_engine

        if args.jobs < 1 or args.workers < 1:
            parser.error("--jobs and --workers must be positive")
        if args.limits:
            from silo.bench.engine import print_limits_comparison

            plain = run_engine(args.jobs, args.workers)
            print_limits_comparison(plain, run_engine(args.jobs, args.workers, True))
        else:
            print_engine(run_engine(args.jobs, args.workers))
    return 0


def _peers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import json

    from silo.bench.peers import PeersConfig, run_peers
    from silo.bench.peers_report import append_record, format_table
    from silo.bench.pgcluster import PostgresNotFound

    config = PeersConfig(args.jobs, args.rounds, args.batch, args.workers)
    try:
        config.check()
    except ValueError as exc:
        parser.error(str(exc))
    try:
        import asyncpg  # noqa: F401
        import pgqueuer  # noqa: F401
    except ImportError as exc:
        print(f"error: {exc}; install the bench extra: pip install -e '.[bench]'",
              file=sys.stderr)
        return 2
    try:
        record = run_peers(config)
    except PostgresNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    if args.results:
        append_record(args.results, record)
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
    else:
        print(format_table(record))
        if args.results:
            print(f"appended to {args.results}")
    return 0 if all(record["exactly_once"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
