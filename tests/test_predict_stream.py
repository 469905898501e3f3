"""Streamed `bfcl predict --input X.jsonl`: same output as predicting the whole list, flat memory, resumable."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

import bfcl
import bfcl.cli.predict as predict_cli
from bfcl.cli import app
from bfcl.cli.predict_stream import complete_lines, part_path
from bfcl.data.jsonl import read_jsonl
from helpers import tiny_model

WORDS = "Obama Paris went to the NBA game with Kolo and @Apple at #London today :) RT new http://t.co/x".split()
CHUNK = 64  # several chunks out of a few hundred posts


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text_model")
    tiny_model(image_encoder="none").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def posts(tmp_path_factory) -> Path:
    rng = random.Random(7)
    path = tmp_path_factory.mktemp("posts") / "posts.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(300):
            words = [rng.choice(WORDS) for _ in range(rng.randint(1, 25))]
            post = {"id": f"p{i}" if i % 3 else i, "text": " ".join(words)} if i % 5 else {"id": i, "tokens": words}
            f.write(json.dumps(post) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(model_dir, posts, tmp_path_factory) -> str:
    """The whole list read at once and predicted by the non-streaming writer (in chunks of the
    same size: a score can move in its 6th digit with the posts batched beside it)."""
    records, _ = read_jsonl(posts, None, "none")
    out = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(predict_cli, "CHUNK_POSTS", CHUNK)
        predict_cli._predict_file(bfcl.load(model_dir), records, "jsonl", out, 32, False)
    return out.read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(predict_cli, "CHUNK_POSTS", CHUNK)


def run(model_dir, posts, out, *extra):
    r = CliRunner().invoke(app, ["predict", "-m", str(model_dir), "-i", str(posts), "-o", str(out), "--threads", "1", *extra])
    return r


def test_streamed_output_equals_the_whole_list(model_dir, posts, reference, tmp_path, monkeypatch):
    from bfcl.inference.predictor import Predictor

    real = Predictor.predict_batch
    sizes = []

    def spy(self, items, **kw):
        sizes.append(len(items))
        return real(self, items, **kw)

    monkeypatch.setattr(Predictor, "predict_batch", spy)
    out = tmp_path / "out.jsonl"
    r = run(model_dir, posts, out)
    assert r.exit_code == 0, r.output
    assert out.read_text(encoding="utf-8") == reference
    assert sizes == [CHUNK] * 4 + [300 - 4 * CHUNK]  # never more than a chunk in memory
    assert not part_path(out).exists()
    assert "300 prediction(s)" in r.output


@pytest.mark.parametrize("cut", [0, 1, 100, 211, None])
def test_resume_after_a_kill_gives_the_same_file(model_dir, posts, reference, tmp_path, cut):
    out = tmp_path / "out.jsonl"
    lines = reference.splitlines(keepends=True)
    if cut is None:  # the whole output already there: nothing left to predict
        partial, kept = reference, len(lines)
    else:  # cut lines, then half of the next line, as a kill mid-write leaves them
        partial, kept = "".join(lines[:cut]) + lines[cut][: len(lines[cut]) // 2], cut
    part_path(out).write_text(partial, encoding="utf-8")
    r = run(model_dir, posts, out, "--resume")
    assert r.exit_code == 0, r.output
    assert out.read_text(encoding="utf-8") == reference
    assert not part_path(out).exists()
    if kept:
        assert f"resumed after {kept}" in r.output


def test_resume_from_a_truncated_output(model_dir, posts, reference, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(reference[: len(reference) // 3], encoding="utf-8")
    r = run(model_dir, posts, out, "--resume")
    assert r.exit_code == 0, r.output
    assert out.read_text(encoding="utf-8") == reference


def test_resume_refuses_another_input(model_dir, posts, reference, tmp_path):
    out = tmp_path / "out.jsonl"
    lines = reference.splitlines(keepends=True)
    part_path(out).write_text(lines[0] + lines[2], encoding="utf-8")
    r = run(model_dir, posts, out, "--resume")
    assert r.exit_code == 1
    text = " ".join(r.output.split())
    assert f"{part_path(out)}:2: cannot resume" in text and '"p1"' in text and "another input" in text


def test_without_resume_a_part_file_is_started_over(model_dir, posts, reference, tmp_path):
    out = tmp_path / "out.jsonl"
    part_path(out).write_text("stale\n", encoding="utf-8")
    r = run(model_dir, posts, out)
    assert r.exit_code == 0 and "started over" in r.output
    assert out.read_text(encoding="utf-8") == reference


def test_a_bad_line_keeps_the_predictions_so_far(model_dir, posts, reference, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = posts.read_text(encoding="utf-8").splitlines(keepends=True)
    bad.write_text("".join(lines[:150]) + "{oops\n" + "".join(lines[150:]), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    r = run(model_dir, bad, out)
    assert r.exit_code == 1 and f"{bad}:151" in r.output and "--resume" in r.output
    assert not out.exists() and complete_lines(part_path(out)) == 2 * CHUNK  # the chunks before the bad line
    bad.write_text("".join(lines), encoding="utf-8")  # fixed
    r = run(model_dir, bad, out, "--resume")
    assert r.exit_code == 0, r.output
    assert out.read_text(encoding="utf-8") == reference


def test_resume_usage_errors(model_dir, posts, tmp_path):
    r = CliRunner().invoke(app, ["predict", "-m", str(model_dir), "-i", str(posts), "--resume"])
    assert r.exit_code == 2 and "--resume needs --output" in r.output
    r = run(model_dir, posts, tmp_path / "out.txt", "--format", "conll", "--resume")
    assert r.exit_code == 2 and "--resume applies to JSONL" in r.output


def test_complete_lines_cuts_a_partial_line(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c"')
    assert complete_lines(p) == 2 and p.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    p.write_bytes(b"")
    assert complete_lines(p) == 0
