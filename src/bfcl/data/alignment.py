"""Words -> sub-token windows for a fast (Rust) Hugging Face tokenizer.

NER labels belong to words, the encoder sees sub-tokens. A word's label goes on
its first sub-token; its later sub-tokens and the special tokens ([CLS]/[SEP])
carry none. Sentences longer than the encoder's window are split into
overlapping windows at word boundaries and their predictions are stitched
back, each word taken from the one window that owns it, so no word is dropped.

Two edge cases are handled rather than dropped:

* A word the tokenizer turns into zero sub-tokens (a lone U+FE0F, U+200B,
  U+00AD or U+00A0, all present in Twitter-2015/2017) is encoded as the
  tokenizer's unk token, so it still has a position, gets a prediction and
  counts in evaluation.
* A single word with more sub-tokens than fit in a window is truncated to its
  first sub-tokens. Only the first sub-token carries the word's label, so the
  word keeps its label and prediction; only context from its tail is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
IGNORE_INDEX = -100


@dataclass
class Window:
    """One encoder input covering words ``first_word .. first_word+num_words-1``.

    ``word_starts[k]`` is the position in ``input_ids`` of the first sub-token
    of sentence word ``first_word + k``. ``owned`` is the half-open range of
    sentence word indices this window's predictions are used for when
    stitching; across a sentence's windows the owned ranges tile the sentence.
    """

    input_ids: list[int]
    word_starts: list[int]
    first_word: int
    num_words: int
    owned: tuple[int, int]

    def token_labels(
        self, word_labels: Sequence[int], ignore_index: int = IGNORE_INDEX, only_owned: bool = False
    ) -> list[int]:
        """Per-position labels for this window from the sentence's word labels:
        the label on each word's first sub-token, ``ignore_index`` elsewhere.
        ``only_owned`` also ignores context words owned by another window
        (e.g. to count each word once in a windowed loss)."""
        labels = [ignore_index] * len(self.input_ids)
        lo, hi = self.owned if only_owned else (self.first_word, self.first_word + self.num_words)
        for k, pos in enumerate(self.word_starts):
            word = self.first_word + k
            if lo <= word < hi:
                labels[pos] = word_labels[word]
        return labels


class WordAligner:
    """Encode a sentence's words into windows of at most ``max_length`` ids.

    ``stride`` is the most sub-tokens two consecutive windows may share
    (default: a quarter of the room left after special tokens); overlap gives
    words near a window edge context, and each overlap is split in the middle
    so every word is owned by the window where it sits further from an edge.
    The sentence is tokenised once; windows are sliced from that encoding.
    """

    def __init__(self, tokenizer: Any, max_length: int = 128, stride: int | None = None) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError("WordAligner needs a fast tokenizer (word_ids() comes from the Rust backend)")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.num_special = tokenizer.num_special_tokens_to_add(pair=False)
        self.capacity = max_length - self.num_special
        if self.capacity < 1:
            raise ValueError(f"max_length={max_length} leaves no room for words after {self.num_special} special tokens")
        self.stride = self.capacity // 4 if stride is None else stride
        if not 0 <= self.stride < self.capacity:
            raise ValueError(f"stride must be in [0, {self.capacity}) for max_length={max_length}, got {stride}")
        self.unk_token_id: int | None = tokenizer.unk_token_id
        # How many special tokens lead, for a sentence whose words all vanish.
        probe = tokenizer(["a"], is_split_into_words=True, add_special_tokens=True)
        self._num_prefix = next(i for i, w in enumerate(probe.word_ids()) if w is not None)

    def word_pieces(self, words: Sequence[str]) -> tuple[list[int], list[list[int]], list[int]]:
        """``(prefix_ids, per-word sub-token ids, suffix_ids)`` from one call to
        the tokenizer; empty words get ``[unk]``, overlong ones are truncated."""
        enc = self.tokenizer(
            list(words), is_split_into_words=True, add_special_tokens=True, truncation=False, verbose=False
        )
        return self._pieces(words, enc["input_ids"], enc.word_ids())

    def _pieces(
        self, words: Sequence[str], ids: list[int], word_ids: Sequence[int | None]
    ) -> tuple[list[int], list[list[int]], list[int]]:
        """``word_pieces`` from one sentence's encoding (its ids and their word indices)."""
        pieces: list[list[int]] = [[] for _ in words]
        first = last = None
        for pos, (tid, wid) in enumerate(zip(ids, word_ids)):
            if wid is None:
                continue
            pieces[wid].append(tid)
            first = pos if first is None else first
            last = pos
        if first is None:  # every word vanished: specials are all there is
            prefix, suffix = ids[: self._num_prefix], ids[self._num_prefix :]
        else:
            prefix, suffix = ids[:first], ids[last + 1 :]
        for i, p in enumerate(pieces):
            if not p:
                if self.unk_token_id is None:
                    raise ValueError(f"word {i} ({words[i]!r}) has no sub-tokens and the tokenizer has no unk token")
                p.append(self.unk_token_id)
            elif len(p) > self.capacity:
                del p[self.capacity :]
        return prefix, pieces, suffix

    def encode(self, words: Sequence[str]) -> list[Window]:
        """Windows covering ``words`` in order; ``[]`` for an empty sentence."""
        if len(words) == 0:
            return []
        return self._windows(*self.word_pieces(words))

    def encode_batch(self, sentences: Sequence[Sequence[str]]) -> list[list[Window]]:
        """``encode`` of every sentence, from one call to the tokenizer for all of them
        (the same windows: without padding or truncation each sentence is encoded alone)."""
        out: list[list[Window]] = [[] for _ in sentences]
        todo = [i for i, words in enumerate(sentences) if len(words)]
        if not todo:
            return out
        enc = self.tokenizer(
            [list(sentences[i]) for i in todo], is_split_into_words=True, add_special_tokens=True,
            truncation=False, verbose=False,
        )
        ids = enc["input_ids"]
        for j, i in enumerate(todo):
            out[i] = self._windows(*self._pieces(sentences[i], ids[j], enc.word_ids(j)))
        return out

    def _windows(self, prefix: list[int], pieces: list[list[int]], suffix: list[int]) -> list[Window]:
        """The windows of one sentence from its word pieces."""
        n = len(pieces)
        lengths = [len(p) for p in pieces]

        spans: list[tuple[int, int]] = []
        start = 0
        while True:
            end, used = start, 0
            while end < n and used + lengths[end] <= self.capacity:
                used += lengths[end]
                end += 1
            spans.append((start, end))
            if end == n:
                break
            # Next window: the earliest start after this one whose words up to
            # `end` fit in the overlap budget and still leave room for word `end`.
            budget = min(self.stride, self.capacity - lengths[end])
            nxt, shared = end, 0
            while nxt - 1 > start and shared + lengths[nxt - 1] <= budget:
                nxt -= 1
                shared += lengths[nxt]
            start = nxt

        # Ownership boundaries: middle of each overlap (by words).
        bounds = [0]
        for (_, a_end), (b_start, _) in zip(spans, spans[1:]):
            bounds.append(max(bounds[-1], b_start + (a_end - b_start) // 2))
        bounds.append(n)

        windows: list[Window] = []
        for k, (s, e) in enumerate(spans):
            ids = list(prefix)
            starts: list[int] = []
            for p in pieces[s:e]:
                starts.append(len(ids))
                ids.extend(p)
            ids.extend(suffix)
            windows.append(Window(ids, starts, s, e - s, (bounds[k], bounds[k + 1])))
        return windows


def stitch(windows: Sequence[Window], per_window_values: Sequence[Sequence[T]]) -> list[T]:
    """Sentence-level values from per-window word values (``len == num_words``
    each): word ``i`` takes its value from the window that owns it."""
    if len(windows) != len(per_window_values):
        raise ValueError(f"{len(windows)} windows but {len(per_window_values)} value lists")
    out: list[T] = []
    for w, values in zip(windows, per_window_values):
        if len(values) != w.num_words:
            raise ValueError(f"window at word {w.first_word} has {w.num_words} words but {len(values)} values")
        lo, hi = w.owned
        if lo != len(out) or not (w.first_word <= lo <= hi <= w.first_word + w.num_words):
            raise ValueError(f"owned ranges do not tile the sentence at word {len(out)}: got {w.owned}")
        out.extend(values[lo - w.first_word : hi - w.first_word])
    if windows and len(out) != windows[-1].first_word + windows[-1].num_words:
        raise ValueError(f"owned ranges stop at word {len(out)}, before the sentence ends")
    return out
