"""Tweet tokenizer: offsets are exact, nothing is dropped, and raw text splits
like the Twitter-2015/2017 data."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bfcl.inference.tokenize import DEFAULT_STYLE, STYLES, Token, tokenize_tweet, tokens_from_input

# Characters that exercise every rule: word chars, digits, the split/glue
# punctuation of both styles, URL and emoticon pieces, emoji and modifiers,
# invisible characters, combining marks and odd whitespace.
ALPHABET = list("aZé0 9_-/.,:;!?'\"()[]#@&$%*…~|+=") + [
    "http://t.co/x", "https:", "www.", "&amp;", ":)", "10,000", "\t", "\n", "\r", "\xa0", "\u2003", "\u3000",
    "\u200b", "\u200c", "\u200d", "\ufe0f", "\u00ad", "\u0301", "\u094d", "\u20e3", "😂", "🏼", "🇺", "’", "“", "ㅋ", "न",
]  # fmt: skip
texts = st.lists(st.sampled_from(ALPHABET), max_size=40).map("".join) | st.text(max_size=40)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def words(text: str, style: str = DEFAULT_STYLE) -> list[str]:
    return [t.text for t in tokenize_tweet(text, style=style)]  # type: ignore[arg-type]


@FAST
@given(text=texts, style=st.sampled_from(STYLES))
def test_offsets_exact_ordered_and_cover_all_non_space(text: str, style: str) -> None:
    tokens = tokenize_tweet(text, style=style)  # type: ignore[arg-type]
    prev_end = 0
    for tok in tokens:
        assert text[tok.start : tok.end] == tok.text
        assert tok.start >= prev_end and tok.end > tok.start
        # Separators are exactly str.isspace chars; invisible non-space chars
        # (U+200B, U+FE0F, U+00AD...) are tokens, never dropped.
        assert not any(c.isspace() for c in tok.text)
        assert text[prev_end : tok.start].isspace() or prev_end == tok.start
        prev_end = tok.end
    assert text[prev_end:].strip() == ""
    assert "".join(t.text for t in tokens) == "".join(c for c in text if not c.isspace())


@FAST
@given(text=texts, style=st.sampled_from(STYLES))
def test_retokenising_space_joined_tokens_is_stable(text: str, style: str) -> None:
    """What the data agreement measure relies on: a token never splits further."""
    once = words(text, style)
    assert words(" ".join(once), style) == once


@pytest.mark.parametrize("style", STYLES)
def test_urls_are_one_token(style: str) -> None:
    assert words("see http://t.co/Z3neVBQ7vF now", style) == ["see", "http://t.co/Z3neVBQ7vF", "now"]
    assert words("https://t.co/abc http://t.co/4bYcV… www.bbc.co.uk/news", style) == [
        "https://t.co/abc", "http://t.co/4bYcV…", "www.bbc.co.uk/news",
    ]  # fmt: skip
    assert words("truncated http:…", style) == ["truncated", "http:…"]


def test_url_trailing_punctuation_per_style() -> None:
    assert words("(via http://t.co/ab).", "twitter2017") == ["(", "via", "http://t.co/ab", ")", "."]
    # Twitter-2015 kept whatever followed a link up to the next space.
    assert words("(via http://t.co/ab).", "twitter2015") == ["(", "via", "http://t.co/ab)."]


def test_mentions_hashtags_rt() -> None:
    text = "RT @ESPN_FirstTake: Go #NBAFinals!"
    assert words(text, "twitter2015") == ["RT", "@ESPN", "_", "FirstTake", ":", "Go", "#NBAFinals", "!"]
    assert words(text, "twitter2017") == ["RT", "@", "ESPN_FirstTake", ":", "Go", "#", "NBAFinals", "!"]
    assert words("$AAPL up $5", "twitter2015") == ["$AAPL", "up", "$", "5"]


def test_contractions_and_hyphens() -> None:
    assert words("I'm sure Trump's team won't", "twitter2017") == [
        "I", "'", "m", "sure", "Trump", "'", "s", "team", "won", "'", "t",
    ]  # fmt: skip
    assert words("don’t", "twitter2015") == ["don", "’", "t"]
    assert words("triple-digit b/c w/", "twitter2015") == ["triple-digit", "b/c", "w/"]
    assert words("co-hosts w/her", "twitter2017") == ["co", "-", "hosts", "w", "/", "her"]


def test_numbers() -> None:
    assert words("$10,000 on May 21, 2016 at 7:30pm, 2.99 5th", "twitter2017") == [
        "$", "10,000", "on", "May", "21,", "2016", "at", "7", ":", "30", "pm", ",", "2.99", "5", "th",
    ]  # fmt: skip
    assert words("$10,000 at 7:30pm, 2.99 5th", "twitter2015") == [
        "$", "10", ",", "000", "at", "7", ":", "30pm", ",", "2", ".", "99", "5th",
    ]  # fmt: skip


def test_html_entities() -> None:
    assert words("Bush &amp; Trump H&amp;M", "twitter2015") == ["Bush", "&amp", ";", "Trump", "H&amp", ";", "M"]
    assert words("Bush &amp; Trump --&gt;", "twitter2017") == ["Bush", "&amp;", "Trump", "-", "-", "&gt;"]


def test_emoji_and_invisible_characters() -> None:
    text = "win ⚾️🔥👍🏼 🇺🇸 a\u200bb"
    assert words(text, "twitter2017") == ["win", "⚾", "\ufe0f", "🔥", "👍", "🏼", "🇺", "🇸", "a", "\u200b", "b"]
    assert words(text, "twitter2015") == ["win", "⚾️🔥👍🏼", "🇺🇸", "a\u200bb"]
    assert words("love \ufe0f you :) :-(", "twitter2017") == ["love", "\ufe0f", "you", ":)", ":-("]
    # Combining marks, ZWNJ and soft hyphens stay inside their word.
    assert words("Cafe\u0301 नमस्ते مي\u200cخواهم Bundes\u00adliga", "twitter2017") == [
        "Cafe\u0301", "नमस्ते", "مي\u200cخواهم", "Bundes\u00adliga",
    ]  # fmt: skip


def test_punctuation_runs() -> None:
    assert words("wow!!! so...", "twitter2017") == ["wow", "!", "!", "!", "so", ".", ".", "."]
    assert words("fun... http://t.co/js ...", "twitter2015") == ["fun", ".", ".", ".", "http://t.co/js", "..."]


@pytest.mark.parametrize("style", STYLES)
def test_odd_whitespace_separates(style: str) -> None:
    text = "New\tYork\nCity\xa0Hall\u2003Park \r\n Zoo"
    tokens = tokenize_tweet(text, style=style)  # type: ignore[arg-type]
    assert [t.text for t in tokens] == ["New", "York", "City", "Hall", "Park", "Zoo"]
    assert [(t.start, t.end) for t in tokens][:2] == [(0, 3), (4, 8)]


def test_unknown_style_is_rejected() -> None:
    with pytest.raises(ValueError, match="style"):
        tokenize_tweet("x", style="twitter2019")  # type: ignore[arg-type]


def test_tokens_from_input() -> None:
    assert tokens_from_input("") == []
    assert tokens_from_input(" \t\n\xa0") == []
    assert tokens_from_input([]) == []
    assert tokens_from_input("Hi @bob!") == tokenize_tweet("Hi @bob!")
    assert tokens_from_input("Hi @bob", style="twitter2015") == [Token("Hi", 0, 2), Token("@bob", 3, 7)]
    # Pre-split words are kept as given (never re-split), located in " ".join(words).
    given_words = ["Hi", "@bob!", "", "\xa0", "x"]
    tokens = tokens_from_input(given_words)
    joined = " ".join(given_words)
    assert [t.text for t in tokens] == given_words
    assert all(joined[t.start : t.end] == t.text for t in tokens)
    assert tokens_from_input(("a", "b")) == [Token("a", 0, 1), Token("b", 2, 3)]
    with pytest.raises(TypeError):
        tokens_from_input(["a", 3])  # type: ignore[list-item]


def test_token_is_frozen() -> None:
    tok = Token("a", 0, 1)
    with pytest.raises(AttributeError):
        tok.start = 2  # type: ignore[misc]


# --- agreement with the real data -------------------------------------------------


def _sentences(path: Path) -> list[list[str]]:
    """Token column of a UMT file, parsed here to stay independent of bfcl.data."""
    blocks = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
    return [
        [line.split("\t")[0] for line in block.split("\n") if line and not line.startswith("IMGID:")]
        for block in blocks
        if block.strip()
    ]


def _benchmark_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tokenizer_agreement.py"
    spec = importlib.util.spec_from_file_location("tokenizer_agreement", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.shared_data
@pytest.mark.parametrize(("dataset", "joined_min", "raw_like_min"), [("twitter2015", 0.98, 0.96), ("twitter2017", 0.995, 0.995)])
def test_agreement_with_real_data(shared_data: Path, dataset: str, joined_min: float, raw_like_min: float) -> None:
    """Measured 98.6 % / 100 % (joined) and 97.4 % / 99.98 % (raw-like); the
    brief's floor is 95 %. Thresholds sit just under the measured figures."""
    bench = _benchmark_module()
    for split in ("train", "valid", "test"):
        sentences = _sentences(shared_data / dataset / f"{split}.txt")
        assert sentences == bench.read_sentences(shared_data / dataset / f"{split}.txt")
        joined, _ = bench.agreement(sentences, dataset, raw_like=False)
        raw_like, _ = bench.agreement(sentences, dataset, raw_like=True)
        assert joined >= joined_min, (split, joined)
        assert raw_like >= raw_like_min, (split, raw_like)
