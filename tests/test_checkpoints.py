"""Checkpoint folders: atomic writes, manifests, and loading that refuses anything tampered."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from bfcl.data.labels import validate_label_set
from bfcl.errors import CheckpointError
from bfcl.model.checkpoint_files import (
    MANIFEST_NAME,
    atomic_directory,
    read_manifest,
    recover_interrupted_save,
    verify_checkpoint,
)
from bfcl.model.modeling import BFCL
from helpers import LABELS, tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model"
    tiny_model(image_encoder="none").save_pretrained(path)
    return path


@pytest.fixture
def ckpt(saved, tmp_path) -> Path:
    """A fresh copy of the saved checkpoint, free to tamper with."""
    return Path(shutil.copytree(saved, tmp_path / "model"))


def strip_manifest(path: Path) -> Path:
    (path / MANIFEST_NAME).unlink()
    return path


def edit_config(path: Path, fn) -> None:
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


# ----------------------------------------------------------------- writing


def test_save_writes_a_manifest_of_every_file(saved):
    manifest = read_manifest(saved)
    listed = {e["path"]: e for e in manifest["files"]}
    on_disk = {p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file()} - {MANIFEST_NAME}
    assert set(listed) == on_disk
    assert {"config.json", "model.safetensors"} <= on_disk and any(p.startswith("tokenizer/") for p in on_disk)
    assert listed["model.safetensors"]["size"] == (saved / "model.safetensors").stat().st_size
    assert verify_checkpoint(saved) is True


def test_saving_again_replaces_the_folder_and_leaves_nothing_behind(ckpt):
    model = tiny_model(seed=3, image_encoder="none")
    model.save_pretrained(ckpt)
    assert [p.name for p in ckpt.parent.iterdir()] == ["model"]
    loaded = BFCL.from_pretrained(ckpt)
    torch.testing.assert_close(loaded.emission.weight, model.emission.weight)


def test_a_failed_save_leaves_the_old_checkpoint_untouched(ckpt):
    before = (ckpt / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_directory(ckpt) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert (ckpt / "model.safetensors").read_bytes() == before
    assert [p.name for p in ckpt.parent.iterdir()] == ["model"]
    assert verify_checkpoint(ckpt)


def test_a_folder_that_is_not_a_checkpoint_is_never_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a checkpoint; refusing to replace it"):
        tiny_model(image_encoder="none").save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    tiny_model(image_encoder="none").save_pretrained(empty)
    assert verify_checkpoint(empty)


def test_a_save_killed_between_the_renames_is_completed(ckpt, tmp_path):
    """A kill after the old folder was renamed aside and before the new one was renamed in."""
    new = tmp_path / ".model.tmp-abc"
    shutil.copytree(ckpt, new)
    edit_config(new, lambda c: c.update(epoch=2))
    from bfcl.model.checkpoint_files import write_manifest

    write_manifest(new)
    os.replace(ckpt, tmp_path / ".model.old-xyz")
    assert recover_interrupted_save(ckpt) == ckpt
    assert json.loads((ckpt / "config.json").read_text())["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_incomplete_temporary_folder_is_never_used(ckpt, tmp_path):
    half = tmp_path / ".model.tmp-half"
    half.mkdir()
    (half / "config.json").write_text("{}")  # killed before its manifest: incomplete
    os.replace(ckpt, tmp_path / ".model.old-1")
    assert recover_interrupted_save(ckpt) == ckpt
    assert verify_checkpoint(ckpt) and not half.exists()


# ----------------------------------------------------------------- loading refuses tampering


def test_truncated_weights_are_refused_naming_the_file(ckpt):
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: \d+ bytes, but manifest\.json says \d+"):
        BFCL.from_pretrained(ckpt)


def test_a_file_swapped_from_another_checkpoint_is_refused(ckpt, tmp_path):
    other = tmp_path / "other"
    tiny_model(seed=7, image_encoder="none").save_pretrained(other)
    shutil.copy(other / "model.safetensors", ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: contents do not match the sha256"):
        BFCL.from_pretrained(ckpt)


def test_an_edited_label_is_refused_even_with_the_same_size(ckpt):
    text = (ckpt / "config.json").read_text()
    (ckpt / "config.json").write_text(text.replace('"I-PER"', '"B-LOC"', 1))  # same length
    with pytest.raises(CheckpointError, match=r"config\.json: contents do not match"):
        BFCL.from_pretrained(ckpt)


def test_a_missing_file_is_refused(ckpt):
    victim = next((ckpt / "tokenizer").iterdir())
    victim.unlink()
    with pytest.raises(CheckpointError, match=rf"{victim.name}: missing \(listed in"):
        BFCL.from_pretrained(ckpt)


def test_a_foreign_file_is_refused(ckpt):
    (ckpt / "tokenizer" / "tokenization_evil.py").write_text("raise SystemExit('ran')\n")
    with pytest.raises(CheckpointError, match=r"tokenization_evil\.py: not listed in manifest\.json"):
        BFCL.from_pretrained(ckpt)


class _Payload:
    def __reduce__(self):
        return (open, (os.environ["BFCL_PICKLE_MARKER"], "w"))


def test_pickle_files_are_ignored_never_loaded(ckpt, tmp_path, monkeypatch, caplog):
    marker = tmp_path / "unpickled"
    monkeypatch.setenv("BFCL_PICKLE_MARKER", str(marker))
    for name in ("pytorch_model.bin", "optimizer.pt", "state.pkl"):
        (ckpt / name).write_bytes(pickle.dumps(_Payload()))
    with caplog.at_level(logging.WARNING):
        model = BFCL.from_pretrained(ckpt)
    assert not marker.exists()
    assert model.config.labels == LABELS
    assert sum("ignored and never loaded" in r.getMessage() for r in caplog.records) == 3


# ----------------------------------------------------------------- old checkpoints (no manifest)


def test_a_checkpoint_without_manifest_loads_with_a_warning(ckpt, caplog):
    strip_manifest(ckpt)
    with caplog.at_level(logging.WARNING):
        model = BFCL.from_pretrained(ckpt)
    assert model.config.labels == LABELS
    assert any("has no manifest.json" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda p: (p / "config.json").write_text('{"model": {'), r"config\.json: not valid JSON \(line 1"),
        (lambda p: edit_config(p, lambda c: c.pop("model")), r"config\.json: missing or invalid key 'model'"),
        (lambda p: edit_config(p, lambda c: c.pop("text_encoder_config")), r"missing or invalid key 'text_encoder_config'"),
        (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:50]),
         r"model\.safetensors: unreadable safetensors file"),
        (lambda p: edit_config(p, lambda c: (c["model"].update(labels=LABELS[:7]), c.update(labels={str(i): l for i, l in enumerate(LABELS[:7])}))),
         r"config\.json: model\.labels lists 7 labels, but model\.safetensors was trained for 9"),
        (lambda p: edit_config(p, lambda c: c["model"].update(d_model=64)), r"model\.safetensors: does not fit .*wrong shape"),
        (lambda p: edit_config(p, lambda c: c["model"].update(fusion="sideways")), r"config\.json: invalid model settings: .*fusion='sideways'"),
        (lambda p: edit_config(p, lambda c: c["model"].update(labels=[l if l != "I-PER" else "B-LOC" for l in LABELS])),
         r"not a valid BIO label set: label 8 \('B-LOC'\) repeats label 1"),
        (lambda p: edit_config(p, lambda c: c["model"].update(labels=[l if l != "I-PER" else "I-FOO" for l in LABELS])),
         r"not a valid BIO label set: label 7 \('B-PER'\) has no 'I-PER' partner"),
        (lambda p: edit_config(p, lambda c: c["model"].update(labels=[l if l != "B-LOC" else "X-LOC" for l in LABELS])),
         r"label 1 \('X-LOC'\) is not O, B-<type> or I-<type>"),
        (lambda p: edit_config(p, lambda c: c.update(labels={"0": "O"})), r"'labels' .* disagrees with model\.labels"),
    ],
    ids=["json", "no-model-key", "no-encoder-config", "safetensors-metadata", "num-labels", "shape",
         "bad-setting", "two-B-LOC", "B-without-I", "malformed-label", "labels-disagree"],
)
def test_old_checkpoint_problems_are_checkpoint_errors(ckpt, tamper, message):
    strip_manifest(ckpt)
    tamper(ckpt)
    with pytest.raises(CheckpointError, match=message) as e:
        BFCL.from_pretrained(ckpt)
    assert str(ckpt) in str(e.value)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a bfcl checkpoint: no such folder"):
        BFCL.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="config.json is missing"):
        BFCL.from_pretrained(tmp_path)


# ----------------------------------------------------------------- label sets


def test_validate_label_set():
    assert validate_label_set(LABELS) == tuple(LABELS)
    for bad, msg in [
        ("O", "list of strings"),
        (["B-PER", "I-PER"], "no 'O'"),
        (["O", "B-PER"], "no 'I-PER' partner"),
        (["O", "I-PER"], "no 'B-PER' partner"),
        (["O", "B-PER", "I-PER", "B-PER"], "repeats label 1"),
        (["O", "B-", "I-"], "is not O, B-<type> or I-<type>"),
        (["O", 3], "is not O"),
    ]:
        with pytest.raises(ValueError, match=msg):
            validate_label_set(bad)
