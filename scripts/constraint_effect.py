"""Dev and test F1 of one trained checkpoint decoded with and without BIO constraints, plus its
span confusion on test: the figures behind "valid BIO by default" and the error analysis in
docs/RESULTS.md.

    python scripts/constraint_effect.py runs/accurate-bfcl-twitter2017/best ../shared/data/twitter2017 \
        --out results/decoding/twitter2017-mpnet-bfcl.json [--images DIR]

The checkpoint is scored as it is; nothing is retrained. "constrained" is the library's default
(``model.constrained_decoding: true``), "as trained" the plain Viterbi of a model trained without
constraints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bfcl.confusion import span_confusion
from bfcl.data.labels import check_bio2
from bfcl.data.splits import read_split, resolve_split_files
from bfcl.inference.predictor import Predictor
from bfcl.metrics import entity_scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--images", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    predictor = Predictor.load(args.model, feature_cache=None)
    files = resolve_split_files(args.data_dir)
    record: dict = {"model": str(args.model), "data": str(args.data_dir)}
    for split in ("dev", "test"):
        samples = read_split(files[split], map_other=True, split=split)
        gold = [s.labels for s in samples]
        for name, flag in (("constrained", True), ("as_trained", False)):
            predictor.config.constrained_decoding = flag
            preds = predictor.label_samples(samples, images_dir=args.images)
            scores = entity_scores(gold, preds, mode="conlleval")
            scores["invalid_bio_posts"] = sum(bool(check_bio2(p)) for p in preds)
            record.setdefault(split, {})[name] = scores
            if split == "test" and flag:
                conf = span_confusion(gold, preds, [s.tokens for s in samples], max_examples=8)
                record["test_confusion"] = {**conf.to_dict(), "table": conf.table()}
            print(f"{split:4s} {name:11s} F1 {100 * scores['f1']:.2f}  P {100 * scores['precision']:.2f}  "
                  f"R {100 * scores['recall']:.2f}  posts with invalid BIO: {scores['invalid_bio_posts']}")
    print(record["test_confusion"]["table"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
