"""``python -m silo.bench plot``: the peers ratios over commits as a small PNG.

One point per record of the results file, in file order, labelled with the commit's first 8
hex digits (``*`` when the tree was dirty): silo/pgqueuer for single, bulk and processing, and
silo's single enqueue over the derived ceiling. A dashed line marks 1.0.
"""

from __future__ import annotations

from typing import Any

from silo.bench.peers_report import RATIO_KEYS

SERIES_LABELS = {
    "single": "single enqueue, silo/pgqueuer",
    "bulk": "bulk enqueue, silo/pgqueuer",
    "processing": "processing, silo/pgqueuer",
    "ceiling": "silo single / derived ceiling",
}


def ratio_series(records: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[float | None]]]:
    """(x labels, series name -> one value per record) for :func:`plot_ratios`."""
    labels = [f"{r.get('commit', '?')[:8]}{'*' if r.get('dirty') else ''}" for r in records]
    series: dict[str, list[float | None]] = {k: [] for k in (*RATIO_KEYS, "ceiling")}
    for r in records:
        ratios = r.get("ratios", {})
        for key in RATIO_KEYS:
            series[key].append(ratios.get("silo_over_pgqueuer", {}).get(key))
        series["ceiling"].append(ratios.get("single_over_ceiling", {}).get("silo"))
    return labels, series


def plot_ratios(records: list[dict[str, Any]], out_path: str) -> None:
    """Draw the PNG (needs matplotlib: the ``bench`` extra)."""
    if not records:
        raise ValueError("no peers records to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, series = ratio_series(records)
    xs = list(range(len(records)))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(xs) + 2.5), 3.2), dpi=100)
    for key, values in series.items():
        points = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                    label=SERIES_LABELS[key])
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("ratio")
    ax.set_ylim(bottom=0)
    ax.set_title("silo vs pgqueuer (medians per run)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
