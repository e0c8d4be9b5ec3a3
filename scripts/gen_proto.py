"""Regenerate ``silo/pb/`` from ``proto/silo.proto`` with betterproto2-compiler.

Usage (from anywhere)::

    .venv/bin/python scripts/gen_proto.py          # regenerate silo/pb/ in place
    .venv/bin/python scripts/gen_proto.py --check  # exit 1 (and show a diff summary) if stale

The compiler runs as a protoc plugin (``protoc-gen-python_betterproto2``) under grpcio-tools'
bundled protoc, twice: messages only into ``silo/pb/`` (importable without grpclib or asyncio,
as the simulator requires) and with ``client_generation=async,server_generation=async`` grpclib
stubs into ``silo/pb/grpc/``. It
writes into a temporary directory first; the result is then synced into ``silo/pb/``
(changed files rewritten, stale files removed, ``__pycache__`` left alone), so a failed
generation never leaves a half-written package behind.

The plugin formats its output by running ``ruff`` from ``PATH``; this script puts the directory
of the running interpreter (the venv's ``bin/``) first on ``PATH`` and runs protoc from a
scratch directory holding an empty ``ruff.toml``, so neither the project's nor the user's ruff
configuration leaks into the generated code. The output still depends on the installed ruff
and betterproto2-compiler versions: after upgrading either, regenerate and commit.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "silo" / "pb"
PROTO_FILES = ["silo.proto"]
PLUGIN = "protoc-gen-python_betterproto2"
MESSAGE_OPTIONS = "client_generation=none,server_generation=none"
STUB_OPTIONS = "client_generation=async,server_generation=async"
STUB_SUBDIR = "grpc"
"""Messages only (no grpclib, no asyncio) go to ``silo/pb/``; the same messages with grpclib
client and server stubs go to ``silo/pb/grpc/`` for programs that want generated stubs."""
IGNORED_DIRS = {"__pycache__"}
DIFF_LINES_PER_FILE = 40


def _tool_path() -> str:
    bin_dir = str(Path(sys.executable).parent)
    return os.pathsep.join([bin_dir, os.environ.get("PATH", "")])


def generate(dest: Path, options: str) -> None:
    """Run protoc + the betterproto2 plugin, writing the package into ``dest``."""
    try:
        import grpc_tools
    except ImportError:
        sys.exit("grpcio-tools is not installed (pip install -e '.[dev]')")
    path = _tool_path()
    plugin = shutil.which(PLUGIN, path=path)
    if plugin is None:
        sys.exit(f"{PLUGIN} not found; install betterproto2-compiler (pip install -e '.[dev]')")
    if shutil.which("ruff", path=path) is None:
        sys.exit("ruff not found; the betterproto2 plugin needs it to format its output")
    well_known = Path(grpc_tools.__file__).parent / "_proto"

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="silo-protoc-cwd-") as cwd:
        # An empty ruff.toml makes ruff use its defaults regardless of surrounding config.
        (Path(cwd) / "ruff.toml").write_text("")
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO_DIR}",
            f"--proto_path={well_known}",
            f"--plugin={PLUGIN}={plugin}",
            f"--python_betterproto2_out={dest}",
            f"--python_betterproto2_opt={options}",
            *[str(PROTO_DIR / name) for name in PROTO_FILES],
        ]
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env={**os.environ, "PATH": path},
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        sys.exit(f"protoc failed with exit status {proc.returncode}")


def _files(root: Path) -> dict[str, bytes]:
    """Relative posix path -> content of every file under ``root`` (caches skipped)."""
    result: dict[str, bytes] = {}
    if not root.is_dir():
        return result
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in IGNORED_DIRS for part in rel.parts) or path.suffix == ".pyc":
            continue
        if path.is_file():
            result[rel.as_posix()] = path.read_bytes()
    return result


def compare(fresh: dict[str, bytes], current: dict[str, bytes]) -> list[str]:
    """Human-readable lines describing how ``current`` differs from ``fresh`` (empty: equal)."""
    lines: list[str] = []
    for name in sorted(fresh.keys() - current.keys()):
        lines.append(f"missing: silo/pb/{name}")
    for name in sorted(current.keys() - fresh.keys()):
        lines.append(f"stale (not generated): silo/pb/{name}")
    for name in sorted(fresh.keys() & current.keys()):
        if fresh[name] == current[name]:
            continue
        lines.append(f"differs: silo/pb/{name}")
        diff = list(
            difflib.unified_diff(
                current[name].decode("utf-8", "replace").splitlines(),
                fresh[name].decode("utf-8", "replace").splitlines(),
                fromfile=f"silo/pb/{name} (checked in)",
                tofile=f"silo/pb/{name} (generated)",
                lineterm="",
            )
        )
        lines.extend("    " + d for d in diff[:DIFF_LINES_PER_FILE])
        if len(diff) > DIFF_LINES_PER_FILE:
            lines.append(f"    ... {len(diff) - DIFF_LINES_PER_FILE} more diff lines")
    return lines


def sync(fresh: dict[str, bytes], current: dict[str, bytes]) -> list[str]:
    """Make ``OUT_DIR`` hold exactly ``fresh``; return what changed."""
    changed: list[str] = []
    for name, content in fresh.items():
        if current.get(name) != content:
            target = OUT_DIR / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            changed.append(f"wrote silo/pb/{name}")
    for name in sorted(current.keys() - fresh.keys()):
        (OUT_DIR / name).unlink()
        changed.append(f"removed silo/pb/{name}")
    # Drop directories left empty by removals (ignoring caches).
    for path in sorted(OUT_DIR.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and path.name not in IGNORED_DIRS:
            if all(child.name in IGNORED_DIRS for child in path.iterdir()):
                shutil.rmtree(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 with a diff summary if silo/pb/ is not up to date",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="silo-pb-") as tmp:
        out = Path(tmp) / "pb"
        generate(out, MESSAGE_OPTIONS)
        generate(out / STUB_SUBDIR, STUB_OPTIONS)
        fresh = _files(out)
    current = _files(OUT_DIR)

    if args.check:
        problems = compare(fresh, current)
        if problems:
            print("silo/pb/ is out of date; run: .venv/bin/python scripts/gen_proto.py")
            print("\n".join(problems))
            return 1
        print(f"silo/pb/ is up to date ({len(fresh)} files)")
        return 0

    changed = sync(fresh, current)
    print("\n".join(changed) if changed else f"silo/pb/ already up to date ({len(fresh)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
