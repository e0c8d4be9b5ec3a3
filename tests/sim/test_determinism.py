"""One seed is one run: the same seed gives the same trace digest, in-process or in a fresh
process under another hash seed; different seeds give different runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sim.runner import run_one


@pytest.mark.parametrize("scenario", ["happy", "chaos", "crash_restart"])
def test_same_seed_same_digest(scenario: str) -> None:
    a = run_one(scenario, 11)
    b = run_one(scenario, 11)
    assert a.exit_code == 0, a.message
    assert a.digest == b.digest
    assert a.sim_seconds == b.sim_seconds
    assert a.fired == b.fired
    assert a.params == b.params


def test_different_seeds_differ() -> None:
    digests = {run_one("message_loss", seed).digest for seed in range(4)}
    assert len(digests) == 4


def test_mutation_changes_the_run() -> None:
    assert run_one("happy", 3).digest != run_one("happy", 3, "counter-drift").digest


def test_fresh_process_other_hash_seed_same_digest() -> None:
    here = run_one("chaos", 5)
    env = dict(os.environ, PYTHONHASHSEED="123", SILO_SIM_KEEP_HASHSEED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "sim.cli", "run", "chaos", "--seed", "5"],
        capture_output=True, text=True, env=env, check=False,
    )
    assert proc.returncode == here.exit_code, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"digest {here.digest}"
