"""The command-line tools: argument parsing, config precedence, logging, and the README
quickstart end to end through the real console scripts."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from silo.cli import build_silo_parser, main_silo, main_siloctl
from silo.cli.common import (
    EXIT_USAGE,
    JsonFormatter,
    TextFormatter,
    jsonable,
    leaf_exception,
)
from silo.cli.ctl import build_parser
from silo.cli.serve import build_config
from silo.cli.worker import load_handler
from silo.config import ConfigError, ServerConfig
from silo.errors import NotFound

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


# -- silo serve: flags and config ------------------------------------------------------------


def serve_args(*argv: str) -> argparse.Namespace:
    return build_silo_parser().parse_args(["serve", *argv])


def test_serve_defaults_need_no_config():
    config = build_config(serve_args(), env={})
    assert config == ServerConfig()
    assert (config.data_dir, config.shards) == ("./silo-data", 8)
    assert (config.grpc_addr, config.http_addr) == ("127.0.0.1:7450", "127.0.0.1:7451")


def test_flags_override_file_which_overrides_defaults(tmp_path):
    path = tmp_path / "silo.toml"
    path.write_text(
        'data_dir = "${DATA:-/var/lib/silo}"\n'
        "shards = 16\n"
        'node_id = "${NODE}"\n'
        'grpc_addr = "0.0.0.0:9000"\n'
        'log_format = "json"\n'
    )
    env = {"NODE": "n7"}
    from_file = build_config(serve_args("--config", str(path)), env=env)
    assert from_file.data_dir == "/var/lib/silo"
    assert (from_file.shards, from_file.node_id, from_file.grpc_addr) == (16, "n7", "0.0.0.0:9000")
    assert from_file.http_addr == "127.0.0.1:7451"  # default kept
    assert from_file.log_format == "json"

    flags = build_config(
        serve_args("--config", str(path), "--shards", "4", "--data-dir", "/d", "--token", "t",
                   "--node-id", "x", "--log-level", "DEBUG", "--log-format", "text"),
        env={**env, "DATA": "/ignored-by-flag"},
    )
    assert (flags.shards, flags.data_dir, flags.token, flags.node_id) == (4, "/d", "t", "x")
    assert (flags.log_level, flags.log_format) == ("debug", "text")
    assert flags.grpc_addr == "0.0.0.0:9000"  # from the file, no flag


def test_config_errors_name_the_file_or_the_flag(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('shards = "many"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: shards must be an integer"):
        build_config(serve_args("--config", str(path)), env={})
    path.write_text('token = "${SILO_TOKEN}"\n')
    with pytest.raises(ConfigError, match="SILO_TOKEN is not set"):
        build_config(serve_args("--config", str(path)), env={})
    with pytest.raises(ConfigError, match="from the command line"):
        build_config(serve_args("--shards", "0"), env={})


def test_cluster_settings_from_flags_and_file(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text(
        'coordination = "etcd"\n'
        'etcd = "10.0.0.5:2379"\n'
        'data_root = "/shared/silo"\n'
        'placement = "sticky"\n'
        "membership_ttl_s = 7\n"
        "reconcile_interval_s = 0.5\n"
    )
    from_file = build_config(serve_args("--config", str(path)), env={})
    assert (from_file.coordination, from_file.etcd, from_file.data_dir) == (
        "etcd", "10.0.0.5:2379", "/shared/silo")
    assert (from_file.placement, from_file.membership_ttl_s,
            from_file.reconcile_interval_s) == ("sticky", 7, 0.5)
    flags = build_config(serve_args(
        "--coordination", "etcd", "--etcd", "127.0.0.1:2379", "--node-id", "n2",
        "--data-root", "/root", "--placement", "balanced", "--etcd-prefix", "/prod"), env={})
    assert (flags.coordination, flags.etcd, flags.node_id, flags.data_dir, flags.placement,
            flags.etcd_prefix) == ("etcd", "127.0.0.1:2379", "n2", "/root", "balanced", "/prod")
    with pytest.raises(ConfigError, match="etcd must look like HOST:PORT"):
        build_config(serve_args("--coordination", "etcd", "--etcd", "nowhere"), env={})
    with pytest.raises(ConfigError, match="etcd_prefix must start"):
        build_config(serve_args("--coordination", "etcd", "--etcd-prefix", "silo/"), env={})
    path.write_text('placement = "random"\n')
    with pytest.raises(ConfigError, match="placement must be balanced or sticky"):
        build_config(serve_args("--config", str(path)), env={})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shards", "0"], "error: shards must be within 1..4096 (got 0) (from the command line)"),
        (["--grpc-addr", "nowhere"], "error: grpc_addr must look like HOST:PORT"),
        (["--config", "/no/such/silo.toml"], "error: cannot read config file /no/such/silo.toml"),
    ],
)
def test_serve_config_error_is_one_line_exit_2(argv, message, capsys):
    assert main_silo(["serve", *argv]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert err.count("\n") == 1 and "Traceback" not in err


def test_serve_usage_errors_exit_2(capsys):
    for argv in (["serve", "--shards", "x"], ["serve", "--log-level", "loud"], ["bogus"], []):
        with pytest.raises(SystemExit) as exc:
            main_silo(argv)
        assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


# -- siloctl: parsing ------------------------------------------------------------------------


def test_siloctl_global_flags_before_or_after_the_command():
    p = build_parser()
    a = p.parse_args(["job", "get", "j1"])
    assert (a.address, a.token, a.json, a.tenant, a.attempts) == (
        ["127.0.0.1:7450"], None, False, "default", False)
    a = p.parse_args(["-a", "h:1", "--json", "--token", "t", "job", "get", "j1"])
    assert (a.address, a.token, a.json) == (["h:1"], "t", True)
    a = p.parse_args(["job", "get", "j1", "--json", "-a", "h:1,h:2", "--tenant", "acme",
                      "--attempts"])
    assert (a.address, a.json, a.tenant, a.attempts) == (["h:1", "h:2"], True, "acme", True)
    a = p.parse_args(["--json", "cluster", "info"])
    assert a.json and a.fn.__name__ == "cmd_cluster_info"


def test_siloctl_enqueue_arguments():
    a = build_parser().parse_args([
        "job", "enqueue", "--task-group", "g", "--payload", '{"n": [1, 2]}', "--priority", "7",
        "--start-in", "1.5", "--retries", "3", "--metadata", "a=1", "b=x=y", "-m", "c=",
        "--id", "my-id", "--tenant", "t1",
    ])
    assert a.task_group == "g" and a.payload == {"n": [1, 2]}
    assert (a.priority, a.start_in, a.retries, a.id, a.tenant) == (7, 1.5, 3, "my-id", "t1")
    assert dict(a.metadata) == {"a": "1", "b": "x=y", "c": ""}
    a = build_parser().parse_args(["job", "enqueue", "-g", "g"])
    assert a.payload is None and a.metadata == [] and a.start_in is None


def test_timeout_flags_are_seconds_to_milliseconds():
    a = build_parser().parse_args(["job", "enqueue", "-g", "g", "--timeout", "2.5"])
    assert a.timeout == 2500
    assert build_parser().parse_args(["job", "enqueue", "-g", "g"]).timeout is None
    a = build_silo_parser().parse_args(["worker", "m:f", "-g", "g", "--timeout", "0.3"])
    assert (a.timeout, a.concurrency, a.prefetch) == (300, 10, None)
    a = build_silo_parser().parse_args(["worker", "m:f", "-g", "g", "--prefetch", "0"])
    assert a.prefetch == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["worker", "m:f", "-g", "g", "--concurrency", "1001"], "limit of 1000"),
        (["worker", "m:f", "-g", "g", "--timeout", "0"], "timeout must be between"),
        (["worker", "m:f", "-g", "g", "--prefetch", "-1"], "prefetch -1 is outside 0..1000"),
        (["worker", "m:f", "-g", "g", "--prefetch", "1001"], "prefetch 1001 is outside"),
        (["worker", "m:f", "-g", "g", "--prefetch", "x"], "non-negative integer"),
        (["worker", "m:f", "-g", "g", "--timeout", "86401"], "timeout must be between"),
    ],
)
def test_worker_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main_silo(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["job", "enqueue", "-g", "g", "--timeout", "nan"], "timeout must be between"),
        (["job", "enqueue", "-g", "g", "--payload", "{nope"], "--payload/-p: not valid JSON"),
        (["job", "enqueue", "-g", "g", "--metadata", "novalue"], "expected KEY=VALUE"),
        (["job", "enqueue", "-g", "g", "--start-in", "-1"], "non-negative"),
        (["job", "enqueue", "-g", "g", "--retries", "-1"], "non-negative"),
        (["job", "enqueue", "--payload", "1"], "--task-group"),
        (["job", "result", "x", "--wait", "soon"], "number of seconds"),
        (["-a", "localhost", "job", "get", "x"], "address must be host:port"),
        (["job", "frobnicate", "x"], "invalid choice"),
        (["job"], "required"),
    ],
)
def test_siloctl_usage_errors_exit_2_without_traceback(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main_siloctl(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_siloctl_unreachable_server(capsys):
    port = free_port()
    assert main_siloctl(["-a", f"127.0.0.1:{port}", "job", "get", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach silo at 127.0.0.1:{port} (UNAVAILABLE)\n")
    assert "Traceback" not in err


# -- helpers ---------------------------------------------------------------------------------


def test_jsonable_and_leaf_exception():
    assert jsonable({1: b"\x00\xff", "t": (1, None)}) == {"1": {"base64": "AP8="}, "t": [1, None]}
    err = NotFound("gone")
    group = ExceptionGroup("outer", [ExceptionGroup("inner", [err])])
    assert leaf_exception(group) is err
    assert leaf_exception(ExceptionGroup("two", [ValueError("x"), err])) is err


def test_log_formats():
    record = logging.makeLogRecord({
        "name": "silo.worker", "levelno": logging.INFO, "levelname": "INFO",
        "msg": "job %s", "args": ("succeeded",), "job_id": "j 1", "attempt": 2,
    })
    text = TextFormatter().format(record)
    assert text.startswith("ts=") and text.endswith(
        ' level=info logger=silo.worker msg="job succeeded" job_id="j 1" attempt=2')
    data = json.loads(JsonFormatter().format(record))
    assert data["msg"] == "job succeeded" and data["job_id"] == "j 1" and data["attempt"] == 2
    assert data["level"] == "info" and data["ts"].endswith("Z")


def test_load_handler(tmp_path, monkeypatch):
    from examples.handlers import hello

    assert load_handler("examples.handlers:hello", cwd=str(REPO)) is hello
    (tmp_path / "my_tasks.py").write_text("class K:\n    async def run(ctx):\n        return 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert load_handler("my_tasks:K.run").__name__ == "run"  # cwd is importable
    for spec, message in [
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("my_tasks:missing", "has no attribute 'missing'"),
        ("my_tasks", "MODULE:FUNCTION"),
    ]:
        from silo.cli.common import CliError

        with pytest.raises(CliError, match=message) as exc:
            load_handler(spec)
        assert exc.value.exit_code == EXIT_USAGE


# -- end to end: the README quickstart through the console scripts ---------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def script(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{path} missing: run `.venv/bin/pip install -e '.[dev]'`"
    return str(path)


def run(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=_env())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SILO_ADDRESS", None)
    env.pop("SILO_TOKEN", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop(proc: subprocess.Popen[str], sig: int, timeout: float = 10) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"process did not exit within {timeout}s after {sig}:\n{err}")
    return proc.returncode, err


def test_quickstart_end_to_end(tmp_path):
    grpc = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [sys.executable, "-m", "silo", "serve", "--data-dir", str(tmp_path / "data"),
         "--grpc-addr", grpc, "--http-addr", f"127.0.0.1:{free_port()}", "--log-format", "json"],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    worker: subprocess.Popen[str] | None = None
    siloctl = [script("siloctl"), "-a", grpc]
    try:
        deadline = time.monotonic() + 20
        while True:
            info = run(*siloctl, "--json", "cluster", "info")
            if info.returncode == 0:
                break
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline, info.stderr
            time.sleep(0.2)
        cluster = json.loads(info.stdout)
        assert len(cluster["shards"]) == 8
        assert {s["owner_address"] for s in cluster["shards"]} == {grpc}
        assert "shard map version" in run(*siloctl, "cluster", "info").stdout

        enq = run(*siloctl, "job", "enqueue", "--task-group", "demo", "--payload",
                  '{"name":"ada"}', "--metadata", "source=test")
        assert enq.returncode == 0, enq.stderr
        job_id = enq.stdout.strip()
        assert len(job_id) == 32

        pending = run(*siloctl, "job", "result", job_id)
        assert pending.returncode == 3
        assert f"job {job_id} is not finished (status SCHEDULED)" in pending.stderr

        worker = subprocess.Popen(
            [script("silo"), "worker", "examples.handlers:hello", "--task-group", "demo",
             "-a", grpc],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        result = run(*siloctl, "job", "result", job_id, "--wait", "20", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {
            "id": job_id, "tenant": "default", "status": "SUCCEEDED", "finished": True,
            "result": {"greeting": "hello ada"},
        }
        assert run(*siloctl, "job", "result", job_id).stdout.strip() == (
            '{\n  "greeting": "hello ada"\n}')

        got = run(*siloctl, "job", "get", job_id, "--json", "--attempts")
        job = json.loads(got.stdout)
        assert job["status"] == "SUCCEEDED" and job["payload"] == {"name": "ada"}
        assert job["metadata"] == {"source": "test"} and job["tenant"] == "default"
        assert [a["state"] for a in job["attempts"]] == ["SUCCEEDED"]
        assert job["attempts"][0]["result"] == {"greeting": "hello ada"}
        assert job["attempts_total"] == 1
        human = run(*siloctl, "job", "get", job_id).stdout
        assert "SUCCEEDED" in human and '{"name": "ada"}' in human
        paged = run(*siloctl, "job", "get", job_id, "--attempts", "5").stdout
        assert "1 of 1 attempts" in paged

        # A scheduled job: --start-in, cancel, result reports CANCELLED (exit 4), delete.
        later = run(*siloctl, "--json", "job", "enqueue", "-g", "nobody", "--start-in", "3600",
                    "--tenant", "acme")
        later_id = json.loads(later.stdout)["id"]
        later_job = json.loads(run(*siloctl, "job", "get", later_id, "--tenant", "acme",
                                   "--json").stdout)
        assert later_job["start_at_ms"] - later_job["enqueued_at_ms"] >= 3_590_000
        cancel = run(*siloctl, "job", "cancel", later_id, "--tenant", "acme")
        assert cancel.returncode == 0 and "cancelled job" in cancel.stdout
        cancelled = run(*siloctl, "job", "result", later_id, "--tenant", "acme", "--json")
        assert cancelled.returncode == 4 and json.loads(cancelled.stdout)["status"] == "CANCELLED"
        assert run(*siloctl, "job", "delete", later_id, "--tenant", "acme").returncode == 0

        # Error paths: readable one-liners, no tracebacks.
        missing = run(*siloctl, "job", "get", later_id, "--tenant", "acme")
        assert missing.returncode == 1
        assert missing.stderr == (
            f"error: NOT_FOUND: job not found: '{later_id}' (tenant 'acme')\n")
        bad = run(*siloctl, "job", "enqueue", "-g", "demo", "--payload", "{name: ada}")
        assert bad.returncode == 2 and "not valid JSON" in bad.stderr
        assert "Traceback" not in bad.stderr
        port = free_port()
        down = run(script("siloctl"), "-a", f"127.0.0.1:{port}", "job", "get", job_id)
        assert down.returncode == 1
        assert f"error: cannot reach silo at 127.0.0.1:{port} (UNAVAILABLE)" in down.stderr
        assert "Traceback" not in down.stderr

        code, worker_log = stop(worker, signal.SIGINT)
        worker = None
        assert code == 0, worker_log
        assert f'msg="job succeeded" job_id={job_id} tenant=default attempt=1' in worker_log
        assert 'msg="worker stopped" completed=1 failed=0' in worker_log
    except BaseException:
        server.kill()
        server.communicate()
        raise
    finally:
        if worker is not None:
            worker.kill()
            worker.communicate()
    code, server_log = stop(server, signal.SIGTERM)
    assert code == 0, server_log
    lines = [json.loads(line) for line in server_log.splitlines()]
    messages = [line["msg"] for line in lines]
    assert "received SIGTERM; shutting down" in messages
    assert messages[-1] == "silo node node-1 stopped"
    assert all(line["level"] in ("debug", "info", "warning", "error") for line in lines)


# -- siloctl job get: undelivered attempts ---------------------------------------------------


def test_job_get_shows_undelivered_attempts() -> None:
    import io

    from silo.cli.ctl import Output, _print_job, job_dict
    from silo.client.types import Job
    from silo.model import Attempt, AttemptState, JobStatus, RetryPolicy

    attempts = (
        Attempt(1, "t-1", AttemptState.UNDELIVERED, "w1", 1_000, 31_000),
        Attempt(2, "t-2", AttemptState.SUCCEEDED, "w1", 31_000, 31_500, result=b"\xc0"),
    )
    job = Job(
        id="j", tenant="default", task_group="g", payload=None, priority=50,
        retry=RetryPolicy(), metadata={}, enqueued_at_ms=1_000, start_at_ms=0,
        status=JobStatus.SUCCEEDED, status_changed_at_ms=31_500, next_attempt_at_ms=None,
        attempt_count=2, cancel_requested=False, cancelled_at_ms=None, attempts=attempts,
        undelivered_count=1,
    )
    stream = io.StringIO()
    _print_job(Output(False, stream), job)
    text = stream.getvalue()
    assert "UNDELIVERED" in text
    assert "1 undelivered" in text
    assert "acknowledged" in text
    data = job_dict(job)
    assert data["undelivered_count"] == 1
    assert [a["state"] for a in data["attempts"]] == ["UNDELIVERED", "SUCCEEDED"]
