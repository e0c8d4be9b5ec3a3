"""``siloctl shard split`` and ``siloctl shard split-status`` against a real ``silo serve``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from silo.cli.ctl import build_parser
from tests.test_cli import REPO, _env, free_port, run, script, stop


def test_split_arguments_parse() -> None:
    p = build_parser()
    a = p.parse_args(["shard", "split", "3", "--at-hash", "0x10"])
    assert (a.shard, a.at_hash) == (3, 16)
    assert p.parse_args(["shard", "split", "3"]).at_hash == 0
    assert p.parse_args(["--json", "shard", "split-status"]).shard is None


def test_split_at_hash_out_of_bounds_is_a_usage_error(capsys) -> None:  # noqa: ANN001
    import pytest

    for bad in ("0", str(1 << 64), "x"):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(["shard", "split", "0", "--at-hash", bad])
        assert exc.value.code == 2


def test_split_end_to_end(tmp_path) -> None:  # noqa: ANN001
    grpc = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [sys.executable, "-m", "silo", "serve", "--data-dir", str(tmp_path / "data"),
         "--shards", "1", "--grpc-addr", grpc, "--http-addr", f"127.0.0.1:{free_port()}"],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    siloctl = [script("siloctl"), "-a", grpc]
    try:
        deadline = time.monotonic() + 20
        while run(*siloctl, "cluster", "info").returncode != 0:
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        ids = {}
        for t in ("acme", "globex", "initech", "umbrella"):
            enq = run(*siloctl, "job", "enqueue", "-g", "demo", "--tenant", t)
            assert enq.returncode == 0, enq.stderr
            ids[t] = enq.stdout.strip()
        split = run(*siloctl, "--json", "shard", "split", "0")
        assert split.returncode == 0, split.stderr
        rec = json.loads(split.stdout)
        assert rec["phase"] == "children_open"
        assert [c["shard"] for c in rec["children"]] == [1, 2]
        # A hash not strictly inside the child's range is refused and changes nothing.
        bad = run(*siloctl, "shard", "split", "2", "--at-hash", str(rec["split_hash"]))
        assert bad.returncode == 1 and "not strictly inside" in bad.stderr, bad.stderr
        deadline = time.monotonic() + 20
        while True:
            status = json.loads(run(*siloctl, "--json", "shard", "split-status").stdout)
            if all(s["phase"] == "cleanup_done" for s in status["splits"]):
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        text = run(*siloctl, "shard", "split-status").stdout
        assert text.startswith("shard 0: cleanup_done, split at hash"), text
        assert "child 1 [0x0000000000000000," in text and "cleanup done" in text
        info = json.loads(run(*siloctl, "--json", "cluster", "info").stdout)
        assert [s["id"] for s in info["shards"]] == [1, 2]
        for t, job_id in ids.items():
            got = run(*siloctl, "--json", "job", "get", job_id, "--tenant", t)
            assert got.returncode == 0, got.stderr
            assert json.loads(got.stdout)["status"] == "SCHEDULED"
    finally:
        code, err = stop(server, signal.SIGTERM)
    assert code == 0, err
