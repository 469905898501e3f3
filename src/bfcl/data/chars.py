"""Each word's characters for a character CNN (``model.char_cnn_dim``, Ma & Hovy 2016), as the
collator hands them to the model: UTF-8 bytes shifted by one, so 0 pads.

Bytes rather than a character vocabulary: ASCII text is character for character the same,
nothing has to be built from the training data or saved with the model, and no character is
ever unknown at prediction (an emoji is its four bytes).
"""

from __future__ import annotations

MAX_WORD_BYTES = 48
"""Bytes of a word that are read (the tail of a long URL adds nothing)."""


def char_ids(word: str) -> list[int]:
    """``word``'s first MAX_WORD_BYTES UTF-8 bytes, each + 1 (ids 1..256; 0 pads)."""
    return [b + 1 for b in word.encode("utf-8", errors="surrogatepass")[:MAX_WORD_BYTES]]
