"""The seam rules of DESIGN §2, checked on the syntax tree (``ast``), not by grepping:

- outside silo/runtime/, silo/transport/, the generated silo/pb/ and the benchmarks in
  silo/bench/, no silo module touches the operating system's clock, randomness, network, threads
  or LevelDB directly;
- grpclib (directly, or through ``betterproto2.grpclib``) is imported only in silo/transport/:
  not in the generated messages of silo/pb/, nor anywhere else in silo/, sim/ or scenarios/, so
  the simulator runs the real code on the one set of message classes without grpclib.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "silo"
EXEMPT = ("runtime", "transport", "pb", "bench")

FORBIDDEN_MODULES = frozenset(
    {"time", "socket", "threading", "asyncio", "plyvel", "grpclib", "trio_asyncio"}
)
FORBIDDEN_CALLS = frozenset(
    {
        "datetime.datetime.now",
        "datetime.datetime.utcnow",
        "datetime.datetime.today",
        "datetime.date.today",
        "uuid.uuid1",
        "uuid.uuid4",
        "os.urandom",
        "os.getrandom",
    }
)
# ``random.Random`` (seeded, handed in through the runtime) is the only part of ``random`` that
# silo code may use; every module-level function draws from hidden global state.
RANDOM_ALLOWED = frozenset({"Random"})


def _dotted(node: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def seam_violations(source: str, filename: str = "<string>") -> list[str]:
    """``file:line: what`` for every seam violation in ``source``."""
    tree = ast.parse(source, filename)
    found: list[tuple[int, str]] = []
    names: dict[str, str] = {}  # local name -> the module or object it stands for

    def forbidden_module(module: str) -> bool:
        return module.split(".")[0] in FORBIDDEN_MODULES

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if forbidden_module(alias.name):
                    found.append((node.lineno, f"imports {alias.name}"))
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    names[root] = root
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if forbidden_module(node.module):
                found.append((node.lineno, f"imports from {node.module}"))
            for alias in node.names:
                qualified = f"{node.module}.{alias.name}"
                if node.module == "random" and alias.name not in RANDOM_ALLOWED:
                    found.append((node.lineno, f"imports random.{alias.name}"))
                elif qualified in FORBIDDEN_CALLS:
                    found.append((node.lineno, f"imports {qualified}"))
                names[alias.asname or alias.name] = qualified

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            parts = _dotted(node)
            if parts is None or parts[0] not in names:
                continue
            qualified = ".".join([names[parts[0]], *parts[1:]])
            if qualified in FORBIDDEN_CALLS:
                found.append((node.lineno, f"uses {qualified}"))
            elif qualified.startswith("random.") and len(parts) >= 2:
                attr = qualified.split(".")[1]
                if attr not in RANDOM_ALLOWED:
                    found.append((node.lineno, f"uses module-level {qualified}"))
        elif isinstance(node, ast.Call):
            # __import__("time") / importlib.import_module("time")
            target = _dotted(node.func)
            if target in (["__import__"], ["importlib", "import_module"]) and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    if forbidden_module(arg.value):
                        found.append((node.lineno, f"imports {arg.value} dynamically"))
    return [f"{filename}:{line}: {what}" for line, what in sorted(set(found))]


GRPCLIB_HOME = PACKAGE / "transport"
GRPCLIB_FREE_TREES = (PACKAGE, ROOT / "sim", ROOT / "scenarios")
GRPCLIB_MODULES = ("grpclib", "betterproto2.grpclib")


def _imports_grpclib(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in GRPCLIB_MODULES)


def grpclib_violations(source: str, filename: str = "<string>") -> list[str]:
    """``file:line: what`` for every import of grpclib or betterproto2's grpclib support."""
    tree = ast.parse(source, filename)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _imports_grpclib(alias.name):
                    found.append((node.lineno, f"imports {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from betterproto2 import grpclib``: the imported name may be a submodule.
            for alias in node.names:
                if _imports_grpclib(node.module) or _imports_grpclib(f"{node.module}.{alias.name}"):
                    found.append((node.lineno, f"imports {node.module}.{alias.name}"))
        elif isinstance(node, ast.Call):
            target = _dotted(node.func)
            if target in (["__import__"], ["importlib", "import_module"]) and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    if _imports_grpclib(arg.value):
                        found.append((node.lineno, f"imports {arg.value} dynamically"))
    return [f"{filename}:{line}: {what}" for line, what in sorted(set(found))]


def grpclib_free_files() -> list[Path]:
    """Every module of silo/ outside silo/transport/, and of sim/ and scenarios/."""
    return [
        path
        for tree in GRPCLIB_FREE_TREES
        for path in sorted(tree.rglob("*.py"))
        if not path.is_relative_to(GRPCLIB_HOME)
    ]


def checked_files() -> list[Path]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts and rel.parts[0] in EXEMPT:
            continue
        out.append(path)
    return out


def test_silo_respects_the_seams() -> None:
    files = checked_files()
    assert any(p.name == "shard.py" for p in files)  # the walk found the code
    problems = []
    for path in files:
        problems += seam_violations(path.read_text(), str(path.relative_to(ROOT)))
    assert not problems, "seam violations (DESIGN §2):\n" + "\n".join(problems)


def test_only_the_transport_imports_grpclib() -> None:
    files = grpclib_free_files()
    rel = {path.relative_to(ROOT).as_posix() for path in files}
    # The walk found the generated messages and the simulator, and skipped the transport.
    assert {"silo/pb/silo/v1/__init__.py", "silo/pb/etcdserverpb/__init__.py"} <= rel
    assert {"sim/runner.py", "scenarios/chaos.py", "silo/service.py"} <= rel
    assert not any(name.startswith("silo/transport/") for name in rel)
    problems = []
    for path in files:
        problems += grpclib_violations(path.read_text(), str(path.relative_to(ROOT)))
    assert not problems, "grpclib outside silo/transport/:\n" + "\n".join(problems)


def test_exempt_directories_exist() -> None:
    for name in ("runtime", "transport", "pb", "bench"):
        assert (PACKAGE / name).is_dir(), name


# -- the checker itself --------------------------------------------------------------------------

BAD = {
    "import time": "imports time",
    "import time as t": "imports time",
    "from time import monotonic": "imports from time",
    "import socket": "imports socket",
    "import threading": "imports threading",
    "import asyncio.subprocess": "imports asyncio.subprocess",
    "from asyncio import sleep": "imports from asyncio",
    "import plyvel": "imports plyvel",
    "import grpclib.client": "imports grpclib.client",
    "from trio_asyncio import open_loop": "imports from trio_asyncio",
    "import datetime\nx = datetime.datetime.now()": "uses datetime.datetime.now",
    "from datetime import datetime\nx = datetime.utcnow()": "uses datetime.datetime.utcnow",
    "from datetime import datetime as dt\nx = dt.today()": "uses datetime.datetime.today",
    "from datetime import date\nx = date.today()": "uses datetime.date.today",
    "import uuid\nx = uuid.uuid4()": "uses uuid.uuid4",
    "import uuid\nx = uuid.uuid1()": "uses uuid.uuid1",
    "from uuid import uuid4": "imports uuid.uuid4",
    "import os\nx = os.urandom(8)": "uses os.urandom",
    "from os import urandom": "imports os.urandom",
    "import random\nx = random.random()": "uses module-level random.random",
    "import random\nx = random.randint(1, 2)": "uses module-level random.randint",
    "import random\nrandom.shuffle([])": "uses module-level random.shuffle",
    "import random\nf = random.choice": "uses module-level random.choice",
    "import random\nrandom.seed(1)": "uses module-level random.seed",
    "import random as r\nx = r.uniform(0, 1)": "uses module-level random.uniform",
    "import random\nx = random.SystemRandom()": "uses module-level random.SystemRandom",
    "from random import randint": "imports random.randint",
    "from random import Random, choice": "imports random.choice",
    "from random import *": "imports random.*",
    "def f():\n    import time\n    return time.time()": "imports time",
    "t = __import__('time')": "imports time dynamically",
    "import importlib\nt = importlib.import_module('socket')": "imports socket dynamically",
}

GOOD = [
    "import random\n\ndef f(rng: random.Random) -> int:\n    return rng.randint(1, 6)",
    "from random import Random\nrng = Random(4)\nrng.random()",
    "import datetime\nx = datetime.datetime.fromtimestamp(0)",
    "from datetime import datetime, timezone\nx = datetime(2020, 1, 1, tzinfo=timezone.utc)",
    "import uuid\nx = uuid.UUID(int=5)",
    "import os\nx = os.path.join('a', 'b')",
    "import trio\nasync def f():\n    await trio.sleep(1)",
    "from silo.runtime.clock import Clock",
    "import hashlib\nx = hashlib.blake2b(b'').digest()",
    "class X:\n    def time(self):\n        return self.random.random()",
    "mytime = 3\ntimes = [mytime]",
    "from . import time",  # a sibling module that happens to be called time
]


@pytest.mark.parametrize("source", list(BAD))
def test_checker_flags_a_planted_violation(source: str) -> None:
    problems = seam_violations(source, "planted.py")
    assert problems, source
    assert any(BAD[source] in p for p in problems), problems
    assert all(p.startswith("planted.py:") for p in problems)


@pytest.mark.parametrize("source", GOOD)
def test_checker_accepts_seam_respecting_code(source: str) -> None:
    assert seam_violations(source, "ok.py") == []


GRPCLIB_BAD = {
    "import grpclib": "imports grpclib",
    "import grpclib.client as c": "imports grpclib.client",
    "from grpclib.const import Handler": "imports grpclib.const.Handler",
    "from grpclib import GRPCError": "imports grpclib.GRPCError",
    "from betterproto2 import grpclib as betterproto2_grpclib": "imports betterproto2.grpclib",
    "from betterproto2.grpclib.grpclib_client import MetadataLike": (
        "imports betterproto2.grpclib.grpclib_client.MetadataLike"
    ),
    "import betterproto2.grpclib": "imports betterproto2.grpclib",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import grpclib.server": (
        "imports grpclib.server"
    ),
    "def f():\n    from grpclib.client import Channel": "imports grpclib.client.Channel",
    "m = __import__('grpclib.client')": "imports grpclib.client dynamically",
    "import importlib\nm = importlib.import_module('betterproto2.grpclib')": (
        "imports betterproto2.grpclib dynamically"
    ),
}

GRPCLIB_GOOD = [
    "import betterproto2\nx = betterproto2.which_one_of",
    "from betterproto2 import Message",
    "from silo.pb.silo import v1 as pb",
    "from . import grpclib",  # a sibling module that happens to be called grpclib
    "grpclib = None",
    "import grpclib_extras",
]


@pytest.mark.parametrize("source", list(GRPCLIB_BAD))
def test_grpclib_checker_flags_a_planted_import(source: str) -> None:
    problems = grpclib_violations(source, "planted.py")
    assert problems, source
    assert any(GRPCLIB_BAD[source] in p for p in problems), problems
    assert all(p.startswith("planted.py:") for p in problems)


@pytest.mark.parametrize("source", GRPCLIB_GOOD)
def test_grpclib_checker_accepts_code_without_grpclib(source: str) -> None:
    assert grpclib_violations(source, "ok.py") == []


def test_grpclib_checker_flags_stubs_planted_in_the_generated_messages() -> None:
    """The generated stubs and the service classes they are made with, had they gone to silo/pb/
    (as silo/pb/grpc/ once did), fail."""
    stubs = (PACKAGE / "transport" / "stubs" / "silo_v1.py").read_text()
    problems = grpclib_violations(stubs, "silo/pb/grpc/silo/v1/__init__.py")
    assert any("imports grpclib" in p for p in problems), problems
    services = (PACKAGE / "transport" / "services.py").read_text()
    problems = grpclib_violations(services, "silo/pb/grpc/services.py")
    assert any("imports grpclib" in p for p in problems), problems
    assert any("imports betterproto2.grpclib" in p for p in problems), problems


def test_checker_reports_file_and_line() -> None:
    source = "import trio\n\n\nimport time\nx = 1\nimport uuid\ny = uuid.uuid4()\n"
    assert seam_violations(source, "silo/x.py") == [
        "silo/x.py:4: imports time",
        "silo/x.py:7: uses uuid.uuid4",
    ]
