"""Which raw-text tokenisation style fits a training set, and how well it fits.

A model must see raw text split the way its training data was split, or its
entities come back cut (``@`` ``NBA`` for a model that learnt ``@NBA``). The
trainer measures, on the training tokens themselves, whether ``@`` and ``#``
are split from their word, whether URLs, emoji and numbers with separators
are split, and picks the style of ``bfcl.data.tokenize`` whose
conventions match (:func:`infer_style`); data that matches neither Twitter
set gets ``"generic"``. :func:`agreement` then says how often the chosen style
gives the training sentences back exactly; ``benchmarks/tokenizer_agreement.py``
reports the same measures for the Twitter sets.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from bfcl.data.tokenize import STYLES, tokenize_tweet

FEATURES = ("at", "hash", "url", "emoji", "number")

PROFILES: dict[str, dict[str, bool]] = {
    "twitter2015": {"at": False, "hash": False, "url": False, "emoji": False, "number": True},
    "twitter2017": {"at": True, "hash": True, "url": False, "emoji": True, "number": False},
    "generic": {"at": False, "hash": False, "url": False, "emoji": True, "number": False},
}
"""Per style, whether it splits: ``@`` from the user name, ``#`` from the tag, a URL,
an emoji from its neighbours, a number at its ``.``/``,``."""

DECISIVE = 0.8
"""A feature is decided when at least this fraction of its occurrences agree."""
MIN_EVIDENCE = 3
"""... and it occurs at least this often; otherwise the data says nothing about it."""

_WORD = re.compile(r"\w")
_URL_WHOLE = re.compile(r"(?:https?://|www\.)\S")
_NUMBER_WHOLE = re.compile(r"\d+(?:[.,]\d+)+")
_DIGITS = re.compile(r"\d+")


def _is_emoji(ch: str) -> bool:
    cp = ord(ch)
    return unicodedata.category(ch) == "So" or 0x1F000 <= cp <= 0x1FAFF


@dataclass
class StyleEvidence:
    """Counts of each convention's split and whole forms in a token corpus."""

    at_split: int = 0
    at_whole: int = 0
    hash_split: int = 0
    hash_whole: int = 0
    url_split: int = 0
    url_whole: int = 0
    emoji_split: int = 0
    emoji_whole: int = 0
    number_split: int = 0
    number_whole: int = 0

    def decided(self) -> dict[str, bool | None]:
        """Per feature: True (the data splits it), False (keeps it whole), None (no clear evidence)."""
        out: dict[str, bool | None] = {}
        for f in FEATURES:
            split, whole = getattr(self, f"{f}_split"), getattr(self, f"{f}_whole")
            total = split + whole
            if total < MIN_EVIDENCE:
                out[f] = None
            elif split >= DECISIVE * total:
                out[f] = True
            elif whole >= DECISIVE * total:
                out[f] = False
            else:
                out[f] = None
        return out


def style_evidence(sentences: Iterable[Sequence[str]]) -> StyleEvidence:
    """Count, in tokenised sentences, the split and whole forms of each convention."""
    ev = StyleEvidence()
    for toks in sentences:
        n = len(toks)
        for i, t in enumerate(toks):
            if not t:
                continue
            nxt = toks[i + 1] if i + 1 < n else ""
            if t in ("@", "#"):
                if _WORD.match(nxt):
                    if t == "@":
                        ev.at_split += 1
                    else:
                        ev.hash_split += 1
            elif t[0] in "@#" and len(t) > 1 and _WORD.match(t[1]):
                if t[0] == "@":
                    ev.at_whole += 1
                else:
                    ev.hash_whole += 1
            if _URL_WHOLE.match(t):
                ev.url_whole += 1
            elif t.lower() in ("http", "https") and nxt == ":":
                ev.url_split += 1
            if any(_is_emoji(ch) for ch in t):
                # a lone emoji code point (or with its variation selector) is split off
                if len(t.replace("\ufe0f", "")) == 1:
                    ev.emoji_split += 1
                else:
                    ev.emoji_whole += 1
            if _NUMBER_WHOLE.fullmatch(t):
                ev.number_whole += 1
            elif _DIGITS.fullmatch(t) and nxt in (".", ",") and i + 2 < n and _DIGITS.fullmatch(toks[i + 2]):
                ev.number_split += 1
    return ev


@dataclass
class StyleReport:
    style: str
    """The inferred style."""
    decided: dict[str, bool | None]
    """Per feature, whether the data splits it (None: no clear evidence)."""
    mismatches: dict[str, list[str]]
    """Per style, the decided features it handles the other way."""
    evidence: StyleEvidence

    def to_dict(self) -> dict:
        return {
            "style": self.style, "splits": self.decided, "mismatches": self.mismatches,
            "evidence": asdict(self.evidence),
        }


def infer_style(sentences: Sequence[Sequence[str]]) -> StyleReport:
    """The style whose conventions contradict the data least; ``"generic"`` on a tie
    (e.g. data without any ``@``, ``#``, URL, emoji or separated number)."""
    ev = style_evidence(sentences)
    decided = ev.decided()
    mismatches = {
        style: [f for f, v in decided.items() if v is not None and v != profile[f]]
        for style, profile in PROFILES.items()
    }
    order = ["generic"] + [s for s in STYLES if s != "generic"]
    best = min(order, key=lambda s: len(mismatches[s]))  # min keeps the first on ties: generic
    return StyleReport(best, decided, mismatches, ev)


# ------------------------------------------------------------ agreement measures

_ATTACH_LEFT = {".", ",", "!", "?", ":", ";", ")", "]", "%", "…"}
_ATTACH_RIGHT = {"(", "[", "$"}
_CLITICS = {"s", "t", "m", "re", "ve", "ll", "d", "S", "T", "M", "RE", "VE", "LL", "D"}


def detokenise(tokens: Sequence[str], style: str) -> str:
    """Tweet-like text for ``tokens``: glue what the data's tokeniser split where the
    raw spacing is unambiguous enough (punctuation to its word, ``I ' m`` -> ``I'm``,
    in the 2017 style ``# tag`` -> ``#tag`` and ``@ user`` -> ``@user``). Approximate:
    the original spacing is lost."""
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
    sentences: Sequence[Sequence[str]], style: str, raw_like: bool, baseline: bool = False
) -> tuple[float, list[tuple[str, list[str], list[str]]]]:
    """Fraction of sentences whose tokens come back exactly, and the mismatches
    (text, gold, got). ``raw_like=False`` re-tokenises the tokens joined by spaces
    ("joined"); ``True`` first glues them into tweet-like text with :func:`detokenise`
    ("raw-like"). ``baseline`` measures ``str.split`` instead of ``tokenize_tweet``."""
    bad = []
    for gold in sentences:
        gold = list(gold)
        text = detokenise(gold, style) if raw_like else " ".join(gold)
        got = text.split() if baseline else [t.text for t in tokenize_tweet(text, style=style)]
        if got != gold:
            bad.append((text, gold, got))
    return 1 - len(bad) / max(1, len(sentences)), bad


def agreement_summary(sentences: Sequence[Sequence[str]], style: str) -> dict[str, float | int]:
    """Both measures for one style, for logs and the training summary."""
    joined, _ = agreement(sentences, style, raw_like=False)
    raw_like, _ = agreement(sentences, style, raw_like=True)
    return {"joined": round(joined, 4), "raw_like": round(raw_like, 4), "sentences": len(sentences)}
