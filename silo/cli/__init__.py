"""Command-line tools: ``silo`` (serve, worker) and ``siloctl``."""

from __future__ import annotations

import argparse

import silo


def build_silo_parser() -> argparse.ArgumentParser:
    from silo.cli import serve, worker

    parser = argparse.ArgumentParser(
        prog="silo",
        description="silo: a durable, sharded background-job broker.",
        epilog="Manage jobs with `siloctl`. Exit status: 0 ok, 1 runtime error, 2 usage or "
               "config error.",
    )
    parser.add_argument("--version", action="version", version=f"silo {silo.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{serve,worker}", required=True)
    serve.add_parser(sub)
    worker.add_parser(sub)
    return parser


def main_silo(argv: list[str] | None = None) -> int:
    """Entry point of the ``silo`` command."""
    args = build_silo_parser().parse_args(argv)
    return int(args.run(args))


def main_siloctl(argv: list[str] | None = None) -> int:
    """Entry point of the ``siloctl`` command."""
    from silo.cli.ctl import main

    return main(argv)
