"""What the command-line tools share: logging setup, error reporting, JSON conversion."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from silo.errors import Code, SiloError

DEFAULT_ADDRESS = "127.0.0.1:7450"

EXIT_OK = 0
EXIT_ERROR = 1
"""The server or the network said no (NOT_FOUND, UNAVAILABLE, ...), or a runtime failure."""
EXIT_USAGE = 2
"""Bad command line, bad config file, bad --payload: the user's input was wrong."""
EXIT_NOT_FINISHED = 3
"""``siloctl job result``: the job has not reached a terminal state (yet)."""
EXIT_JOB_UNSUCCESSFUL = 4
"""``siloctl job result``: the job ended FAILED or CANCELLED."""
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure to report as one ``error: ...`` line and an exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def fail(message: str, exit_code: int = EXIT_ERROR, stream: TextIO | None = None) -> int:
    print(f"error: {message}", file=stream or sys.stderr)
    return exit_code


# -- errors ----------------------------------------------------------------------------------


def leaf_exception(exc: BaseException) -> BaseException:
    """The interesting exception inside (possibly nested) exception groups: the only leaf, or
    the first :class:`SiloError`/:class:`CliError`/:class:`OSError` leaf."""
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
            continue
        leaves = list(_leaves(exc))
        for cls in (CliError, SiloError, OSError):
            for leaf in leaves:
                if isinstance(leaf, cls):
                    return leaf
        return leaves[0] if leaves else exc
    return exc


def _leaves(exc: BaseException) -> Any:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub)
    else:
        yield exc


def describe_silo_error(err: SiloError, addresses: list[str]) -> list[str]:
    """Lines (without the ``error: `` prefix) that explain ``err`` to a person."""
    if err.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
        lines = [f"cannot reach silo at {', '.join(addresses)} ({err.code.name})"]
        if err.message:
            lines.append(f"  {err.message}")
        return lines
    if err.code == Code.UNAUTHENTICATED:
        return [f"{err} (pass --token or set SILO_TOKEN)"]
    return [str(err)]


# -- addresses -------------------------------------------------------------------------------


def address_list(text: str) -> list[str]:
    """argparse type: one or more comma-separated ``host:port`` addresses."""
    from silo.transport.grpc import parse_address

    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    for part in parts:
        try:
            parse_address(part)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parts


# -- JSON ------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """A JSON-encodable version of a decoded msgpack value: bytes become
    ``{"base64": "..."}``, non-string map keys become strings, tuples become lists."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


def dumps(value: Any, *, indent: int | None = 2) -> str:
    return json.dumps(jsonable(value), indent=indent, ensure_ascii=False)


def format_ms(ms: int | None) -> str:
    """Epoch milliseconds as an ISO-8601 UTC time ("-" for none)."""
    if not ms:
        return "-"
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- logging ---------------------------------------------------------------------------------

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


def _timestamp(record: logging.LogRecord) -> str:
    dt = datetime.fromtimestamp(record.created, tz=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(jsonable(value), ensure_ascii=False)
    if text and not any(c in text for c in ' "=\\\n\t') and text.isprintable():
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _record_fields(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, Any]:
    """ts, level, logger, msg, any ``extra`` fields and the exception, in that order."""
    fields: dict[str, Any] = {
        "ts": _timestamp(record),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    fields.update(_extras(record))
    if record.exc_info:
        fields["exc"] = formatter.formatException(record.exc_info)
    return fields


class TextFormatter(logging.Formatter):
    """``ts=... level=info logger=silo.server msg="..." key=value ...`` (logfmt)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _record_fields(self, record)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, any ``extra`` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(jsonable(_record_fields(self, record)), ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to stderr, one line each."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = getattr(logging, level.upper(), logging.INFO)
    root.setLevel(numeric)
    # Third-party libraries are chatty below WARNING (hpack logs every header at DEBUG).
    for noisy in ("hpack", "h2", "grpclib", "asyncio", "trio_asyncio"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


def add_logging_flags(parser: argparse.ArgumentParser, *, default_level: str | None) -> None:
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default=default_level, type=str.lower,
        help="minimum level of log lines on stderr (default: info)",
    )
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default=None,
        help="text: key=value lines (default); json: one JSON object per line",
    )


ATTEMPT_TIMEOUT_MS_MAX = 24 * 3600 * 1000


def timeout_seconds(text: str) -> int:
    """An attempt timeout given in seconds -> milliseconds (1 ms .. 24 h, the server's default
    ``max_timeout_ms``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    ms = round(value * 1000) if math.isfinite(value) else 0
    if not 1 <= ms <= ATTEMPT_TIMEOUT_MS_MAX:
        raise argparse.ArgumentTypeError(
            f"timeout must be between 0.001 and {ATTEMPT_TIMEOUT_MS_MAX // 1000} seconds, "
            f"got {text!r}"
        )
    return ms
