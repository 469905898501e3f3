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


def test_evaluate_cli_prints_the_confusion_table(tmp_path):
    """``bfcl evaluate --gold --pred --confusion``: the table and the error kinds, also in --json."""
    import json

    from typer.testing import CliRunner

    from bfcl.cli import app

    gold = tmp_path / "gold.txt"
    pred = tmp_path / "pred.txt"
    gold.write_text("Barack\tB-PER\nObama\tI-PER\nin\tO\nParis\tB-LOC\n\nApple\tB-ORG\nrocks\tO\n", encoding="utf-8")
    pred.write_text("Barack\tB-PER\nObama\tB-PER\nin\tO\nParis\tB-LOC\n\nApple\tB-LOC\nrocks\tO\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["evaluate", "--gold", str(gold), "--pred", str(pred), "--confusion"])
    assert r.exit_code == 0, r.output
    assert "span confusion" in r.output and "(spurious)" in r.output
    assert "errors: type 1, boundary 1 (same type)" in r.output
    r = CliRunner().invoke(app, ["evaluate", "--gold", str(gold), "--pred", str(pred), "--confusion", "--json"])
    kinds = json.loads(r.output)["confusion"]["kinds"]
    assert kinds["type"] == 1 and kinds["boundary_same_type"] == 1 and kinds["correct"] == 1
