"""Markdown table of the runs in results/*.json beside the paper's Table 2 (for docs/RESULTS.md).

    python scripts/results_table.py [results_dir]
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

# Wang et al. 2023, Table 2 (BERT-base-cased text encoder; BFCL with ResNet-152 and real images)
PAPER = {
    ("twitter2015", "BERT-CRF (paper)"): dict(PER=84.74, LOC=80.51, ORG=60.27, MISC=37.29, P=69.22, R=74.59, F1=71.81),
    ("twitter2015", "BFCL (paper)"): dict(PER=85.60, LOC=81.77, ORG=63.81, MISC=40.30, P=74.02, R=75.07, F1=74.54),
    ("twitter2017", "BERT-CRF (paper)"): dict(PER=90.25, LOC=83.05, ORG=81.13, MISC=62.21, P=83.32, R=83.57, F1=83.44),
    ("twitter2017", "BFCL (paper)"): dict(PER=91.17, LOC=86.43, ORG=83.97, MISC=66.67, P=85.99, R=85.42, F1=85.70),
}
TYPES = ("PER", "LOC", "ORG", "MISC")


def cell(values: list[float]) -> str:
    """One value, or mean ± sample std over seeds."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def row(name: str, scores: list[dict], extra: str = "") -> str:
    cells = [cell([s[k] for s in scores]) for k in TYPES + ("P", "R", "F1")]
    return f"| {name} | " + " | ".join(cells) + f" | {extra} |"


def from_run(split: dict) -> dict:
    d = {t: 100 * split["per_type"].get(t, {}).get("f1", 0.0) for t in TYPES}
    d.update(P=100 * split["precision"], R=100 * split["recall"], F1=100 * split["f1"])
    return d


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    runs = [json.loads(p.read_text()) for p in sorted(root.glob("*.json"))]
    for ds in ("twitter2015", "twitter2017"):
        print(f"\n### {ds}: test (dev F1 in the last column; mean ± std where there are 2+ seeds)\n")
        print("| model | PER | LOC | ORG | MISC | P | R | F1 | seeds; dev F1; best epoch of N; train time |")
        print("|---|---|---|---|---|---|---|---|---|")
        for (d, name), s in PAPER.items():
            if d == ds:
                print(row(name, [s], "paper, 3-seed mean"))
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in runs:
            if r["dataset"] == ds and r.get("test"):
                groups[r["model"]].append(r)
        for name, rs in sorted(groups.items()):
            rs.sort(key=lambda r: r["seed"])
            seeds = ",".join(str(r["seed"]) for r in rs)
            dev = cell([100 * r["dev"]["f1"] for r in rs])
            epochs = "/".join(str(r.get("best_epoch")) for r in rs)
            minutes = statistics.mean(r["train_seconds"] for r in rs) / 60
            extra = f"{seeds}; {dev}; {epochs} of {rs[0]['epochs']}; {minutes:.0f} min"
            print(row(name, [from_run(r["test"]) for r in rs], extra))


if __name__ == "__main__":
    main()
