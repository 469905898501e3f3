"""The processor (post -> batch -> per-post results), the complete config, and the shared types."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bfcl.data.labels import LabelSet
from bfcl.data.types import Post, Sample
from bfcl.encoders.dimensions import image_dims, text_dim
from bfcl.errors import ConfigError
from bfcl.model.configuration import BFCLConfig
from bfcl.model.modeling import BFCL, build_model
from bfcl.processing import BFCLProcessor, run_posts
from bfcl.training.config import load_run_config
from helpers import LABELS, tiny_config, tiny_encoder, tiny_model, tokenizer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_text_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny-bert")
    tiny_encoder().save_pretrained(d)
    tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_hf_resnet(tmp_path_factory) -> Path:
    """A transformers ResNet config on disk: what an ``hf:`` image encoder's size is read from."""
    from transformers import ResNetConfig

    d = tmp_path_factory.mktemp("tiny-resnet")
    ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 40], depths=[1, 1, 1, 1]).save_pretrained(d)
    return d


# ---- a complete configuration ------------------------------------------------------


def test_image_sizes_come_from_the_encoder_name(tiny_hf_resnet):
    assert image_dims("efficientnet-lite0") == (1280, 49)
    assert image_dims("resnet152-resmem") == (2048, 49)
    assert image_dims("resnet200:/any/file.safetensors") == (2048, 49)
    assert image_dims(f"hf:{tiny_hf_resnet}") == (40, 49)
    assert image_dims("hf:/no/such/model") == (0, 49)
    assert image_dims("none")[0] == 0
    cfg = BFCLConfig()
    assert (cfg.image_dim, cfg.num_regions, cfg.text_dim) == (1280, 49, 384) and cfg.takes_images
    assert BFCLConfig(multimodal=False).image_dim == 0  # a text-only config needs no image size
    assert BFCLConfig(image_dim=16, num_regions=4).image_dim == 16  # given sizes are kept


def test_text_dim_comes_from_the_text_encoder_config(tiny_text_dir):
    assert text_dim("minilm") == 384
    assert BFCLConfig(text_encoder=str(tiny_text_dir)).text_dim == 32
    assert text_dim("/no/such/encoder") == 0  # unknown offline: build_model takes it from the encoder


def test_nothing_writes_into_a_config():
    cfg = tiny_config()  # minilm by name (384), built on a 32-wide encoder
    before = cfg.to_dict()
    model = BFCL(cfg, tiny_encoder(), tokenizer())
    assert cfg.to_dict() == before and model.config is not cfg and model.config.text_dim == 32
    same = tiny_config(text_dim=32)
    assert BFCL(same, tiny_encoder(), tokenizer()).config is same


def test_build_model_refuses_a_multimodal_config_that_cannot_take_images():
    cfg = BFCLConfig(image_encoder="hf:/no/such/resnet", labels=list(LABELS))
    assert cfg.uses_image and cfg.image_dim == 0
    with pytest.raises(ConfigError, match=r"hf:/no/such/resnet.*image_dim=0"):
        build_model(cfg, pretrained=False)


def _usable_text_encoder(name: str) -> bool:
    try:
        BFCLProcessor.from_config(BFCLConfig(text_encoder=name, multimodal=False))
    except (ConfigError, RuntimeError, ImportError, OSError):
        return False
    return True


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_builds_a_model_that_reads_images_where_it_says(path, tiny_text_dir, tiny_hf_resnet):
    cfg, _ = load_run_config(path)
    cfg = replace(cfg, labels=list(LABELS))
    if cfg.text_encoder.startswith("mpnet") and not _usable_text_encoder(cfg.text_encoder):
        pytest.skip("the mpnet extra is not installed")
    if text_dim(cfg.text_encoder) == 0:  # a hub encoder not on this machine (paper configs): no network here
        cfg = replace(cfg, text_encoder=str(tiny_text_dir), text_dim=0)
    if cfg.uses_image and not cfg.takes_images:  # hf:microsoft/resnet-152 off the hub: refused, not ignored
        with pytest.raises(ConfigError, match="image_dim=0"):
            build_model(cfg, pretrained=False)
        cfg = replace(cfg, image_encoder=f"hf:{tiny_hf_resnet}", image_dim=0)
    model = build_model(cfg, pretrained=False).eval()
    assert (model.config.multimodal and model.image_proj is not None) == cfg.uses_image
    processor = BFCLProcessor.for_model(model)
    sample = Sample("s", ["Kobe", "Bryant", "in", "Paris"])
    grid = torch.randn(cfg.num_regions, cfg.image_dim) if cfg.uses_image else None
    with_image = run_posts(model, [sample], [grid], processor=processor)[0].emissions
    without = run_posts(model, [sample], [None], processor=processor)[0].emissions
    assert with_image.shape == (4, len(LABELS))
    assert (not torch.allclose(with_image, without)) == cfg.uses_image  # the image changes the emissions


# ---- the processor -----------------------------------------------------------------------


def test_processor_batches_and_stitches_long_posts():
    model = tiny_model()
    processor = BFCLProcessor.for_model(model)
    long = Sample("long", [f"word{i}" for i in range(40)], ["O"] * 40)  # several 32-piece windows
    short = Sample("short", ["Paris"], ["B-LOC"])
    items = processor.windows([long, short], labels=LabelSet(LABELS))
    assert len({it.sample_index for it in items}) == 2 and sum(it.sample_index == 0 for it in items) > 1
    seen = []
    for idx, batch in processor.batches(items, 2):
        seen += idx
        assert batch["input_ids"].shape[0] == len(idx) and "labels" in batch
    assert sorted(seen) == list(range(len(items)))
    rows = [torch.full((it.window.num_words, 3), float(it.window.first_word)) for it in items]
    stitched = processor.stitch_posts(items, rows, 2)
    assert [len(p) for p in stitched] == [40, 1]


def test_processor_saves_and_loads_next_to_the_model(tmp_path):
    model = tiny_model(tweet_style="twitter2017")
    model.save_pretrained(tmp_path / "ckpt")
    loaded = BFCLProcessor.from_pretrained(tmp_path / "ckpt")
    assert loaded.tweet_style == "twitter2017" and loaded.config.labels == list(LABELS)
    assert loaded.tokenizer("a b")["input_ids"] == tokenizer()("a b")["input_ids"]
    assert [t.text for t in loaded.tokenize("@user: hi!")] == [t.text for t in BFCLProcessor.for_model(model).tokenize("@user: hi!")]
    loaded.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer" / "tokenizer.json").is_file()


def test_attaching_an_image_encoder_checks_its_sizes(tmp_path):
    wrong = BFCLProcessor.for_model(tiny_model(image_dim=16))  # efficientnet-lite0 gives 1280, not 16
    with pytest.raises(ConfigError, match="num_regions=49, image_dim=16"):
        wrong.attach_image_encoder(tmp_path)
    text_only = BFCLProcessor.for_model(tiny_model(multimodal=False))
    assert text_only.attach_image_encoder(tmp_path) is None and text_only.image_features([b"x"]) == [None]


# ---- one post type ---------------------------------------------------------------------------


def test_post_coerce_accepts_every_documented_shape_and_names_the_bad_item():
    assert Post.coerce("hi there", 0) == Post(text="hi there")
    assert Post.coerce(["a", "b"], 0).words == ["a", "b"]
    assert Post.coerce(("hi", b"img"), 0) == Post(text="hi", image=b"img")
    assert Post.coerce((["a"], None), 0).tokens == ("a",)
    assert Post.coerce({"tokens": ["a"], "image": "p.jpg"}, 0) == Post(tokens=("a",), image="p.jpg")
    assert Post.coerce({"text": "x", "tokens": ["y"]}, 0).words == "x"
    with pytest.raises(ValueError, match="item 3: needs a 'text' or 'tokens' field"):
        Post.coerce({"image": "p.jpg"}, 3)
    with pytest.raises(TypeError, match="item 4: expected a string"):
        Post.coerce(42, 4)
    with pytest.raises(TypeError, match="item 5: text must be"):
        Post.coerce((42, None), 5)


# ---- where batches are built, and which way imports point ---------------------------------------


def _grep(pattern: str) -> list[str]:
    out = subprocess.run(["grep", "-rnE", pattern, "src/bfcl"], cwd=ROOT, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


def test_batches_are_built_only_in_the_processor():
    calls = _grep(r"(collate|make_items|WordAligner)\(")
    places = {line.split(":")[0] for line in calls if not re.search(r":\s*(def|class) ", line)}
    assert places <= {"src/bfcl/processing.py"}, calls


def test_training_and_inference_do_not_import_each_other():
    assert not [line for line in _grep(r"(from|import) bfcl\.inference") if line.startswith("src/bfcl/training/")]
    assert not [line for line in _grep(r"(from|import) bfcl\.training") if line.startswith("src/bfcl/inference/")]
