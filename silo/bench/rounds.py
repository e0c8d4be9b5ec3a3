"""What one round of the peers benchmark measures, and the bounds every phase runs under."""

from __future__ import annotations

from dataclasses import dataclass

LIBRARIES = ("pgqueuer", "silo")
METRICS = ("single_per_s", "bulk_per_s", "processing_per_s")


def phase_timeout_s(jobs: int) -> float:
    """How long one phase over ``jobs`` jobs may take before the benchmark gives up: 60 s plus
    20 ms per job (50 jobs/s, far below either library)."""
    return 60.0 + 0.02 * jobs


@dataclass(frozen=True)
class RoundResult:
    """One library's figures in one round. Rates are jobs per second; ``processing_per_s`` is
    None when the round could not time the processing phase (nothing ran)."""

    library: str
    round_no: int
    jobs: int
    single_per_s: float
    bulk_per_s: float
    processing_per_s: float | None
    exactly_once: bool
    detail: str
