"""How often ``tokenize_tweet`` reproduces the Twitter-2015/2017 tokenisation.

Two measures per dataset and split (fraction of sentences whose token list is
reproduced exactly):

* ``joined``: the sentence's tokens joined by single spaces, re-tokenised.
  This only shows that the tokenizer never splits what the data keeps whole;
  plain ``str.split`` scores ~100 % here (printed as a baseline).
* ``raw-like``: the tokens first glued back into tweet-like text by a small
  de-tokeniser (punctuation attached to its word, ``I ' m`` -> ``I'm``, and in
  the 2017 data ``# tag`` -> ``#tag``, ``@ user`` -> ``@user``), then
  re-tokenised. This also tests splitting, as on real input; it is
  approximate, since the de-tokeniser cannot know the original spacing.

Each dataset is measured with its own style and with the default style, and the
style that training would infer from its train split is printed
(``bfcl.inference.tokenstyle.infer_style``, which also owns the measures).
Usage: python benchmarks/tokenizer_agreement.py [DATA_DIR] [--examples N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bfcl.inference.tokenize import DEFAULT_STYLE
from bfcl.inference.tokenstyle import agreement, infer_style

DATASETS = {"twitter2015": "twitter2015", "twitter2017": "twitter2017"}
SPLITS = ("train", "valid", "test")


def read_sentences(path: Path) -> list[list[str]]:
    """Token column of a UMT file (``IMGID:`` line, ``token<TAB>label`` lines,
    blank line between samples); independent of bfcl's reader on purpose."""
    sentences: list[list[str]] = []
    current: list[str] = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("IMGID:") or not line:
            if current:
                sentences.append(current)
            current = []
            continue
        current.append(line.split("\t")[0])
    if current:
        sentences.append(current)
    return sentences


def first_difference(gold: list[str], got: list[str]) -> str:
    i = next((k for k, (a, b) in enumerate(zip(gold, got)) if a != b), min(len(gold), len(got)))
    return f"gold {gold[max(0, i - 1) : i + 3]!r} got {got[max(0, i - 1) : i + 3]!r}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    parser.add_argument("data_dir", nargs="?", type=Path, default=default)
    parser.add_argument("--examples", type=int, default=3, help="mismatches to print per dataset and measure")
    args = parser.parse_args(argv)

    if not args.data_dir.is_dir():
        print(f"data directory not found: {args.data_dir}", file=sys.stderr)
        return 2
    print(f"data: {args.data_dir}")
    print(f"{'dataset':12} {'style':12} {'measure':9} " + " ".join(f"{s:>14}" for s in SPLITS) + f" {'all':>14}")
    for dataset, own_style in DATASETS.items():
        splits = {s: read_sentences(args.data_dir / dataset / f"{s}.txt") for s in SPLITS}
        inferred = infer_style(splits["train"])
        print(f"{dataset:12} inferred from train: {inferred.style} (splits: {inferred.decided})")
        styles = [own_style] + ([DEFAULT_STYLE] if DEFAULT_STYLE != own_style else []) + ["str.split"]
        for style in styles:
            for raw_like in (False, True):
                cells, mismatches, total = [], [], 0
                for split in SPLITS:
                    baseline = style == "str.split"
                    score, bad = agreement(splits[split], own_style if baseline else style, raw_like, baseline)
                    cells.append(f"{score:7.2%} ({len(splits[split]):4d})")
                    mismatches += bad
                    total += len(splits[split])
                cells.append(f"{1 - len(mismatches) / total:7.2%} ({total:4d})")
                measure = "raw-like" if raw_like else "joined"
                print(f"{dataset:12} {style:12} {measure:9} " + " ".join(f"{c:>14}" for c in cells))
                if style == own_style:
                    for text, gold, got in mismatches[: args.examples]:
                        print(f"    e.g. {text!r}\n         {first_difference(gold, got)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
