"""The job log's exactly-once check (silo/bench/joblog.py)."""

from __future__ import annotations

import pytest

from silo.bench import joblog
from silo.bench.joblog import check_job_log, format_line, read_job_log


def lines(*runs: tuple[str, float]) -> list[str]:
    return [format_line(job_id, t).decode() for job_id, t in runs]


def test_every_job_once_is_exactly_once() -> None:
    check = check_job_log(lines(("a", 2.0), ("b", 1.5), ("c", 3.25)), ["a", "b", "c"])
    assert check.exactly_once
    assert (check.runs, check.distinct, check.first_start_s, check.last_start_s) == (
        3, 3, 1.5, 3.25)


def test_a_job_run_twice_is_caught() -> None:
    check = check_job_log(lines(("a", 1), ("b", 2), ("a", 3)), ["a", "b"])
    assert not check.exactly_once
    assert (check.duplicated, check.missing, check.runs) == (1, 0, 3)


def test_a_job_never_run_is_caught() -> None:
    check = check_job_log(lines(("a", 1)), ["a", "b"])
    assert not check.exactly_once
    assert check.missing == 1


def test_a_run_of_a_job_not_enqueued_is_caught() -> None:
    check = check_job_log(lines(("a", 1), ("zz", 2)), ["a"])
    assert not check.exactly_once
    assert check.unexpected == 1


def test_a_torn_or_garbled_line_is_caught() -> None:
    check = check_job_log([*lines(("a", 1)), "b\n", "c notatime\n"], ["a"])
    assert not check.exactly_once
    assert check.malformed == 2


def test_an_absent_log_means_nothing_ran(tmp_path) -> None:
    check = read_job_log(str(tmp_path / "none.log"), ["a"])
    assert (check.runs, check.missing, check.first_start_s) == (0, 1, None)
    assert "1 missing" in check.describe()


def test_ids_with_white_space_are_refused() -> None:
    with pytest.raises(ValueError):
        format_line("a b", 1.0)


def test_append_run_appends_one_line_per_run(tmp_path, monkeypatch) -> None:
    path = tmp_path / "jobs.log"
    monkeypatch.setenv(joblog.JOB_LOG_ENV, str(path))
    monkeypatch.setattr(joblog, "_fd", None)
    try:
        joblog.append_run("j1", 10.5)
        joblog.append_run("j2", 11.0)
    finally:
        if joblog._fd is not None:
            import os

            os.close(joblog._fd)
    assert path.read_text() == "j1 10.500000\nj2 11.000000\n"
    assert read_job_log(str(path), ["j1", "j2"]).exactly_once
