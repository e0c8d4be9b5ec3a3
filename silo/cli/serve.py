"""``silo serve``: run one node until SIGINT/SIGTERM.

Settings come from, in increasing precedence: the built-in defaults, the TOML file given with
``--config`` (``${VAR}`` / ``${VAR:-default}`` substituted from the environment), then flags.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
from collections.abc import Mapping
from typing import Any

import trio

from silo.cli.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    add_logging_flags,
    fail,
    leaf_exception,
    setup_logging,
)
from silo.config import ConfigError, ServerConfig, from_mapping, load

log = logging.getLogger("silo.cli")

# Flag destination -> ServerConfig field.
FLAG_SETTINGS = {
    "data_dir": "data_dir",
    "grpc_addr": "grpc_addr",
    "http_addr": "http_addr",
    "shards": "shards",
    "token": "token",
    "node_id": "node_id",
    "log_level": "log_level",
    "log_format": "log_format",
    "data_root": "data_dir",
    "coordination": "coordination",
    "etcd": "etcd",
    "etcd_prefix": "etcd_prefix",
    "placement": "placement",
    "advertise_addr": "advertise_addr",
}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    d = ServerConfig()
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run a silo node",
        description=(
            "Run one silo node until SIGINT/SIGTERM. Without arguments: coordination none, "
            f"LevelDB under {d.data_dir}, {d.shards} shards, gRPC on {d.grpc_addr}, HTTP on "
            f"{d.http_addr}. Flags override the --config file, which overrides the defaults."
        ),
    )
    p.add_argument("--config", metavar="FILE",
                   help="TOML config file; ${VAR} and ${VAR:-default} are substituted")
    p.add_argument("--data-dir", metavar="DIR", help=f"LevelDB directory (default {d.data_dir})")
    p.add_argument("--grpc-addr", metavar="HOST:PORT",
                   help=f"gRPC listen address (default {d.grpc_addr}; port 0 picks one)")
    p.add_argument("--http-addr", metavar="HOST:PORT",
                   help=f"HTTP listen address (default {d.http_addr}; port 0 picks one)")
    p.add_argument("--shards", type=int, metavar="N", help=f"number of shards (default {d.shards})")
    p.add_argument("--token", help="require this bearer token on every RPC (default: none)")
    p.add_argument("--node-id", metavar="ID", help=f"this node's id (default {d.node_id})")
    p.add_argument("--coordination", choices=("none", "etcd"),
                   help="none: this node owns every shard (default); etcd: join a cluster")
    p.add_argument("--etcd", metavar="HOST:PORT",
                   help=f"etcd endpoint with --coordination etcd (default {d.etcd})")
    p.add_argument("--etcd-prefix", metavar="PREFIX",
                   help=f"the cluster's key prefix in etcd (default {d.etcd_prefix})")
    p.add_argument("--data-root", metavar="DIR",
                   help="the shards' data root, shared by every node that may own them "
                        "(the same setting as --data-dir)")
    p.add_argument("--placement", choices=("balanced", "sticky"),
                   help="balanced: shards rebalance over live nodes (default); sticky: a shard "
                        "stays with the node that holds it")
    p.add_argument("--advertise-addr", metavar="HOST:PORT",
                   help="the address clients use for this node (default: the gRPC address)")
    add_logging_flags(p, default_level=None)
    p.set_defaults(run=run)
    return p


def build_config(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Defaults < the --config file < flags. Raises :class:`ConfigError`."""
    base = ServerConfig()
    if args.config:
        try:
            base = load(args.config, env)
        except ConfigError as exc:
            text = str(exc)
            raise ConfigError(text if args.config in text else f"{args.config}: {text}") from None
    overrides = {
        field: getattr(args, dest)
        for dest, field in FLAG_SETTINGS.items()
        if getattr(args, dest, None) is not None
    }
    try:
        return from_mapping(overrides, base=base)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (from the command line)") from None


def run(args: argparse.Namespace) -> int:
    try:
        config = build_config(args, os.environ)
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)
    setup_logging(config.log_level, config.log_format)
    from silo.server import serve

    try:
        trio.run(serve, config)
    except KeyboardInterrupt:
        # SIGINT before the node installed its signal handler (or a second one mid-shutdown).
        return EXIT_INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - reported as one line below
        leaf = leaf_exception(exc)
        message = _startup_error(leaf, config)
        if message is None:
            raise
        return fail(message, EXIT_ERROR)
    return EXIT_OK


def _startup_error(exc: BaseException, config: ServerConfig) -> str | None:
    """A one-line explanation for failures an operator can fix, else None (a bug: traceback)."""
    if isinstance(exc, OSError):
        if exc.errno == errno.EADDRINUSE:
            return (f"cannot listen: address already in use (gRPC {config.grpc_addr}, "
                    f"HTTP {config.http_addr})")
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES) and exc.filename is None:
            return f"cannot listen on {config.grpc_addr} / {config.http_addr}: {exc.strerror}"
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    text = str(exc)
    if "lock" in text.lower() and config.data_dir in text:
        return f"data directory {config.data_dir} is in use by another process ({text})"
    if type(exc).__module__.startswith("plyvel"):
        return f"cannot open data directory {config.data_dir}: {text}"
    return None
