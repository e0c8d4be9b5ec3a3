"""Forced rare paths and probes are no-ops in production and registered in one place."""

from __future__ import annotations

import ast
from pathlib import Path

from silo.runtime.faults import NO_FAULTS, Faults
from silo.runtime.points import BUGGIFY_POINTS, PLANNED_SHARD_POINTS, PROBES

ROOT = Path(__file__).resolve().parents[2]


def test_production_faults_never_buggify_and_count_no_probe() -> None:
    import random

    for faults in (NO_FAULTS, Faults(random.Random(1), {p: 1.0 for p in BUGGIFY_POINTS})):
        for point in BUGGIFY_POINTS:
            assert faults.buggify(point) is False
        for probe in PROBES:
            assert faults.sometimes(probe) is None
        assert faults.fired == {}


def _names_used(call: str) -> set[str]:
    used: set[str] = set()
    for path in [*ROOT.joinpath("silo").rglob("*.py"), *ROOT.joinpath("sim").rglob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == call and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                used.add(node.args[0].value)
    return used


def test_every_point_and_probe_used_in_code_is_registered_and_placed() -> None:
    assert _names_used("buggify") == set(BUGGIFY_POINTS)
    assert _names_used("sometimes") == set(PROBES)
    assert not set(PLANNED_SHARD_POINTS) & set(BUGGIFY_POINTS)
