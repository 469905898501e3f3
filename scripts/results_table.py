"""Markdown table of the runs in results/*.json beside the paper's Table 2 (for docs/RESULTS.md).

    python scripts/results_table.py [results_dir]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Wang et al. 2023, Table 2 (BERT-base-cased text encoder; BFCL with ResNet-152 and real images)
PAPER = {
    ("twitter2015", "BERT-CRF (paper)"): dict(PER=84.74, LOC=80.51, ORG=60.27, MISC=37.29, P=69.22, R=74.59, F1=71.81),
    ("twitter2015", "BFCL (paper)"): dict(PER=85.60, LOC=81.77, ORG=63.81, MISC=40.30, P=74.02, R=75.07, F1=74.54),
    ("twitter2017", "BERT-CRF (paper)"): dict(PER=90.25, LOC=83.05, ORG=81.13, MISC=62.21, P=83.32, R=83.57, F1=83.44),
    ("twitter2017", "BFCL (paper)"): dict(PER=91.17, LOC=86.43, ORG=83.97, MISC=66.67, P=85.99, R=85.42, F1=85.70),
}
TYPES = ("PER", "LOC", "ORG", "MISC")


def row(name: str, s: dict, extra: str = "") -> str:
    cells = [f"{s[t]:.2f}" for t in TYPES] + [f"{s[k]:.2f}" for k in ("P", "R", "F1")]
    return f"| {name} | " + " | ".join(cells) + f" | {extra} |"


def from_run(split: dict) -> dict:
    d = {t: 100 * split["per_type"].get(t, {}).get("f1", 0.0) for t in TYPES}
    d.update(P=100 * split["precision"], R=100 * split["recall"], F1=100 * split["f1"])
    return d


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    runs = [json.loads(p.read_text()) for p in sorted(root.glob("*.json"))]
    for ds in ("twitter2015", "twitter2017"):
        print(f"\n### {ds}: test (dev F1 in the last column)\n")
        print("| model | PER | LOC | ORG | MISC | P | R | F1 | dev F1, epochs, train time |")
        print("|---|---|---|---|---|---|---|---|---|")
        for (d, name), s in PAPER.items():
            if d == ds:
                print(row(name, s, "paper, 3-seed mean"))
        for r in runs:
            if r["dataset"] != ds or not r.get("test"):
                continue
            extra = f"{100 * r['dev']['f1']:.2f}, best of {r['epochs']} (epoch {r.get('best_epoch')}), {r['train_seconds'] / 60:.0f} min"
            print(row(r["model"], from_run(r["test"]), extra))


if __name__ == "__main__":
    main()
