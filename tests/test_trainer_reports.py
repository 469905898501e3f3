"""What ``bfcl train`` tells the user and records: image coverage, what the model was
trained on, the tokenisation style, label repairs, step lines, and a fresh log per run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import bfcl.training.trainer as trainer
from bfcl.inference.predictor import Predictor
from bfcl.model.configuration import BFCLConfig
from bfcl.training.config import TrainConfig
from helpers import tiny_encoder, tokenizer

TRAIN = [  # Twitter-2015-like tokens: @user and #tag whole, numbers split at separators
    (["RT", "@Obama", ":", "Paris", "is", "great", "#travel"], ["O", "B-PER", "O", "B-LOC", "O", "O", "B-OTHER"]),
    (["@espn", "paid", "10", ",", "000", "to", "Kawhi", "Leonard"], ["B-ORG", "O", "O", "O", "O", "O", "B-PER", "I-PER"]),
    (["Leonard", "and", "#NBA", "in", "New", "York"], ["I-PER", "O", "B-OTHER", "O", "B-LOC", "I-LOC"]),  # stray I-PER
    (["the", "2", ".", "99", "deal", "from", "@Apple"], ["O", "O", "O", "O", "O", "O", "B-ORG"]),
]


def write_umt(path: Path, rows, prefix: str) -> None:
    lines = []
    for i, (tokens, labels) in enumerate(rows):
        lines.append(f"IMGID:{prefix}{i}")
        lines += [f"{t}\t{l}" for t, l in zip(tokens, labels)]
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_umt(d / "train.txt", TRAIN * 4, "t")
    write_umt(d / "valid.txt", TRAIN, "v")
    (d / "images").mkdir()
    for i in range(len(TRAIN) * 4):
        (d / "images" / f"t{i}.jpg").write_bytes(b"not decoded: the test cache below stands in for the CNN")
    (d / "no-images").mkdir()
    return d


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny-bert")
    tiny_encoder().save_pretrained(d)
    tokenizer().save_pretrained(d)
    return d


class GridCache:
    """Stands in for the frozen CNN + feature cache: a fixed random grid per existing file."""

    def encode_images(self, paths, on_error="none"):
        g = torch.Generator().manual_seed(0)
        return [None if p is None else torch.randn(4, 16, generator=g) for p in paths]


@pytest.fixture
def fake_cnn(monkeypatch):
    def build(model_cfg, tc):
        model_cfg.image_dim, model_cfg.num_regions = 16, 4
        return GridCache()

    monkeypatch.setattr(trainer, "build_feature_cache", build)


def run(encoder_dir, data_dir, out, images, **kw):
    model = BFCLConfig(
        text_encoder=str(encoder_dir), d_model=32, num_heads=4, ffn_dim=64, num_layers=2, dropout=0.0,
        contrastive_dim=8, num_bottlenecks=2,
    )
    tc = TrainConfig(
        data_dir=str(data_dir), images_dir=str(data_dir / images), epochs=1, batch_size=4, lr=1e-3, head_lr=1e-3,
        output_dir=str(out), progress=False, evaluate_test=False, feature_cache=None, num_threads=1, **kw,
    )
    return trainer.train(model, tc)


def messages(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def test_train_reports_and_records_what_the_model_saw(encoder_dir, data_dir, tmp_path, fake_cnn, caplog):
    out = tmp_path / "run"
    # the training and evaluation data are read by bfcl.data.splits, which logs the OTHER -> MISC count
    with caplog.at_level(logging.INFO, logger="bfcl.train"), caplog.at_level(logging.INFO, logger="bfcl.data.splits"):
        summary = run(encoder_dir, data_dir, out, "images", log_every_steps=1)
    text = messages(caplog)
    assert "image coverage, train: 16 of 16 posts have an image (100.0%)" in text
    assert "image coverage, dev: 0 of 4 posts have an image (0.0%)" in text
    # 2 per copy of TRAIN in train.txt
    assert f"{data_dir / 'train.txt'}: 8 OTHER label(s) read as MISC (map_other_to_misc)" in text
    assert "repair_stray_i: 4 stray I-X label(s)" in text
    assert "epoch 1/1 step 1/4: loss" in text and "step 4/4" in text
    assert "tweet_style: twitter2015, inferred from the training tokens" in text
    assert "tokenisation: style twitter2015 (inferred twitter2015) gives back 100.00% of the 16 training sentences" in text

    assert summary["training_data"] == {"train_posts": 16, "train_posts_with_image": 16}
    assert summary["tokenisation"]["style"] == "twitter2015" and summary["tokenisation"]["agreement"]["joined"] == 1.0
    for folder in ("best", "last"):
        cfg = json.loads((out / folder / "config.json").read_text())
        assert cfg["training_data"] == {"train_posts": 16, "train_posts_with_image": 16}
        assert cfg["model"]["tweet_style"] == "twitter2015"
    assert json.loads((out / "summary.json").read_text())["tokenisation"]["inferred"] == "twitter2015"


def test_missing_images_are_reported_loudly_and_the_model_ignores_images(encoder_dir, data_dir, tmp_path, fake_cnn, caplog, monkeypatch):
    out = tmp_path / "run"
    run(encoder_dir, data_dir, out, "images")
    first_log = (out / "log.jsonl").read_text()
    with caplog.at_level(logging.INFO, logger="bfcl.train"):
        summary = run(encoder_dir, data_dir, out, "no-images")
    text = messages(caplog)
    assert "!!! only 0 of 16 training posts (0.0%) have a usable image" in text
    assert "most images are missing" in text
    # a fresh run in a used folder starts a fresh log and keeps the old one
    assert (out / "log.previous-1.jsonl").read_text() == first_log
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    assert "moved to log.previous-1.jsonl" in text
    assert summary["training_data"]["train_posts_with_image"] == 0
    import bfcl.encoders.image as image_encoders

    def no_cnn(name):
        raise AssertionError("the CNN must not be built for this model")

    monkeypatch.setattr(image_encoders, "build_image_encoder", no_cnn)
    pred = Predictor.load(out / "best")
    assert pred.ignores_images and pred.cache is None


def test_an_explicit_style_that_does_not_fit_the_data_is_kept_with_a_warning(encoder_dir, data_dir, tmp_path, caplog):
    model = BFCLConfig(text_encoder=str(encoder_dir), image_encoder="none", multimodal=False, tweet_style="twitter2017")
    tc = TrainConfig(data_dir=str(data_dir), epochs=1, batch_size=8, output_dir=str(tmp_path / "run"), progress=False,
                     evaluate_test=False, num_threads=1)
    with caplog.at_level(logging.INFO, logger="bfcl.train"):
        summary = trainer.train(model, tc)
    assert "tweet_style=twitter2017 is set, but the training tokens look like twitter2015" in messages(caplog)
    assert summary["tokenisation"]["style"] == "twitter2017" and summary["tokenisation"]["agreement"]["joined"] < 1.0
