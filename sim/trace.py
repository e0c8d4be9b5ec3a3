"""The run's trace: every durable event, network delivery and fault, with simulated timestamps.

The digest is a hash of every line, so two runs of one seed agree byte for byte or they differ.
``--trace`` echoes the lines as they are recorded; the last few are always kept for failure
reports.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import trio


def format_fields(fields: Mapping[str, Any]) -> str:
    """``k=v`` pairs in key order (values by ``repr``: deterministic for str, int, None)."""
    return " ".join(f"{k}={fields[k]!r}" for k in sorted(fields))


class Trace:
    def __init__(self, echo: Callable[[str], None] | None = None, keep: int = 60) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self.echo = echo
        self.lines = 0
        self.tail: deque[str] = deque(maxlen=keep)

    def record(self, text: str) -> None:
        try:
            now = trio.current_time()
        except RuntimeError:  # outside trio.run (setup/teardown of the runner)
            now = 0.0
        line = f"{now:.6f} {text}"
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        self.lines += 1
        self.tail.append(line)
        if self.echo is not None:
            self.echo(line)

    def digest(self) -> str:
        return self._hash.hexdigest()
