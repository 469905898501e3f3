"""A model knows how many training posts had an image; one that saw none ignores images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bfcl.encoders.image as image_encoders
from bfcl.inference.predictor import Predictor
from helpers import tiny_model


def save(path: Path, seen: int | None) -> Path:
    extra = None if seen is None else {"training_data": {"train_posts": 500, "train_posts_with_image": seen}}
    tiny_model(image_dim=1280).save_pretrained(path, extra=extra)
    return path


@pytest.fixture
def photo(tmp_path) -> Path:
    p = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(p)
    return p


def test_a_model_trained_without_images_ignores_them_and_warns_once(tmp_path, photo, monkeypatch, caplog):
    def no_cnn(name):
        raise AssertionError("the CNN must not be built for a model that never saw an image")

    monkeypatch.setattr(image_encoders, "build_image_encoder", no_cnn)
    path = save(tmp_path / "m", 0)
    assert json.loads((path / "config.json").read_text())["training_data"]["train_posts_with_image"] == 0
    with caplog.at_level(logging.WARNING, logger="bfcl.predict"):
        pred = Predictor.load(path)
        assert pred.train_posts_with_image == 0 and pred.ignores_images and pred.cache is None
        a = pred.predict("Obama visits Paris", image=photo)
        b = pred.predict_batch([("Merkel in Berlin", photo), ("no picture", None)])
    assert a.has_image is False and [p.has_image for p in b] == [False, False]
    assert a.to_dict()["has_image"] is False
    warnings = [r for r in caplog.records if "trained without images" in r.getMessage()]
    assert len(warnings) == 1


def test_few_training_images_warn_that_the_image_weights_are_barely_trained(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(image_encoders, "build_image_encoder", lambda name: None)
    with caplog.at_level(logging.WARNING, logger="bfcl.predict"):
        pred = Predictor.load(save(tmp_path / "m", 42))
    assert pred.train_posts_with_image == 42 and not pred.ignores_images
    assert any("only 42 training posts with an image" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("seen", [None, 5000])
def test_old_or_well_trained_checkpoints_use_images_without_a_word(tmp_path, monkeypatch, caplog, seen):
    built = []
    monkeypatch.setattr(image_encoders, "build_image_encoder", lambda name: built.append(name))
    with caplog.at_level(logging.WARNING, logger="bfcl.predict"):
        pred = Predictor.load(save(tmp_path / "m", seen))
    assert pred.train_posts_with_image == seen and not pred.ignores_images
    assert built == ["efficientnet-lite0"]  # the image path is set up as before
    assert not caplog.records


def test_a_model_built_in_memory_knows_nothing():
    pred = Predictor(tiny_model(image_encoder="none"))
    assert pred.train_posts_with_image is None and not pred.ignores_images
