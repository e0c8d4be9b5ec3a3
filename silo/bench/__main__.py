"""``python -m silo.bench engine [--jobs N] [--workers W]``"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m silo.bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    eng = sub.add_parser("engine", help="enqueue -> lease -> complete on one LevelDB shard")
    eng.add_argument("--jobs", type=int, default=20_000)
    eng.add_argument("--workers", type=int, default=8)
    args = parser.parse_args(argv)
    if args.bench == "engine":
        from silo.bench.engine import print_engine, run_engine

        if args.jobs < 1 or args.workers < 1:
            parser.error("--jobs and --workers must be positive")
        print_engine(run_engine(args.jobs, args.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
