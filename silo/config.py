"""Server configuration: defaults, a TOML file with ``${VAR}`` substitution, and flags.

Precedence: command-line flags > the TOML file > built-in defaults. In the file, ``${VAR}`` is
replaced by the environment variable VAR (an error if unset) and ``${VAR:-default}`` by VAR or,
when VAR is unset or empty, by ``default``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from silo.runtime.files import read_text
from silo.shard.validation import ShardLimits


class ConfigError(ValueError):
    """The configuration file or a flag is invalid; the message says which setting."""


@dataclass(frozen=True)
class ServerConfig:
    data_dir: str = "./silo-data"
    grpc_addr: str = "127.0.0.1:7450"
    http_addr: str = "127.0.0.1:7451"
    advertise_addr: str = ""
    """Address clients should use for this node; defaults to grpc_addr."""
    shards: int = 8
    node_id: str = "node-1"
    token: str | None = None
    max_message_bytes: int = 16 * 1024 * 1024
    lease_ms: int = 30_000
    shutdown_grace_s: float = 10.0
    log_level: str = "info"
    log_format: str = "text"
    """"text" (key=value lines) or "json" (one JSON object per line)."""
    limits: ShardLimits = field(default_factory=ShardLimits)
    coordination: str = "none"
    """"none" (this node owns every shard) or "etcd" (a cluster: membership, ownership and the
    shard map in etcd; ``data_dir`` is then the data root every node can open)."""
    etcd: str = "127.0.0.1:2379"
    """The etcd endpoint (host:port) with coordination etcd."""
    etcd_prefix: str = "/silo"
    """The key prefix of this cluster in etcd."""
    placement: str = "balanced"
    """"balanced" (shards rebalance over the live members) or "sticky" (a shard stays with
    the node holding it; only unowned shards are placed)."""
    membership_ttl_s: int = 5
    """TTL of the membership lease: a node that stops renewing it is gone after this long."""
    reconcile_interval_s: float = 1.0
    """How often the reconcile loop reads the cluster and acts."""


ALIASES = {"data_root": "data_dir"}
"""Settings also accepted under another name."""


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute(text: str, env: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in ``text``."""

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        if value is not None:
            return value
        raise ConfigError(f"environment variable {name} is not set (used as ${{{name}}})")

    return _VAR.sub(repl, text)


def _coerce(name: str, value: Any, target: Any) -> Any:
    if isinstance(target, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false")
        return value
    if isinstance(target, int):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                return int(value)
            raise ConfigError(f"{name} must be an integer")
        return value
    if isinstance(target, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name} must be a number")
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string")
    return value


def from_mapping(data: Mapping[str, Any], base: ServerConfig | None = None) -> ServerConfig:
    """Build a config from a parsed TOML document (unknown keys are errors)."""
    base = base or ServerConfig()
    known = {f.name: f for f in dataclasses.fields(ServerConfig)}
    changes: dict[str, Any] = {}
    for name, value in data.items():
        name = ALIASES.get(name, name)
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}")
        if name == "limits":
            if not isinstance(value, Mapping):
                raise ConfigError("[limits] must be a table")
            limit_fields = {f.name for f in dataclasses.fields(ShardLimits)}
            lim_changes = {}
            for lname, lvalue in value.items():
                if lname not in limit_fields:
                    raise ConfigError(f"unknown limit {lname!r}")
                lim_changes[lname] = _coerce(
                    f"limits.{lname}", lvalue, getattr(base.limits, lname)
                )
            changes["limits"] = dataclasses.replace(base.limits, **lim_changes)
        elif name == "token":
            changes["token"] = _coerce("token", value, "") or None
        else:
            changes[name] = _coerce(name, value, getattr(base, name))
    return validate(dataclasses.replace(base, **changes))


def load(path: str, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Read a TOML config file."""
    try:
        text = read_text(path)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    text = substitute(text, os.environ if env is None else env)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return from_mapping(data)


def validate(config: ServerConfig) -> ServerConfig:
    if not 1 <= config.shards <= 4096:
        raise ConfigError(f"shards must be within 1..4096 (got {config.shards})")
    if config.lease_ms < 100:
        raise ConfigError("lease_ms must be at least 100")
    for name in ("grpc_addr", "http_addr"):
        value = getattr(config, name)
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{name} must look like HOST:PORT (got {value!r})")
    if config.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("log_level must be one of debug, info, warning, error")
    if config.coordination not in ("none", "etcd"):
        raise ConfigError(f"coordination must be none or etcd (got {config.coordination!r})")
    if config.placement not in ("balanced", "sticky"):
        raise ConfigError(f"placement must be balanced or sticky (got {config.placement!r})")
    if not 1 <= config.membership_ttl_s <= 300:
        raise ConfigError("membership_ttl_s must be within 1..300")
    if not 0.01 <= config.reconcile_interval_s <= 60:
        raise ConfigError("reconcile_interval_s must be within 0.01..60")
    if config.coordination == "etcd":
        host, sep, port = config.etcd.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError(f"etcd must look like HOST:PORT (got {config.etcd!r})")
        if not config.etcd_prefix.startswith("/") or config.etcd_prefix.endswith("/"):
            raise ConfigError(f"etcd_prefix must start and not end with / "
                              f"(got {config.etcd_prefix!r})")
    if config.log_format not in ("text", "json"):
        raise ConfigError(f"log_format must be text or json (got {config.log_format!r})")
    return config
