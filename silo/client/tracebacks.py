"""The traceback a worker stores with a handler's failure.

Each frame names its file relative to the import root it was loaded from (the longest entry of
``sys.path``, or the directory holding the ``silo`` package, that contains it): ``myapp/tasks.py``
rather than ``/srv/app/releases/42/myapp/tasks.py``. The stored text is then the same wherever the
code is installed (a simulation replays byte for byte from any checkout, since the failure's
size is part of the run), and no host paths are written into job results. A file under no root
keeps its full name.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

import silo

TRACEBACK_FRAMES_MAX = 20
"""Frames kept per exception (the innermost ones are dropped first, as ``traceback`` does)."""
CHAINED_EXCEPTIONS_MAX = 8
"""Causes and contexts followed from the raised exception."""


def import_roots() -> list[str]:
    """Candidate roots, longest first (a nested root wins over the one containing it)."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(silo.__file__)))
    roots = {os.path.abspath(p) for p in sys.path if p} | {package_root}
    return sorted(roots, key=lambda r: (-len(r), r))


def relative_name(filename: str, roots: Sequence[str]) -> str:
    """``filename`` relative to the first of ``roots`` that contains it, else unchanged."""
    if not os.path.isabs(filename):
        return filename
    for root in roots:
        prefix = root.rstrip(os.sep) + os.sep
        if filename.startswith(prefix):
            return filename[len(prefix):]
    return filename


def portable_traceback(exc: BaseException, limit: int = TRACEBACK_FRAMES_MAX,
                       roots: Sequence[str] | None = None) -> str:
    """``exc`` formatted as :func:`traceback.format_exception` would, chained exceptions
    included, with file names relative to their import roots (module docstring)."""
    roots = import_roots() if roots is None else roots
    summary = traceback.TracebackException.from_exception(exc, limit=limit)
    seen = 0
    pending = [summary]
    while pending and seen < CHAINED_EXCEPTIONS_MAX:
        current = pending.pop()
        seen += 1
        for frame in current.stack:
            # Source lines were read at capture (lookup_lines), so renaming loses nothing.
            frame.filename = relative_name(frame.filename, roots)
        pending.extend(c for c in (current.__cause__, current.__context__) if c is not None)
    return "".join(summary.format())


__all__ = ["import_roots", "portable_traceback", "relative_name"]
