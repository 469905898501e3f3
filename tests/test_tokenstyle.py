"""The raw-text tokenisation style is inferred from the training tokens themselves."""

from __future__ import annotations

import pytest

from bfcl.inference.tokenize import tokenize_tweet
from bfcl.inference.tokenstyle import agreement_summary, infer_style, style_evidence

STYLE_2017 = [
    ["RT", "@", "NBA", ":", "Kawhi", "wins", "#", "NBAAwards", "😂", "😂"],
    ["@", "espn", "paid", "10,000", "fans", "#", "win", "🔥"],
    ["#", "Paris", "is", "great", "👋", "🏽", "@", "Kolo"],
]
STYLE_2015 = [
    ["RT", "@NBA", ":", "Kawhi", "wins", "#NBAAwards", "http://t.co/x"],
    ["@espn", "paid", "10", ",", "000", "fans", "#win", "for", "2", ".", "99"],
    ["#Paris", "is", "great", "@Kolo", "and", "1", ".", "5", "http://t.co/y"],
]
GENERIC = [  # WNUT-like: mentions and tags whole, emoji split, numbers whole
    ["RT", "@NBA", ":", "Kawhi", "wins", "#NBAAwards", "😂", "😂"],
    ["@espn", "paid", "10,000", "fans", "#win", "🔥", "http://t.co/x"],
    ["#Paris", "is", "great", "👋", "@Kolo", "for", "2.99", "🎉"],
]


@pytest.mark.parametrize(
    "sentences, style", [(STYLE_2017, "twitter2017"), (STYLE_2015, "twitter2015"), (GENERIC, "generic")],
    ids=["2017", "2015", "generic"],
)
def test_infers_the_style_the_tokens_follow(sentences, style):
    report = infer_style(sentences)
    assert report.style == style, report.to_dict()
    assert report.mismatches[style] == []


def test_data_without_evidence_is_generic():
    report = infer_style([["John", "lives", "in", "London", "."], ["Acme", "Corp", "hired", "him"]])
    assert report.style == "generic"
    assert set(report.decided.values()) == {None}


def test_evidence_counts_both_forms():
    ev = style_evidence([["@", "a", "@b", "#", "c", "http", ":", "//t", "https://t.co/z", "👋", "x👋", "1", ",", "2", "3.4"]])
    assert (ev.at_split, ev.at_whole, ev.hash_split, ev.hash_whole) == (1, 1, 1, 0)
    assert (ev.url_split, ev.url_whole, ev.emoji_split, ev.emoji_whole) == (1, 1, 1, 1)
    assert (ev.number_split, ev.number_whole) == (1, 1)


def test_generic_style_keeps_mentions_tags_and_numbers_whole():
    words = [t.text for t in tokenize_tweet("RT @Kolo_x: #NBA $AAPL paid 10,000 on May 21, 2016 for 5th 👋🏽 don't", "generic")]
    assert words == ["RT", "@Kolo_x", ":", "#NBA", "$AAPL", "paid", "10,000", "on", "May", "21", ",", "2016",
                     "for", "5th", "👋", "🏽", "don", "'", "t"]


def test_agreement_of_the_inferred_style_on_its_own_data():
    for sentences in (STYLE_2017, GENERIC):
        report = infer_style(sentences)
        assert agreement_summary(sentences, report.style)["joined"] == 1.0


@pytest.mark.shared_data
@pytest.mark.parametrize("dataset", ["twitter2015", "twitter2017"])
def test_real_train_splits_are_inferred_as_their_own_style(shared_data, dataset):
    from bfcl.data.umt import read_samples

    sentences = [s.tokens for s in read_samples(shared_data / dataset / "train.txt")]
    report = infer_style(sentences)
    assert report.style == dataset, report.to_dict()
    agree = agreement_summary(sentences, report.style)
    assert agree["joined"] > 0.98 and agree["raw_like"] > 0.97, agree
