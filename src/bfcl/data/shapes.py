"""Word shapes: a small closed set of classes that an uncased encoder cannot see
(its tokenizer lower-cases "Paris" and "paris" alike), fed to the emission layer
when ``word_shape_dim > 0``."""

from __future__ import annotations

import re

SHAPES = (
    "pad", "lower", "Title", "UPPER", "mIxed", "digit", "alnum",
    "@mention", "#", "#tag", "url", "punct", "other",
)
_ID = {s: i for i, s in enumerate(SHAPES)}
_URL = re.compile(r"^(https?://|www\.)", re.I)


def word_shape(word: str) -> int:
    """Shape class id of one word (0 is reserved for padding)."""
    if _URL.match(word):
        return _ID["url"]
    if word.startswith("@") and len(word) > 1:
        return _ID["@mention"]
    if word == "#":
        return _ID["#"]
    if word.startswith("#"):
        return _ID["#tag"]
    letters = [c for c in word if c.isalpha()]
    if not letters:
        if word and all(c.isdigit() for c in word):
            return _ID["digit"]
        if word and all(not c.isalnum() and not c.isspace() for c in word):
            return _ID["punct"]
        return _ID["other"]
    if any(c.isdigit() for c in word):
        return _ID["alnum"]
    if all(c.islower() for c in letters):
        return _ID["lower"]
    if all(c.isupper() for c in letters):
        return _ID["UPPER"] if len(letters) > 1 else _ID["Title"]
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return _ID["Title"]
    return _ID["mIxed"]
