"""The job log of the peers benchmark and its exactly-once check.

Every benchmark handler (silo's and pgqueuer's alike) appends one line per run to one shared
log file: ``<job id> <handler start, Unix seconds>\\n``, written with a single ``write`` on a
file opened with ``O_APPEND``, so lines from several worker processes never interleave.
:func:`check_job_log` compares the log with the ids the benchmark enqueued.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

JOB_LOG_ENV = "SILO_BENCH_JOB_LOG"
"""The environment variable that tells a worker process where the job log is."""

_fd: int | None = None


def append_run(job_id: str, started_s: float) -> None:
    """Append one run of ``job_id`` to the log named by ``$SILO_BENCH_JOB_LOG``."""
    global _fd
    if _fd is None:
        _fd = os.open(os.environ[JOB_LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, format_line(job_id, started_s))


def format_line(job_id: str, started_s: float) -> bytes:
    if not job_id or any(c.isspace() for c in job_id):
        raise ValueError(f"job id must be non-empty without white space, got {job_id!r}")
    return f"{job_id} {started_s:.6f}\n".encode()


@dataclass(frozen=True)
class JobLogCheck:
    """What the log says about the expected jobs."""

    expected: int
    runs: int
    """Well-formed lines in the log."""
    distinct: int
    duplicated: int
    """Expected jobs that ran more than once."""
    missing: int
    """Expected jobs that never ran."""
    unexpected: int
    """Lines for ids that were not expected."""
    malformed: int
    first_start_s: float | None
    last_start_s: float | None

    @property
    def exactly_once(self) -> bool:
        return (self.runs == self.expected and not self.duplicated and not self.missing
                and not self.unexpected and not self.malformed)

    def describe(self) -> str:
        return (f"{self.runs} runs of {self.expected} jobs: {self.distinct} distinct, "
                f"{self.duplicated} more than once, {self.missing} missing, "
                f"{self.unexpected} unexpected, {self.malformed} malformed lines")


def check_job_log(lines: Iterable[str], expected_ids: Iterable[str]) -> JobLogCheck:
    """Check that every expected id ran exactly once and nothing else ran."""
    expected = set(expected_ids)
    counts: Counter[str] = Counter()
    malformed = 0
    first: float | None = None
    last: float | None = None
    runs = 0
    for line in lines:
        parts = line.split()
        if len(parts) != 2:
            malformed += 1
            continue
        try:
            started = float(parts[1])
        except ValueError:
            malformed += 1
            continue
        runs += 1
        counts[parts[0]] += 1
        first = started if first is None else min(first, started)
        last = started if last is None else max(last, started)
    return JobLogCheck(
        expected=len(expected),
        runs=runs,
        distinct=len(counts),
        duplicated=sum(1 for job_id, n in counts.items() if n > 1 and job_id in expected),
        missing=sum(1 for job_id in expected if job_id not in counts),
        unexpected=sum(n for job_id, n in counts.items() if job_id not in expected),
        malformed=malformed,
        first_start_s=first,
        last_start_s=last,
    )


def read_job_log(path: str, expected_ids: Iterable[str]) -> JobLogCheck:
    """:func:`check_job_log` on the file at ``path`` (an absent file is an empty log)."""
    try:
        with open(path, errors="replace") as f:
            return check_job_log(f, expected_ids)
    except FileNotFoundError:
        return check_job_log([], expected_ids)
