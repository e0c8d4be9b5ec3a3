"""BUGGIFY points and probes under the simulator: per-run choice, counts, reports, sweeps."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

import scenarios
from silo.errors import Code, SiloError
from silo.runtime.points import BUGGIFY_POINTS, PROBES
from sim.cli import main, read_probe_list
from sim.faults import FaultBoard
from sim.network import NetConfig
from sim.runner import report_lines, run_one
from sim.simulator import Simulator
from sim.trace import Trace


def test_each_run_enables_a_seeded_subset_of_points() -> None:
    chosen = []
    for seed in range(40):
        board = FaultBoard(Trace())
        board.choose_buggify(random.Random(seed))
        again = FaultBoard(Trace())
        again.choose_buggify(random.Random(seed))
        assert board.buggify_rates == again.buggify_rates
        chosen.append(len(board.buggify_rates))
    assert 0 in chosen and max(chosen) >= 2
    assert sum(chosen) / len(chosen) < len(BUGGIFY_POINTS) / 2


def test_enabled_points_fire_and_are_counted_unknown_names_raise() -> None:
    board = FaultBoard(Trace())
    board.buggify_rates = {"node.lease.fewer_tasks": 1.0}
    faults = board.faults_for(random.Random(1), (), "n1")
    assert faults.buggify("node.lease.fewer_tasks")
    assert not faults.buggify("node.lease.wake_early")
    faults.sometimes("node.lease.across_shards")
    assert board.buggified == {"node.lease.fewer_tasks": 1}
    assert board.probes == {"node.lease.across_shards": 1}
    with pytest.raises(ValueError, match="unknown BUGGIFY point"):
        faults.buggify("no.such.point")
    with pytest.raises(ValueError, match="unknown probe"):
        faults.sometimes("no.such.probe")


def test_a_run_reports_forced_paths_and_probes() -> None:
    r = run_one("happy", 3)
    assert r.exit_code == 0
    assert r.probes.get("node.lease.long_poll_woken", 0) > 0
    lines = report_lines(r)
    assert any(line.startswith("forced paths: ") for line in lines)
    assert any(line.startswith("probes: node.lease") for line in lines)


def test_forced_paths_are_taken_and_runs_still_pass() -> None:
    taken: set[str] = set()
    for seed in range(12):
        r = run_one("chaos", seed)
        assert r.exit_code == 0, r.replay + "\n" + r.message
        taken.update(r.buggified)
    assert taken <= set(BUGGIFY_POINTS)
    assert len(taken) >= len(BUGGIFY_POINTS) // 2, taken


def test_every_point_is_enabled_in_some_run() -> None:
    enabled: set[str] = set()
    for seed in range(40):
        board = FaultBoard(Trace())
        board.choose_buggify(random.Random(seed))
        enabled.update(board.buggify_rates)
    assert enabled == set(BUGGIFY_POINTS)


def test_require_probes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok = tmp_path / "ok.txt"
    ok.write_text("# reached in any run with work\nnode.lease.long_poll_woken\n")
    assert read_probe_list(str(ok)) == ["node.lease.long_poll_woken"]
    assert main(["sweep", "--seeds", "1", "--scenario", "happy", "--require-probes",
                 str(ok)]) == 0
    never = tmp_path / "never.txt"
    never.write_text("worker.heartbeat.cancel_seen  # happy has no operator\n")
    assert main(["sweep", "--seeds", "1", "--scenario", "happy", "--require-probes",
                 str(never)]) == 1
    assert "required probes never fired" in capsys.readouterr().out
    bad = tmp_path / "bad.txt"
    bad.write_text("no.such.probe\n")
    assert main(["sweep", "--seeds", "1", "--require-probes", str(bad)]) == 64


def test_the_shipped_probe_list_is_valid() -> None:
    names = read_probe_list(str(Path(__file__).resolve().parents[2] / "sim" / "ci_probes.txt"))
    assert names and all(n in PROBES or n in BUGGIFY_POINTS for n in names)


async def _too_large(sim: Simulator, rng: random.Random) -> None:
    sim.set_network(NetConfig(max_message_bytes=4096))
    await sim.add_node("n1", shards=1, lease_ms=1000)
    client = sim.add_host("p").client()
    with pytest.raises(SiloError) as err:
        await client.enqueue("g", b"x" * 5000, id="too-big")
    assert err.value.code == Code.RESOURCE_EXHAUSTED
    assert "exceeds the limit of 4096" in str(err.value)
    assert sim.stats["net.too_large.request.Enqueue"] == 1
    await client.enqueue("g", b"y" * 3000, id="big")
    sim.checker.on_ack_enqueue("default", "big")
    sim.set_network(NetConfig(max_message_bytes=1000))
    with pytest.raises(SiloError) as got:
        await client.job("big").get()
    assert got.value.code == Code.RESOURCE_EXHAUSTED
    assert sim.stats["net.too_large.response.GetJob"] >= 1
    sim.set_network(NetConfig())
    await client.job("big").cancel()
    await trio.sleep(0)


def test_the_network_enforces_the_max_message_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(scenarios.SCENARIOS, "too_large", _too_large)
    r = run_one("too_large", 1)
    assert r.exit_code == 0, r.message
