from __future__ import annotations

import random

import pytest
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2, Tokens

from bfcl.data.labels import (
    LabelSet,
    check_bio2,
    is_valid_label,
    map_types,
    parse_label,
    repair_stray_i,
    spans,
)
from bfcl.data.types import Sample
from bfcl.data.umt import read_samples


def _sample(labels: list[str]) -> Sample:
    return Sample(id="x", tokens=["t"] * len(labels), labels=labels)


# ---- LabelSet ---------------------------------------------------------------


def test_from_samples_is_canonical_order():
    ls = LabelSet.from_samples([_sample(["B-PER", "I-PER", "O"]), _sample(["I-LOC", "B-MISC"])])
    assert ls.labels == ("O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-PER", "I-PER")
    assert ls.types == ("LOC", "MISC", "PER")
    assert len(ls) == 7 and list(ls) == list(ls.labels)


def test_from_samples_mapping_and_unlabelled_samples():
    ls = LabelSet.from_samples(
        [_sample(["B-OTHER"]), Sample(id="u", tokens=["a"])], mapping={"OTHER": "MISC"}
    )
    assert ls.labels == ("O", "B-MISC", "I-MISC")


def test_id_label_roundtrip_and_dicts():
    ls = LabelSet.from_types(["PER", "LOC"])
    assert ls.id("O") == 0 and ls.label(0) == "O"
    assert ls.decode(ls.encode(["B-PER", "I-PER", "O"])) == ["B-PER", "I-PER", "O"]
    assert ls.id2label() == {i: lab for i, lab in enumerate(ls.labels)}
    assert ls.label2id()["I-LOC"] == 2
    assert "B-LOC" in ls and "B-ORG" not in ls


def test_to_dict_from_dict_keeps_given_order():
    custom = LabelSet(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])  # not canonical: kept as trained
    again = LabelSet.from_dict(custom.to_dict())
    assert again == custom and again.labels == custom.labels
    assert hash(again) == hash(custom)
    assert again != LabelSet.from_types(["PER", "LOC"])


def test_unknown_label_and_bad_id():
    ls = LabelSet.from_types(["PER"])
    with pytest.raises(ValueError, match=r"unknown label 'B-LOC'.*B-PER"):
        ls.id("B-LOC")
    with pytest.raises(IndexError, match="out of range"):
        ls.label(3)
    with pytest.raises(IndexError):
        ls.label(-1)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["O", "B-PER", "B-PER", "I-PER"], "duplicate"),
        (["B-PER", "I-PER"], "must contain 'O'"),
        (["O", "B-PER"], "not 'I-PER'"),
        (["O", "I-PER"], "not 'B-PER'"),
        (["O", "X-PER", "I-PER"], "invalid label 'X-PER'"),
    ],
)
def test_labelset_rejects_bad_lists(labels, message):
    with pytest.raises(ValueError, match=message):
        LabelSet(labels)


def test_from_dict_needs_labels():
    with pytest.raises(ValueError, match="no 'labels'"):
        LabelSet.from_dict({})


# ---- single labels ----------------------------------------------------------


@pytest.mark.parametrize("label", ["O", "B-PER", "I-MISC", "B-SUB-TYPE"])
def test_valid_labels(label):
    assert is_valid_label(label)


@pytest.mark.parametrize("label", ["", "o", "B", "B-", "I-", "b-PER", "E-PER", "S-PER", "B-P ER", "O ", "BPER"])
def test_invalid_labels(label):
    assert not is_valid_label(label)
    with pytest.raises(ValueError, match="is not O, B-<type> or I-<type>"):
        parse_label(label)


def test_parse_label():
    assert parse_label("O") == ("O", None)
    assert parse_label("I-LOC") == ("I", "LOC")


def test_map_types():
    assert map_types(["B-OTHER", "I-OTHER", "O", "B-PER"], {"OTHER": "MISC"}) == ["B-MISC", "I-MISC", "O", "B-PER"]
    assert map_types(["B-OTHER"], None) == ["B-OTHER"]


# ---- BIO2 checks ------------------------------------------------------------


def test_check_bio2_lists_stray_i():
    labels = ["I-PER", "O", "I-LOC", "I-LOC", "B-ORG", "I-PER", "B-MISC", "I-MISC"]
    # I-PER at 0 (sentence start), I-LOC at 2 (after O), I-PER at 5 (after ORG).
    # I-LOC at 3 continues the (stray-opened) LOC and is not reported again.
    assert check_bio2(labels) == [(0, "I-PER"), (2, "I-LOC"), (5, "I-PER")]
    assert check_bio2(["B-PER", "I-PER", "O"]) == []


def test_repair_stray_i():
    assert repair_stray_i(["O", "I-PER", "I-PER", "B-LOC", "I-ORG"]) == ["O", "B-PER", "I-PER", "B-LOC", "B-ORG"]
    labels = ["I-PER"]
    repair_stray_i(labels)
    assert labels == ["I-PER"]  # input untouched: gold data keeps its stray tags


# ---- spans ------------------------------------------------------------------


def test_spans_hand_cases():
    labels = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-ORG", "I-PER", "B-MISC"]
    assert spans(labels) == [("PER", 0, 2), ("LOC", 3, 5), ("ORG", 5, 6), ("PER", 6, 7), ("MISC", 7, 8)]
    assert spans(labels, "strict") == [("PER", 0, 2), ("ORG", 5, 6), ("MISC", 7, 8)]
    assert spans([]) == [] and spans(["O", "O"]) == []
    assert spans(["B-PER", "B-PER"], "strict") == [("PER", 0, 1), ("PER", 1, 2)]


def test_spans_rejects_bad_mode_and_labels():
    with pytest.raises(ValueError, match="unknown span mode"):
        spans(["O"], mode="iobes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'E-PER'"):
        spans(["E-PER"])


def _seqeval_default(labels):
    return [(t, s, e + 1) for t, s, e in get_entities(labels)]


def _seqeval_strict(labels):
    return [(e.tag, e.start, e.end) for e in Tokens(labels, IOB2).entities]


def test_spans_agree_with_seqeval_on_random_sequences():
    rng = random.Random(0)
    tags = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "B-SUB-X", "I-SUB-X"]
    for _ in range(3000):
        seq = [rng.choice(tags) for _ in range(rng.randint(0, 12))]
        assert spans(seq, "conlleval") == _seqeval_default(seq), seq
        assert spans(seq, "strict") == _seqeval_strict(seq), seq


def test_stray_i_counts_on_twitter2015(shared_data):
    expected = {"train": 186, "valid": 53, "test": 135}
    for split, n in expected.items():
        samples = read_samples(shared_data / "twitter2015" / f"{split}.txt")
        assert sum(len(check_bio2(s.labels)) for s in samples) == n
    for split in expected:
        samples = read_samples(shared_data / "twitter2017" / f"{split}.txt")
        assert all(check_bio2(s.labels) == [] for s in samples)
    ls = LabelSet.from_samples(read_samples(shared_data / "twitter2015" / "train.txt"), mapping={"OTHER": "MISC"})
    assert ls.types == ("LOC", "MISC", "ORG", "PER")
