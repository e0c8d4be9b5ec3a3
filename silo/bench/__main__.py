"""Benchmarks: ``python -m silo.bench engine [--jobs N] [--workers W]`` (one LevelDB shard),
``python -m silo.bench e2e [--jobs N] [--workers W]`` (server + gRPC + worker processes) and
``python -m silo.bench split [--jobs N]`` (split a shard of N jobs; its cleanup rate)."""

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
    spl = sub.add_parser("split", help="split a LevelDB shard of N jobs; time it and its cleanup")
    spl.add_argument("--jobs", type=int, default=100_000)
    spl.add_argument("--tenants", type=int, default=1000)
    spl.add_argument("--batch-keys", type=int, default=500,
                     help="rows per cleanup batch (default 500)")
    ew = sub.add_parser("e2e-worker", help=argparse.SUPPRESS)
    ew.add_argument("--address", required=True)
    ew.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.bench == "e2e":
        from silo.bench.e2e import print_e2e, run_e2e

        if args.jobs < 1 or args.workers < 1:
            parser.error("--jobs and --workers must be positive")
        result = run_e2e(args.jobs, args.workers)
        print_e2e(result)
        return 0 if result.exactly_once else 1
    if args.bench == "split":
        from silo.bench.split import print_split, run_split

        if args.jobs < 1 or args.tenants < 2 or not 1 <= args.batch_keys <= 100_000:
            parser.error("--jobs must be positive, --tenants at least 2, --batch-keys 1..100000")
        print_split(run_split(args.jobs, args.tenants, args.batch_keys))
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


if __name__ == "__main__":
    sys.exit(main())
