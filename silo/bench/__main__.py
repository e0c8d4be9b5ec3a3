"""Benchmarks: ``python -m silo.bench engine [--jobs N] [--workers W]`` (one LevelDB shard)
and ``python -m silo.bench e2e [--jobs N] [--workers W]`` (server + gRPC + worker processes)."""

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


if __name__ == "__main__":
    sys.exit(main())
