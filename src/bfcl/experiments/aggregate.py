"""Mean ± std over seeds, and the report: a JSON file and a Markdown table laid out like the
paper's, with the paper's figures beside the measured ones.

Scores are the test split's entity-level micro P/R/F1 (and per-type F1) of the model that
``bfcl train`` selected on dev F1, in %. The spread is the sample standard deviation (n − 1)
over the seeds that finished; with one seed there is none, and n says so.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bfcl.experiments.registry import (
    DATASET_TITLES,
    DATASETS,
    FIG6_NOT_GIVEN,
    FIG6_TEXT,
    TYPES,
    Experiment,
    paper_f1_mismatch,
)

METRICS: tuple[str, ...] = ("P", "R", "F1")
_FROM_RESULT = {"P": "precision", "R": "recall", "F1": "f1"}


def summarize(values: list[float]) -> dict[str, Any]:
    """``{"mean", "std", "n", "values"}``; std is the sample standard deviation (n − 1), None for n < 2."""
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": list(values)}


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 4)


def run_scores(record: dict[str, Any]) -> dict[str, Any]:
    """One run's test P/R/F1 and per-type F1 (%), and its dev F1 (%)."""
    test = record.get("test") or {}
    dev = record.get("dev") or {}
    scores: dict[str, Any] = {m: _pct(test.get(_FROM_RESULT[m])) for m in METRICS}
    per_type = test.get("per_type") or {}
    for t in TYPES:
        scores[t] = _pct((per_type.get(t) or {}).get("f1")) if per_type else None
    scores["dev F1"] = _pct(dev.get("f1"))
    return scores


def build_report(
    experiment: Experiment,
    results: dict[str, list[dict[str, Any]]],
    *,
    statuses: dict[str, dict[str, Any]],
    paper_dataset: str | None,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The JSON report. ``results``: row key -> its finished runs' records; ``statuses``: row key ->
    ``{"selected", "skip_reason", "failures"}`` from the runner's plan."""
    rows = []
    for row in experiment.rows:
        records = sorted(results.get(row.key, []), key=lambda r: r.get("seed", 0))
        per_run = [{"seed": r.get("seed"), **run_scores(r), "best_epoch": r.get("best_epoch"),
                    "epochs": r.get("epochs"), "reused_from": r.get("reused_from")} for r in records]  # fmt: skip
        measured = {}
        for key in (*METRICS, *TYPES, "dev F1"):
            values = [r[key] for r in per_run if r.get(key) is not None]
            measured[key] = summarize(values)
        info = statuses.get(row.key, {})
        failures = info.get("failures") or []
        if records:
            status = "done"
        elif info.get("skip_reason"):
            status = "skipped"
        elif failures:
            status = "failed"
        elif not info.get("selected", True):
            status = "not run (not selected)"
        else:
            status = "not run"
        paper = row.paper or {}
        mismatch = {ds: m for ds in paper if (m := paper_f1_mismatch(paper[ds])) is not None}
        rows.append({
            "name": row.name, "key": row.key, "overrides": list(row.overrides), "note": row.note,
            "status": status, "skip_reason": info.get("skip_reason"), "failures": failures,
            "n": len(records), "seeds": [r.get("seed") for r in records], "runs": per_run,
            "test": {k: measured[k] for k in (*METRICS, *TYPES)}, "dev": {"F1": measured["dev F1"]},
            "paper": paper or None, "paper_row": row.paper_row or (row.name if paper else None),
            "paper_f1_from_p_r": mismatch or None, "x": row.x, "series": list(row.series),
        })  # fmt: skip
    report = {
        "experiment": experiment.name, "title": experiment.title, "source": experiment.source,
        "kind": experiment.kind, "paper_dataset": paper_dataset,
        "metric": "test split, entity-level micro precision/recall/F1 and per-type F1 (%) of the model selected "
                  "on dev F1; mean and sample standard deviation (n - 1) over the seeds that finished",
        "note": experiment.note, "generated": time.strftime("%Y-%m-%d %H:%M:%S"), **meta, "rows": rows,
    }  # fmt: skip
    if experiment.kind == "figure":
        report["paper_figures"] = FIG6_NOT_GIVEN
        report["paper_text"] = FIG6_TEXT.get(experiment.name)
        report["paper_references"] = list(experiment.references)
    return report


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def _fmt(stat: dict[str, Any]) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    if stat.get("std") is None:
        return f"{stat['mean']:.2f}"
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _status_note(row: dict[str, Any]) -> str:
    if row["status"] == "skipped":
        return f"skipped: {row['skip_reason']}"
    if row["status"] == "failed":
        return f"failed: {row['failures'][-1].get('reason', '')}"
    if row["status"].startswith("not run"):
        return row["status"]
    parts = []
    if row["failures"]:
        parts.append(f"{len(row['failures'])} seed(s) failed")
    return "; ".join(parts)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a header saying what was measured, then the table."""
    ds = report.get("paper_dataset")
    lines = [f"## {report['experiment']}: {report['title']} (paper: {report['source']})", ""]
    images = report.get("images") or "none (every image masked)"
    lines.append(f"- Data: `{report.get('data')}`; images: `{images}`")
    seeds = report.get("seeds") or []
    lines.append(f"- Seeds: {', '.join(map(str, seeds))}; base config: {report.get('base_config')}"
                 + (f"; `--set {' '.join(report['sets'])}`" if report.get("sets") else "")
                 + ("; **quick run** (1 epoch, first 100 training posts): a smoke test, not a result"
                    if report.get("quick") else ""))  # fmt: skip
    lines.append("- Measured: test split, entity-level micro P/R/F1 (%), model selected on dev F1; "
                 "mean ± sample std (n − 1) over n seeds.")  # fmt: skip
    if report["kind"] == "figure":
        lines.append(f"- Paper ({DATASET_TITLES.get(report.get('paper_dataset') or 'twitter2015', '')}): "
                     f"{report['paper_figures']}. {report.get('paper_text') or ''}")  # fmt: skip
    elif ds:
        lines.append(f"- Paper: {report['source']}, {DATASET_TITLES[ds]} (as printed).")
    else:
        lines.append(f"- Paper: {report['source']}, F1 on both of its datasets (this data is neither, so no "
                     "difference is computed).")  # fmt: skip
    if report.get("note"):
        lines.append(f"- {report['note']}")
    lines.append("")
    lines += _figure_table(report) if report["kind"] == "figure" else _table(report)
    foot = []
    for row in report["rows"]:
        for d, implied in (row.get("paper_f1_from_p_r") or {}).items():
            if ds in (None, d):
                foot.append(f"- {row['name']}, {DATASET_TITLES[d]}: the paper's P and R give F1 {implied:.2f}, "
                            f"not the printed {row['paper'][d]['F1']:.2f}.")  # fmt: skip
    if foot:
        lines += ["", "Paper inconsistencies (figures kept as printed):", *foot]
    return "\n".join(lines) + "\n"


def _table(report: dict[str, Any]) -> list[str]:
    ds = report.get("paper_dataset")
    per_type = report["experiment"] == "table2"
    head = ["Model"] + (list(TYPES) if per_type else []) + ["P", "R", "F1", "n"]
    if ds:
        head += ["paper P", "paper R", "paper F1", "F1 − paper"]
    else:
        head += [f"paper F1 {DATASET_TITLES[d]}" for d in DATASETS]
    head += ["note"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for row in report["rows"]:
        test = row["test"]
        cells = [row["name"]] + ([_fmt(test[t]) for t in TYPES] if per_type else [])
        cells += [_fmt(test[m]) for m in METRICS] + [str(row["n"])]
        paper = row.get("paper") or {}
        if ds:
            p = paper.get(ds) or {}
            mean = test["F1"].get("mean")
            delta = f"{mean - p['F1']:+.2f}" if mean is not None and "F1" in p else "—"
            cells += [_num(p.get("P")), _num(p.get("R")), _num(p.get("F1")), delta]
        else:
            cells += [_num((paper.get(d) or {}).get("F1")) for d in DATASETS]
        note = "; ".join(x for x in (_status_note(row), row["note"],
                                      f"paper row: {row['paper_row']}" if row.get("paper_row") not in (None, row["name"]) else "")
                         if x)  # fmt: skip
        cells.append(_escape(note))
        out.append("| " + " | ".join(cells) + " |")
    return out


def _figure_table(report: dict[str, Any]) -> list[str]:
    head = ["Point", "x", "P", "R", "F1", "n", "dev F1", "paper F1", "note"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for row in report["rows"]:
        test = row["test"]
        x = "—" if row["x"] is None else (f"{row['x']:g}")
        cells = [row["name"], x, *(_fmt(test[m]) for m in METRICS), str(row["n"]), _fmt(row["dev"]["F1"]),
                 "not given", _escape("; ".join(t for t in (_status_note(row), row["note"]) if t))]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return out


def collect_results(
    out: Path, experiment: Experiment, seeds: list[int], fingerprints: dict[str, str | None]
) -> dict[str, list[dict[str, Any]]]:
    """The finished runs of ``experiment``'s rows in ``out/runs`` for ``seeds``, made with the
    row's current settings (``fingerprints``: row key -> settings fingerprint)."""
    import json

    found: dict[str, list[dict[str, Any]]] = {}
    for row in experiment.rows:
        for path in sorted((out / "runs").glob(f"{row.key}-seed*.json")):
            if path.name.endswith(".failed.json"):
                continue
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if (
                isinstance(record, dict) and record.get("row_key") == row.key and record.get("seed") in seeds
                and record.get("settings_sha256") == fingerprints.get(row.key)
            ):
                found.setdefault(row.key, []).append(record)
    return found
