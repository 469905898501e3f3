"""Fig. 6 in the paper's form: test F1 against the number of bottlenecks (a, log2 x axis) and
against the number of fusion layers for early and mid fusion (b), with error bars of one sample
standard deviation over seeds.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global state).
The paper gives Fig. 6 only as a picture, so no paper curve is drawn; where a point of the plot
has a number elsewhere in the paper (the final model, mid fusion with L = 8, is Table 2's BFCL),
it is drawn as a dashed line, labelled with its source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bfcl.experiments.registry import DATASET_TITLES

SERIES_STYLE = {"bottleneck": ("tab:blue", "o"), "early": ("tab:orange", "s"), "mid": ("tab:blue", "o")}


def _points(report: dict[str, Any], series: str) -> tuple[list[float], list[float], list[float]]:
    pts = []
    for row in report["rows"]:
        f1 = row["test"]["F1"]
        if series in row["series"] and row["x"] is not None and f1.get("mean") is not None:
            pts.append((row["x"], f1["mean"], f1["std"] or 0.0))
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def plot_figure(report: dict[str, Any], path: str | Path) -> Path | None:
    """Write the figure of a Fig. 6 report as a PNG; None (nothing written) when no point has finished."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("the Fig. 6 plots need matplotlib: pip install 'bfcl[explain]' (or matplotlib)") from e

    series = sorted({s for row in report["rows"] for s in row["series"]}, key=["bottleneck", "early", "mid"].index)
    if not any(_points(report, s)[0] for s in series):
        return None
    fig = Figure(figsize=(6.0, 4.2), dpi=120)
    ax = fig.add_subplot()
    for s in series:
        xs, ys, es = _points(report, s)
        if not xs:
            continue
        color, marker = SERIES_STYLE.get(s, ("tab:green", "^"))
        label = {"bottleneck": "BFCL (measured)", "early": "Early Fusion", "mid": "Mid Fusion"}.get(s, s)
        ax.errorbar(xs, ys, yerr=es, color=color, marker=marker, capsize=3, linewidth=1.5, label=label)
    ds = report.get("paper_dataset")
    for ref in report.get("paper_references") or []:
        if ds and ds in ref:
            ax.axhline(ref[ds], color="gray", linestyle="--", linewidth=1,
                       label=f"{ref['label']}: {ref[ds]:.2f}")  # fmt: skip
    if report["experiment"] == "fig6a":
        ax.set_xscale("log", base=2)
        ticks = sorted({row["x"] for row in report["rows"] if row["x"] is not None})
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.set_xlabel("number of bottlenecks |B| (L = 6)")
    else:
        ticks = sorted({row["x"] for row in report["rows"] if row["x"] is not None})
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.set_xlabel("number of fusion layers L (|B| = 4)")
    ax.set_ylabel("test F1 (%)")
    data = Path(str(report.get("data") or "")).name or "data"
    seeds = len(report.get("seeds") or [])
    ax.set_title(f"{report['source']}: {data}, mean ± std over {seeds} seed(s)", fontsize=10)
    ax.grid(True, alpha=0.3)
    where = f" ({DATASET_TITLES[ds]})" if ds else ""
    ax.text(0.01, 0.01, f"paper{where}: Fig. 6 not given numerically", transform=ax.transAxes, fontsize=7,
            color="gray", va="bottom")  # fmt: skip
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
