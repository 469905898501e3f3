from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bfcl.cli import app
from bfcl.data.stats import dataset_stats, split_stats
from bfcl.data.types import Sample

runner = CliRunner()

# SOURCE.md: strict (B-) counts and lenient (conlleval) counts, OTHER counted as MISC.
TWITTER2015 = {
    "train": (4000, {"PER": 2217, "LOC": 2091, "ORG": 927, "MISC": 931}, {"PER": 2285, "LOC": 2135, "ORG": 957, "MISC": 975}),
    "valid": (1000, {"PER": 552, "LOC": 522, "ORG": 247, "MISC": 220}, {"PER": 567, "LOC": 543, "ORG": 251, "MISC": 233}),
    "test": (3257, {"PER": 1816, "LOC": 1697, "ORG": 839, "MISC": 720}, {"PER": 1873, "LOC": 1720, "ORG": 860, "MISC": 754}),
}
# UMT paper Table 1; strict and lenient agree (no stray I- tags).
TWITTER2017 = {
    "train": (3373, {"PER": 2943, "LOC": 731, "ORG": 1674, "MISC": 701}),
    "valid": (723, {"PER": 626, "LOC": 173, "ORG": 375, "MISC": 150}),
    "test": (723, {"PER": 621, "LOC": 178, "ORG": 395, "MISC": 157}),
}


def _json(args: list[str]) -> dict:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_twitter2017_matches_paper(shared_data):
    stats = _json(["data", "stats", str(shared_data / "twitter2017"), "--json"])
    assert list(stats) == ["train", "valid", "test"]
    for split, (n, counts) in TWITTER2017.items():
        assert stats[split] == {"samples": n, "entities": counts, "entities_strict": counts}


def test_twitter2015_matches_source_table(shared_data):
    stats = _json(["data", "stats", str(shared_data / "twitter2015"), "--json"])
    assert list(stats) == ["train", "valid", "test"]
    for split, (n, strict, lenient) in TWITTER2015.items():
        assert stats[split] == {"samples": n, "entities": lenient, "entities_strict": strict}


def test_twitter2015_no_map_other_and_images(shared_data):
    root = shared_data / "twitter2015"
    stats = _json(["data", "stats", str(root), "--json", "--no-map-other", "--images", str(root / "images_sample")])
    assert stats["train"]["entities_strict"]["OTHER"] == 931 and "MISC" not in stats["train"]["entities"]
    for split, (n, _, _) in TWITTER2015.items():
        assert stats[split]["images_found"] == 5
        assert stats[split]["images_missing"] == n - 5


def test_table_output(shared_data):
    result = runner.invoke(app, ["data", "stats", str(shared_data / "twitter2017")])
    assert result.exit_code == 0, result.output
    assert "train: 3373 samples" in result.output and "2943" in result.output and "6049" in result.output


def test_stats_on_small_dir_and_single_file(tmp_path):
    (tmp_path / "train.txt").write_text("IMGID:1\nA\tI-OTHER\nB\tO\nC\tB-PER\n\nIMGID:2\nD\tO\n")
    (tmp_path / "dev.txt").write_text("IMGID:3\nE\tB-LOC\n")
    (tmp_path / "1.jpg").write_bytes(b"x")
    stats = dataset_stats(tmp_path, images_dir=tmp_path)
    assert stats == {
        "train": {
            "samples": 2,
            "entities": {"MISC": 1, "PER": 1},
            "entities_strict": {"MISC": 0, "PER": 1},
            "images_found": 1,
            "images_missing": 1,
        },
        "dev": {"samples": 1, "entities": {"LOC": 1}, "entities_strict": {"LOC": 1}, "images_found": 0, "images_missing": 1},
    }
    assert list(dataset_stats(tmp_path / "dev.txt")) == ["dev"]
    assert split_stats([Sample(id="u", tokens=["a"])]) == {"samples": 1, "entities": {}, "entities_strict": {}}


def test_stats_errors(tmp_path):
    result = runner.invoke(app, ["data", "stats", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "dataset directory not found" in result.output
    (tmp_path / "train.txt").write_text("IMGID:1\nA\tB-\n")
    result = runner.invoke(app, ["data", "stats", str(tmp_path)])
    assert result.exit_code == 1 and f"{tmp_path / 'train.txt'}:2:" in result.output
    result = runner.invoke(app, ["data", "stats", str(tmp_path), "--images", str(tmp_path / "imgs")])
    assert result.exit_code == 1 and "images directory not found" in result.output
    empty = tmp_path / "test.txt"
    empty.write_text("\n")
    result = runner.invoke(app, ["data", "stats", str(empty)])
    assert result.exit_code == 1 and f"{empty}:1: the test file is empty: no samples" in result.output


# ---- evaluate -------------------------------------------------------------------

GOLD = "IMGID:1\nJohn\tB-PER\nin\tO\nParis\tI-LOC\n\nIMGID:2\nBig\tB-OTHER\nApple\tI-OTHER\n"
PRED = "IMGID:1\nJohn\tB-PER\nin\tO\nParis\tB-LOC\n\nIMGID:2\nBig\tB-ORG\nApple\tI-ORG\n"


def _files(tmp_path: Path, gold: str = GOLD, pred: str = PRED) -> tuple[Path, Path]:
    g, p = tmp_path / "gold.txt", tmp_path / "pred.txt"
    g.write_text(gold)
    p.write_text(pred)
    return g, p


def test_evaluate_json_conlleval_and_strict(tmp_path):
    g, p = _files(tmp_path)
    # conlleval: gold PER, LOC (stray I-LOC), MISC; pred PER, LOC, ORG -> 2 correct of 3 and 3: P=R=F1=2/3
    s = _json(["evaluate", "--gold", str(g), "--pred", str(p), "--json"])
    assert s["f1"] == pytest.approx(2 / 3) and set(s["per_type"]) == {"PER", "LOC", "MISC", "ORG"}
    # strict: gold PER, MISC; pred PER, LOC, ORG -> 1 correct: P=1/3, R=1/2
    s = _json(["evaluate", "--gold", str(g), "--pred", str(p), "--json", "--strict"])
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 2)
    s = _json(["evaluate", "--gold", str(g), "--pred", str(p), "--json", "--no-map-other"])
    assert "OTHER" in s["per_type"] and "MISC" not in s["per_type"]


def test_evaluate_table(tmp_path):
    g, p = _files(tmp_path)
    result = runner.invoke(app, ["evaluate", "--gold", str(g), "--pred", str(p)])
    assert result.exit_code == 0, result.output
    assert "overall (micro)" in result.output and "66.67" in result.output


def test_evaluate_misaligned_names_sample_and_file(tmp_path):
    g, p = _files(tmp_path, pred=PRED.replace("in\tO\n", ""))
    result = runner.invoke(app, ["evaluate", "--gold", str(g), "--pred", str(p)])
    assert result.exit_code == 1
    assert "sample 1" in result.output and "'1'" in result.output and "pred.txt" in result.output
    assert "gold has 3 tokens but prediction has 2" in result.output
    g, p = _files(tmp_path, pred=PRED.split("\n\n")[0] + "\n")
    result = runner.invoke(app, ["evaluate", "--gold", str(g), "--pred", str(p)])
    assert result.exit_code == 1 and "pred.txt has 1 samples but gold" in result.output
    g, p = _files(tmp_path, pred=PRED.replace("B-LOC", "LOC"))
    result = runner.invoke(app, ["evaluate", "--gold", str(g), "--pred", str(p)])
    assert result.exit_code == 1 and f"{p}:4:" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gold", "g.txt"], "give --gold FILE and --pred FILE"),
        ([], "give --gold FILE and --pred FILE"),
        (["--gold", "g", "--pred", "p", "--output", "o"], "only apply with --model"),
        (["--model", "m"], "--model needs --data"),
        (["--model", "m", "--data", "d", "--gold", "g"], "either --model/--data or --gold/--pred"),
    ],
)
def test_evaluate_usage_errors(args, message):
    result = runner.invoke(app, ["evaluate", *args])
    assert result.exit_code == 2 and message in result.output


def test_evaluate_missing_gold_file(tmp_path):
    result = runner.invoke(app, ["evaluate", "--gold", str(tmp_path / "g.txt"), "--pred", str(tmp_path / "p.txt")])
    assert result.exit_code == 1 and "data file not found" in result.output


def test_evaluate_model_delegates(monkeypatch, tmp_path):
    calls = []

    def fake(model, data, images, output, **kwargs):
        calls.append((model, data, images, output, kwargs))
        return {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "per_type": {}}

    module = types.ModuleType("bfcl.inference.evaluate")
    module.evaluate_model_cli = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bfcl.inference.evaluate", module)
    s = _json(["evaluate", "--model", "m", "--data", "d.txt", "--images", "imgs", "--output", "o.txt", "--json", "--strict"])
    assert s["f1"] == pytest.approx(2 / 3)
    assert calls == [
        (Path("m"), Path("d.txt"), Path("imgs"), Path("o.txt"), {"map_other_to_misc": True, "strict": True, "strict_data": False, "confusion": False})
    ]


def test_evaluate_model_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "bfcl.inference.evaluate", None)  # import fails as if absent
    result = runner.invoke(app, ["evaluate", "--model", "m", "--data", "d.txt"])
    assert result.exit_code == 1 and "model evaluation (bfcl.inference.evaluate) is not available" in result.output
