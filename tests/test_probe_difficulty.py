"""The probe's difficulty settings: the default stays the original probe; "hard" changes only the pictures
(and the training size), deterministically; `bfcl probe` writes a folder `bfcl experiment --data` reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bfcl.cli import app
from bfcl.demo.probe import DIFFICULTIES, IMAGE_CLASSES, OBJECT_CLASSES, ProbeSettings, draw_image, make_probe

SMALL = {"n_train": 40, "n_dev": 8, "n_test": 12}


def _plain(output: str) -> str:
    """typer's error box, unwrapped."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def test_easy_is_the_default_probe():
    a, b = make_probe(seed=4, **SMALL), make_probe(seed=4, difficulty="easy", **SMALL)
    assert [s.meta for s in a.train] == [s.meta for s in b.train]
    assert all(a.images[k].tobytes() == b.images[k].tobytes() for k in a.images)
    assert DIFFICULTIES["easy"] == ProbeSettings() and not ProbeSettings().composed
    assert len(make_probe(n_dev=0, n_test=0).train) == 600


def test_hard_changes_the_pictures_not_the_text():
    easy, hard = make_probe(seed=4, **SMALL), make_probe(seed=4, difficulty="hard", **SMALL)
    for e, h in zip(easy.train + easy.test, hard.train + hard.test):
        assert (e.tokens, e.labels, e.meta["image_class"]) == (h.tokens, h.labels, h.meta["image_class"])
        assert easy.images[e.image_id].tobytes() != hard.images[h.image_id].tobytes()
        # distractors are other object classes than the one that decides
        assert all(d in OBJECT_CLASSES and d != h.meta["image_class"] for d in h.meta["distractors"])
        assert DIFFICULTIES["hard"].distractors[0] <= len(h.meta["distractors"]) <= DIFFICULTIES["hard"].distractors[1]
    again = make_probe(seed=4, difficulty="hard", **SMALL)
    assert all(hard.images[k].tobytes() == again.images[k].tobytes() for k in hard.images)
    assert len(make_probe(difficulty="hard", n_dev=0, n_test=0).train) == 300  # fewer training posts


def test_hard_pictures_are_composed_small_and_noisier():
    for c in IMAGE_CLASSES:
        img = draw_image(c, 7, "hard")
        assert img.size == (224, 224) and img.mode == "RGB"
        assert img.tobytes() == draw_image(c, 7, DIFFICULTIES["hard"]).tobytes()
    # a full-frame logo is mostly its white card; a hard one is a small card on a busy background
    easy = np.asarray(draw_image("logo", 7), dtype=float)
    hard = np.asarray(draw_image("logo", 7, "hard"), dtype=float)
    assert (easy.min(-1) > 230).mean() > 2 * (hard.min(-1) > 230).mean()


def test_settings_are_validated():
    with pytest.raises(ValueError, match="the deciding object is the largest"):
        ProbeSettings(object_scale=(0.3, 0.5), distractors=(1, 2), distractor_scale=(0.2, 0.4))
    with pytest.raises(ValueError, match="object_scale"):
        ProbeSettings(object_scale=(0.6, 0.5))
    with pytest.raises(ValueError, match="unknown probe difficulty 'medium'"):
        make_probe(difficulty="medium")
    custom = ProbeSettings(n_train=5, object_scale=(0.5, 0.5))
    assert custom.composed and len(make_probe(difficulty=custom, n_dev=0, n_test=0).train) == 5


def test_cli_probe_writes_a_data_folder(tmp_path: Path):
    out = tmp_path / "hard"
    r = CliRunner().invoke(app, ["probe", "--out", str(out), "--difficulty", "hard", "--n-train", "6", "--n-dev", "2", "--n-test", "2"])
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == {"train.txt", "valid.txt", "test.txt", "images", "probe.json"}
    assert len(list((out / "images").glob("*.png"))) == 10
    record = json.loads((out / "probe.json").read_text())
    assert record["difficulty"] == "hard" and record["sizes"] == {"train": 6, "dev": 2, "test": 2}
    r = CliRunner().invoke(app, ["probe", "--out", str(out)])  # never overwrites a data set
    assert r.exit_code == 2 and "already holds a data set" in _plain(r.output)
    r = CliRunner().invoke(app, ["demo", "--probe-difficulty", "medium"])
    assert r.exit_code == 2 and "easy, hard" in _plain(r.output)
    easy = tmp_path / "easy"
    assert CliRunner().invoke(app, ["probe", "--out", str(easy), "--n-train", "2", "--n-dev", "0", "--n-test", "0"]).exit_code == 0
    assert not (easy / "probe.json").exists()  # the default probe's folder is as it always was
