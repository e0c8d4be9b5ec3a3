"""The simulator runs the real code without grpclib or asyncio (DESIGN §2)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
from sim.runner import run_one
r = run_one("chaos", 3)
assert r.exit_code == 0, r.message
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("grpclib", "asyncio", "trio_asyncio")
             or m.startswith(("silo.transport.grpc", "silo.transport.aio", "silo.transport.stubs")))
print(",".join(bad))
"""


def test_simulation_imports_no_grpclib_or_asyncio() -> None:
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
