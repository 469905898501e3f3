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

Each dataset is measured with its own style and with the default style.
Usage: python benchmarks/tokenizer_agreement.py [DATA_DIR] [--examples N]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from bfcl.inference.tokenize import DEFAULT_STYLE, tokenize_tweet

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


_ATTACH_LEFT = {".", ",", "!", "?", ":", ";", ")", "]", "%", "…"}
_ATTACH_RIGHT = {"(", "[", "$"}
_CLITICS = {"s", "t", "m", "re", "ve", "ll", "d", "S", "T", "M", "RE", "VE", "LL", "D"}


def detokenise(tokens: list[str], style: str) -> str:
    """Tweet-like text for ``tokens``: glue what the data's tokeniser split
    where the raw spacing is unambiguous enough (see module docstring)."""
    out = ""
    glue_next = False
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1] if i else ""
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        glue = glue_next or not out
        if tok in _ATTACH_LEFT and not (tok == ":" and prev == "RT"):
            glue = True
        if tok in {"'", "’"} and nxt in _CLITICS and re.fullmatch(r"\w+", prev or "-"):
            glue = True
        if prev in {"'", "’"} and tok in _CLITICS and len(tokens) > 1 and re.fullmatch(r"\w+", tokens[i - 2] if i > 1 else "-"):
            glue = True
        if style == "twitter2015" and tok == "_" and prev.startswith("@"):
            glue = True
        if style == "twitter2015" and prev == "_" and i > 1 and tokens[i - 2].startswith("@"):
            glue = True
        out += tok if glue else " " + tok
        glue_next = tok in _ATTACH_RIGHT or (style == "twitter2017" and tok in {"#", "@"} and bool(re.match(r"\w", nxt)))
    # Twitter-2015 split https links ("https : //t . co/x"); the tweet had one.
    return re.sub(r"https: //t\. co/", "https://t.co/", out)


def agreement(
    sentences: list[list[str]], style: str, raw_like: bool, baseline: bool = False
) -> tuple[float, list[tuple[str, list[str], list[str]]]]:
    """Fraction reproduced exactly, and the mismatches (text, gold, got);
    ``baseline`` measures ``str.split`` instead of ``tokenize_tweet``."""
    bad = []
    for gold in sentences:
        text = detokenise(gold, style) if raw_like else " ".join(gold)
        got = text.split() if baseline else [t.text for t in tokenize_tweet(text, style=style)]
        if got != gold:
            bad.append((text, gold, got))
    return 1 - len(bad) / max(1, len(sentences)), bad


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
