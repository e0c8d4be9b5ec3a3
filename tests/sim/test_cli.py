"""The ``silo-sim`` command line: list, run (exit codes, replay, digest last), sweep,
determinism."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import trio

import scenarios
from sim.cli import main
from sim.invariants import Invariant
from sim.runner import EXIT_CRASH, EXIT_LIVENESS, report_lines, run_one
from sim.simulator import Simulator


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim.cli", *args], capture_output=True, text=True,
        env=dict(os.environ, PYTHONHASHSEED="0"), check=False,
    )


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in scenarios.SCENARIOS:
        assert name in out
    assert "double-lease" in out and "counter-drift" in out


def test_run_prints_seed_params_and_digest_last() -> None:
    proc = cli("run", "happy", "--seed", "4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[1] == "seed 4 scenario happy mutation none"
    assert any(line.startswith("param jobs=") for line in lines[:20])
    assert lines[-1].startswith("digest ") and len(lines[-1].split()[1]) == 32


def test_failure_prints_replay_and_replay_reproduces() -> None:
    proc = cli("run", "happy", "--seed", "3", "--mutation", "counter-drift")
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    replay = next(line for line in lines if line.startswith("replay: "))
    assert replay == "replay: silo-sim run happy --seed 3 --mutation counter-drift"
    assert any("invariant 12" in line for line in lines)
    again = cli(*replay.split()[2:])
    assert again.returncode == 1
    assert again.stdout.strip().splitlines()[-1] == lines[-1]


def test_trace_flag_prints_the_trace() -> None:
    proc = cli("run", "lease_expiry", "--seed", "1", "--trace")
    assert proc.returncode == 0
    assert " ev n1 task_leased " in proc.stdout
    assert " net call #1 " in proc.stdout


def test_unknown_scenario_or_mutation() -> None:
    assert cli("run", "nope", "--seed", "1").returncode == 64
    assert cli("run", "happy", "--seed", "1", "--mutation", "nope").returncode == 64


def test_determinism_command() -> None:
    proc = cli("determinism", "--seed", "7")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "digests match" in proc.stdout


def test_sweep_passes_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--seeds", "3", "--base-seed", "9"]) == 0
    out = capsys.readouterr().out
    assert "sweep summary" in out and "seeds/min" in out and "fault points fired" in out


def test_sweep_with_failures_exits_1_and_lists_replays() -> None:
    proc = cli("sweep", "--seeds", "2", "--scenario", "happy", "--mutation", "counter-drift",
               "--jobs", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "replay: silo-sim run happy --seed 0 --mutation counter-drift" in proc.stdout
    assert "replay: silo-sim run happy --seed 1 --mutation counter-drift" in proc.stdout


async def _never_settles(sim: Simulator, rng: random.Random) -> None:
    await sim.add_node("n1", shards=1, lease_ms=1000)
    client = sim.add_host("p").client()
    await client.enqueue("nobody-works-here", {"d": 0}, id="lonely")
    sim.checker.on_ack_enqueue("default", "lonely")
    await sim.heal()
    await sim.settle(10.0)


async def _explodes(sim: Simulator, rng: random.Random) -> None:
    await sim.add_node("n1", shards=1, lease_ms=1000)
    await trio.sleep(1)
    raise RuntimeError("boom")


async def _hangs(sim: Simulator, rng: random.Random) -> None:
    await sim.add_node("n1", shards=1, lease_ms=1000)
    await trio.sleep_forever()  # time keeps passing (the checker ticks): a run bound is needed


def test_a_run_that_never_finishes_misses_the_run_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(scenarios.SCENARIOS, "hangs", _hangs)
    r = run_one("hangs", 1)
    assert r.exit_code == EXIT_LIVENESS
    assert "did not finish" in r.message


async def _handler_bug(sim: Simulator, rng: random.Random) -> None:
    node = await sim.add_node("n1", shards=1, lease_ms=1000)

    async def broken(data: bytes, ctx: object) -> bytes:
        raise KeyError("a bug in a handler")

    node.handlers["/silo.v1.Silo/GetClusterInfo"] = broken
    client = sim.add_host("p").client()
    await client.refresh_shard_map()


def test_a_handler_bug_is_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(scenarios.SCENARIOS, "handler_bug", _handler_bug)
    r = run_one("handler_bug", 1)
    assert r.exit_code == EXIT_CRASH
    assert r.message.startswith("crash: handler /silo.v1.Silo/GetClusterInfo raised")


def test_exit_codes_liveness_and_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(scenarios.SCENARIOS, "never_settles", _never_settles)
    monkeypatch.setitem(scenarios.SCENARIOS, "explodes", _explodes)
    r = run_one("never_settles", 1)
    assert r.exit_code == EXIT_LIVENESS and r.invariant == Invariant.LIVENESS
    assert "not terminal" in r.message and "lonely" in r.message
    assert report_lines(r)[-2] == "replay: silo-sim run never_settles --seed 1"
    r = run_one("explodes", 1)
    assert r.exit_code == EXIT_CRASH
    assert "boom" in r.message
