"""Reading small local files at start-up (configuration, handler modules' data)."""

from __future__ import annotations


def read_text(path: str) -> str:
    """The UTF-8 text of ``path``; raises OSError when it cannot be read."""
    with open(path, encoding="utf-8") as f:
        return f.read()
