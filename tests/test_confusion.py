"""Span confusion: every gold and predicted span lands in exactly one bucket."""

from bfcl.confusion import span_confusion


def test_buckets_on_a_hand_made_case():
    tokens = [["Barack", "Obama", "in", "Paris", "with", "Apple", "today"]]
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "O"]]
    # Obama split in two (boundary), Paris right, Apple as MISC (type), "today" spurious
    pred = [["B-PER", "B-PER", "O", "B-LOC", "O", "B-MISC", "B-LOC"]]
    c = span_confusion(gold, pred, tokens)
    assert c.exact[("LOC", "LOC")] == 1
    assert c.exact[("ORG", "MISC")] == 1
    assert c.boundary[("PER", "PER")] == 1
    assert c.spurious["LOC"] == 1
    assert sum(c.missed.values()) == 0
    k = c.kinds()
    assert k == {"correct": 1, "type": 1, "boundary_same_type": 1, "boundary_other_type": 0, "missed": 0, "spurious": 1}
    assert "gold PER [Barack Obama] / pred PER [Barack]" in c.examples["boundary"][0]
    table = c.table()
    assert "(spurious)" in table and "missed 0, spurious 1" in table


def test_missed_and_perfect():
    gold = [["B-PER", "O"], ["O", "B-LOC"]]
    c = span_confusion(gold, [["O", "O"], ["O", "B-LOC"]])
    assert c.missed["PER"] == 1 and c.exact[("LOC", "LOC")] == 1
    assert c.to_dict()["kinds"]["correct"] == 1


def test_length_mismatch_is_refused():
    import pytest

    with pytest.raises(ValueError, match="post 1"):
        span_confusion([["O", "O"]], [["O"]])
