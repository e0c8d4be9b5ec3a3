"""The peers benchmark's record: medians, ratios, the printed table and the JSON lines file.

A run becomes one *record* (a JSON-serialisable dict, :func:`build_record`); the table
(:func:`format_table`), the results file (:func:`append_record`, one record per line) and the
plot over commits (:mod:`silo.bench.plot`) all read that record, so what is printed is what is
stored.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from silo.bench.ceilings import Ceilings, derived_ceiling
from silo.bench.rounds import LIBRARIES, METRICS, RoundResult

RECORD_KIND = "silo.bench.peers"
RECORD_VERSION = 1
RATIO_KEYS = ("single", "bulk", "processing")


def median_or_none(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None (None if there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def build_record(*, config: dict[str, Any], rounds: Sequence[RoundResult],
                 ceilings: Sequence[Ceilings], versions: dict[str, str], commit: str,
                 dirty: bool, time_utc: str) -> dict[str, Any]:
    """The record of one run: per-round figures, their medians, and the ratios of the medians
    (silo / pgqueuer per workload; single enqueue / derived ceiling per library)."""
    median: dict[str, dict[str, float | None]] = {}
    exactly_once: dict[str, bool] = {}
    for lib in LIBRARIES:
        mine = [r for r in rounds if r.library == lib]
        median[lib] = {m: median_or_none(getattr(r, m) for r in mine) for m in METRICS}
        exactly_once[lib] = bool(mine) and all(r.exactly_once for r in mine)
    echo_s = median_or_none(c.echo_s for c in ceilings)
    sync_s = median_or_none(c.sync_write_s for c in ceilings)
    median["ceilings"] = {
        "echo_sequential_per_s": median_or_none(c.echo_sequential_per_s for c in ceilings),
        "echo_in_flight_per_s": median_or_none(c.echo_in_flight_per_s for c in ceilings),
        "echo_ms": echo_s * 1000 if echo_s is not None else None,
        "sync_write_ms": sync_s * 1000 if sync_s is not None else None,
        "sync_write_p99_ms": _ms(median_or_none(c.sync_write_p99_s for c in ceilings)),
        "durable_call_per_s": (derived_ceiling(echo_s, sync_s)
                               if echo_s is not None and sync_s is not None else None),
    }
    ceiling = median["ceilings"]["durable_call_per_s"]
    ratios = {
        "silo_over_pgqueuer": {
            key: ratio(median["silo"][f"{key}_per_s"], median["pgqueuer"][f"{key}_per_s"])
            for key in RATIO_KEYS
        },
        "single_over_ceiling": {
            lib: ratio(median[lib]["single_per_s"], ceiling) for lib in LIBRARIES
        },
    }
    return {
        "kind": RECORD_KIND,
        "version": RECORD_VERSION,
        "time_utc": time_utc,
        "commit": commit,
        "dirty": dirty,
        "config": dict(config),
        "versions": dict(versions),
        "median": median,
        "ratios": ratios,
        "exactly_once": exactly_once,
        "rounds": [asdict(r) for r in rounds],
        "ceiling_rounds": [asdict(c) for c in ceilings],
    }


def _ms(seconds: float | None) -> float | None:
    return seconds * 1000 if seconds is not None else None


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def _rows_text(rows: list[tuple[str, ...]], right_from: int = 1) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [c.ljust(w) if i < right_from else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    return out


def format_table(record: dict[str, Any]) -> str:
    """The human-readable table of a record (medians of the rounds, then the ratios and the
    ceilings)."""
    cfg = record["config"]
    med = record["median"]
    ratios = record["ratios"]
    versions = record.get("versions", {})
    once = record["exactly_once"]
    header = (f"peers: {cfg['jobs']:,} no-op jobs per workload, medians of {cfg['rounds']} "
              f"round(s); bulk batches of {cfg['batch']}; {cfg['workers']} worker processes; "
              f"commit {record['commit'][:12]}{' (dirty)' if record['dirty'] else ''}")
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    rows: list[tuple[str, ...]] = [("jobs/s", "pgqueuer", "silo", "silo/pgqueuer")]
    labels = {
        "single": "(a) single enqueue, sequential",
        "bulk": f"(b) bulk enqueue, batches of {cfg['batch']}",
        "processing": f"(c) processing, {cfg['workers']} CLI workers",
    }
    for key in RATIO_KEYS:
        rows.append((labels[key], fmt_rate(med["pgqueuer"][f"{key}_per_s"]),
                     fmt_rate(med["silo"][f"{key}_per_s"]),
                     fmt_ratio(ratios["silo_over_pgqueuer"][key])))
    rows.append(("exactly once (every round)", "yes" if once["pgqueuer"] else "NO",
                 "yes" if once["silo"] else "NO", ""))
    rows.append(("single / derived ceiling", fmt_ratio(ratios["single_over_ceiling"]["pgqueuer"]),
                 fmt_ratio(ratios["single_over_ceiling"]["silo"]), ""))
    c = med["ceilings"]
    ceiling_rows: list[tuple[str, ...]] = [
        ("ceilings (medians)", "value"),
        ("bare grpclib echo, sequential calls/s", fmt_rate(c["echo_sequential_per_s"])),
        ("bare grpclib echo, 64 in flight calls/s", fmt_rate(c["echo_in_flight_per_s"])),
        ("t_echo: one sequential echo round trip", fmt_ms(c["echo_ms"])),
        ("t_sync: 4 KiB append + fdatasync (mean)", fmt_ms(c["sync_write_ms"])),
        ("4 KiB append + fdatasync (p99)", fmt_ms(c["sync_write_p99_ms"])),
        ("derived ceiling 1/(t_echo + t_sync) calls/s", fmt_rate(c["durable_call_per_s"])),
    ]
    lines = [header]
    if vers:
        lines.append(vers)
    lines.append("")
    lines += _rows_text(rows)
    lines.append("")
    lines += _rows_text(ceiling_rows)
    failed = [r for r in record["rounds"] if not r["exactly_once"]]
    for r in failed:
        lines.append(f"NOT exactly once: {r['library']} round {r['round_no']}: {r['detail']}")
    return "\n".join(lines)


def append_record(path: str, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``path`` (created if absent)."""
    line = json.dumps(record, sort_keys=True, separators=(",", ":"))
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def read_records(path: str) -> list[dict[str, Any]]:
    """Every peers record in a JSON lines file, in file order; lines that are not JSON objects
    of this kind are skipped (a results file may be shared with other tools)."""
    out: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and obj.get("kind") == RECORD_KIND:
                out.append(obj)
    return out
