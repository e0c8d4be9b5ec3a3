"""One seed is one run: the same seed gives the same trace digest, again in the same process,
after other seeds, or in a fresh process under another hash seed; different seeds give
different runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sim.runner import run_one


@pytest.mark.parametrize("scenario", ["happy", "chaos", "crash_restart", "rebalance_under_load",
                                      "partition_owner", "etcd_outage", "stale_routing",
                                      "cluster_traffic"])
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


def _digest_in_fresh_process(code: str, hash_seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, SILO_SIM_KEEP_HASHSEED="1")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_fresh_process_other_hash_seed_same_digest() -> None:
    """The CLI's replay of a run gives the digest a sweep worker got for it: a fresh process
    under another hash seed, and a process that ran other seeds first (as a sweep worker
    does), agree. (Both sides run in fresh interpreters: what other tests in this process
    did to interpreter-wide state is not part of the contract.)"""
    env = dict(os.environ, PYTHONHASHSEED="123", SILO_SIM_KEEP_HASHSEED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "sim.cli", "run", "chaos", "--seed", "5"],
        capture_output=True, text=True, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    after_others = _digest_in_fresh_process(
        "from sim.runner import run_one\n"
        "run_one('happy', 3); run_one('crash_restart', 2)\n"
        "print('digest', run_one('chaos', 5).digest)",
        "0",
    )
    assert last == after_others
