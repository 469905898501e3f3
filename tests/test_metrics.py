from __future__ import annotations

import random
import warnings

import pytest
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

from bfcl.data.types import Sample
from bfcl.metrics import check_aligned, entity_scores, score_samples

GOLD = [
    ["B-PER", "I-PER", "O", "I-LOC", "O"],  # conlleval: PER[0,2) LOC[3,4) (stray I-LOC)   strict: PER[0,2)
    ["I-ORG", "I-ORG", "O", "B-MISC"],  # conlleval: ORG[0,2) (stray) MISC[3,4)           strict: MISC[3,4)
]
PRED = [
    ["B-PER", "I-PER", "O", "B-LOC", "O"],  # PER[0,2) LOC[3,4)   (same in both modes)
    ["B-ORG", "I-ORG", "O", "B-PER"],  # ORG[0,2) PER[3,4)
]


def test_hand_computed_conlleval_with_stray_i():
    # conlleval: a stray I- opens an entity.
    # gold = {PER s1[0,2), LOC s1[3,4), ORG s2[0,2), MISC s2[3,4)}          -> 4
    # pred = {PER s1[0,2), LOC s1[3,4), ORG s2[0,2), PER s2[3,4)}           -> 4
    # correct = PER s1, LOC s1, ORG s2                                      -> 3
    # P = 3/4, R = 3/4, F1 = 0.75
    # PER: gold 1, pred 2, correct 1 -> P 1/2, R 1, F1 2/3, support 1
    # LOC: 1/1/1 -> 1, 1, 1; ORG: 1/1/1 -> 1, 1, 1
    # MISC: gold 1, pred 0 -> P 0, R 0, F1 0, support 1
    s = entity_scores(GOLD, PRED)
    assert s["precision"] == pytest.approx(0.75)
    assert s["recall"] == pytest.approx(0.75)
    assert s["f1"] == pytest.approx(0.75)
    assert s["per_type"] == {
        "LOC": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
        "MISC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "ORG": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
        "PER": {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1},
    }
    assert all(type(v) is float for v in (s["precision"], s["recall"], s["f1"]))
    assert type(s["per_type"]["PER"]["support"]) is int


def test_hand_computed_strict_with_stray_i():
    # strict IOB2: stray I- tags are no entity.
    # gold = {PER s1[0,2), MISC s2[3,4)}                                    -> 2
    # pred = {PER s1[0,2), LOC s1[3,4), ORG s2[0,2), PER s2[3,4)}           -> 4
    # correct = PER s1                                                      -> 1
    # P = 1/4, R = 1/2, F1 = 2 * (1/4 * 1/2) / (1/4 + 1/2) = 1/3
    # PER: gold 1, pred 2, correct 1 -> 1/2, 1, 2/3; LOC, ORG: gold 0 -> 0, 0, 0, support 0
    # MISC: gold 1, pred 0 -> 0, 0, 0, support 1
    s = entity_scores(GOLD, PRED, mode="strict")
    assert s["precision"] == pytest.approx(0.25)
    assert s["recall"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(1 / 3)
    assert s["per_type"]["PER"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert s["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert s["per_type"]["ORG"]["support"] == 0
    assert s["per_type"]["MISC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_stray_i_in_prediction_matches_b_in_gold_only_under_conlleval():
    gold, pred = [["O", "B-PER", "I-PER"]], [["O", "I-PER", "I-PER"]]
    assert entity_scores(gold, pred)["f1"] == 1.0  # conlleval: I-PER after O opens PER[1,3)
    strict = entity_scores(gold, pred, mode="strict")
    assert strict["f1"] == 0.0 and strict["recall"] == 0.0


def test_mapping_renames_types():
    s = entity_scores([["B-OTHER", "O"]], [["B-MISC", "O"]], mapping={"OTHER": "MISC"})
    assert s["f1"] == 1.0 and list(s["per_type"]) == ["MISC"]
    assert entity_scores([["B-OTHER", "O"]], [["B-MISC", "O"]])["f1"] == 0.0


def test_no_entities_anywhere_is_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = entity_scores([["O", "O"], []], [["O", "O"], []])
        assert s == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "per_type": {}}
        assert entity_scores([["O"]], [["B-PER"]])["precision"] == 0.0


def test_agrees_with_seqeval_functions_on_random_data():
    rng = random.Random(1)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    gold = [[rng.choice(tags) for _ in range(rng.randint(1, 10))] for _ in range(200)]
    pred = [[lab if rng.random() < 0.7 else rng.choice(tags) for lab in seq] for seq in gold]
    s = entity_scores(gold, pred)
    assert s["precision"] == pytest.approx(precision_score(gold, pred))
    assert s["recall"] == pytest.approx(recall_score(gold, pred))
    assert s["f1"] == pytest.approx(f1_score(gold, pred))
    st = entity_scores(gold, pred, mode="strict")
    assert st["f1"] == pytest.approx(f1_score(gold, pred, mode="strict", scheme=IOB2))


@pytest.mark.parametrize(
    ("gold", "pred", "message"),
    [
        ([["O"]], [], "gold has 1 sequences but predictions have 0"),
        ([["O", "O"]], [["O"]], "sequence 0: gold has 2 labels but prediction has 1"),
        ([["O", "B-X"]], [["O", "E-X"]], r"sequence 0, position 1 \(prediction\): label 'E-X'"),
        ([["Q"]], [["O"]], r"sequence 0, position 0 \(gold\)"),
    ],
)
def test_bad_input(gold, pred, message):
    with pytest.raises(ValueError, match=message):
        entity_scores(gold, pred)


def test_bad_mode():
    with pytest.raises(ValueError, match="unknown mode"):
        entity_scores([["O"]], [["O"]], mode="lenient")  # type: ignore[arg-type]


def _s(id: str, n: int, source: str, image_id: str | None = None, labels: list[str] | None = None) -> Sample:
    return Sample(id=id, tokens=["t"] * n, labels=labels or ["O"] * n, image_id=image_id, source=source, line=7)


def test_check_aligned_errors_name_sample_and_file():
    gold = [_s("1", 2, "gold.txt", "1"), _s("2", 3, "gold.txt", "2")]
    with pytest.raises(ValueError, match=r"pred.txt has 1 samples but gold gold.txt has 2"):
        check_aligned(gold, [_s("1", 2, "pred.txt", "1")])
    with pytest.raises(ValueError, match=r"sample 2 \('2' at gold.txt:7; '2' at pred.txt:7\): gold has 3 tokens but prediction has 4"):
        check_aligned(gold, [_s("1", 2, "pred.txt", "1"), _s("2", 4, "pred.txt", "2")])
    with pytest.raises(ValueError, match=r"sample 1 .*image ids differ \('1' vs '9'\)"):
        check_aligned(gold, [_s("9", 2, "pred.txt", "9"), _s("2", 3, "pred.txt", "2")])
    unlabelled = Sample(id="2", tokens=["t"] * 3, image_id="2", source="pred.txt")
    with pytest.raises(ValueError, match="predicted sample has no labels"):
        check_aligned(gold, [_s("1", 2, "pred.txt", "1"), unlabelled])


def test_score_samples_conll_ids_may_differ():
    gold = [_s("gold-1", 2, "gold.conll", labels=["B-PER", "O"])]
    pred = [_s("pred-1", 2, "pred.conll", labels=["B-PER", "O"])]
    assert score_samples(gold, pred)["f1"] == 1.0
