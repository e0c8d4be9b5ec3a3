"""The bare grpclib echo that gives the peers benchmark its transport ceiling
(silo/transport/echo.py), over real loopback TCP in a child process."""

from __future__ import annotations

import sys

import pytest

from silo.bench.procs import child_env, free_port, spawn, stop_process
from silo.transport.echo import measure_echo


def test_echo_answers_sequential_and_concurrent_calls(tmp_path) -> None:
    port = free_port()
    server = spawn([sys.executable, "-m", "silo.transport.echo", "--port", str(port)],
                   str(tmp_path / "echo.log"), env=child_env())
    try:
        one = measure_echo("127.0.0.1", port, calls=20, in_flight=1, warmup_calls=2)
        many = measure_echo("127.0.0.1", port, calls=30, in_flight=4, warmup_calls=0)
    finally:
        code = stop_process(server, timeout_s=10)
    assert (one.calls, one.in_flight, many.calls) == (20, 1, 30)
    assert one.seconds_per_call == pytest.approx(one.elapsed_s / 20)
    assert one.calls_per_s > 0 and many.calls_per_s > 0
    assert code == 0  # SIGTERM stops the server cleanly
