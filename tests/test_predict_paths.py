"""The fast prediction path gives what the straightforward one gives.

``predict`` / ``predict_batch`` batch windows by length, tokenise every post in one
tokenizer call, read features in the cache's storage dtype, stitch emissions as tensor
slices, skip unused word shapes, run the forward in inference mode and score every
entity span of every post in one CRF pass. Each test here holds one of those to a
plain reference: each window run alone, stitched word by word, each span scored on
its own. Tiny random models; a forced emission bias makes entities with scores well
inside (0, 1).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bfcl
from bfcl.data.alignment import WordAligner, stitch
from bfcl.data.batching import collate, make_items
from bfcl.data.labels import LabelSet, spans
from bfcl.data.shapes import word_shape
from bfcl.data.types import Sample
from bfcl.encoders.cache import FeatureCache
from bfcl.inference.predictor import Predictor
from bfcl.model.attention import MultiHeadAttention
from bfcl.processing import BFCLProcessor, pad_posts, run_posts
from helpers import LABELS, tiny_model, tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MESSY = "RT @Kolo_x:  Paris\u00a0is\tgreat 👋🏽🇫🇷 #NBA see https://t.co/abc?x=1 Dr.\u2009Who don't 10,000 :) e\u0301te\u0301"


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def image_predictor(tmp_path_factory) -> Predictor:
    """CRF decoder, the real packaged EfficientNet-Lite0 image path, max_length 32 (long posts: windows)."""
    path = tmp_path_factory.mktemp("image_model")
    tiny_model(image_dim=1280, image_encoder="efficientnet-lite0").save_pretrained(path)
    return bfcl.load(path, feature_cache=tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def text_predictor(tmp_path_factory) -> Predictor:
    """Text only, softmax decoder, word shapes read by the emission layer."""
    path = tmp_path_factory.mktemp("text_model")
    tiny_model(multimodal=False, image_encoder="none", decoder="softmax", word_shape_dim=8).save_pretrained(path)
    return bfcl.load(path)


@contextmanager
def entities_likely(p: Predictor) -> Iterator[None]:
    """A mild push towards B-PER / I-PER: entities appear, their scores stay below 1."""
    bias = p.model.emission.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.fill_(0.0)
        bias[LABELS.index("B-PER")] = 1.2
        bias[LABELS.index("I-PER")] = 0.8
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def items_for(png: Path, with_images: bool) -> list:
    image = png if with_images else None
    return [
        ("Kolo met Miri in Lisbon", image),
        "  ",
        (MESSY, image),
        ["Dr.", "John", "Carter", "of", "Acme", "Inc."],
        {"text": " ".join(f"Name{i} went home" for i in range(30)), "image": image},  # several windows
        {"tokens": ["x"], "image": png.read_bytes() if with_images else None},
        ("Initech shares rose 5 % today", None),
        " ".join(f"w{i}" for i in range(75)),
    ]


def reference(p: Predictor, item) -> dict:
    """One post the straightforward way: each window alone, stitched word by word, decoded alone,
    each entity span scored alone."""
    if isinstance(item, dict):
        words_in, image = item.get("text", item.get("tokens")), item.get("image")
    elif isinstance(item, tuple):
        words_in, image = item
    else:
        words_in, image = item, None
    text = words_in if isinstance(words_in, str) else " ".join(words_in)
    toks = p.processor.tokenize(words_in)
    words = [t.text for t in toks]
    [feat] = p.image_features([image])
    if not words:
        return {"text": text, "labels": [], "entities": [], "has_image": feat is not None}
    model, labels = p.model, p.config.labels
    windows = WordAligner(p.processor.tokenizer, max_length=p.config.max_length).encode(words)
    rows = []
    for w in windows:
        n, k = len(w.input_ids), w.num_words
        batch = {
            "input_ids": torch.tensor([w.input_ids]), "attention_mask": torch.ones(1, n, dtype=torch.long),
            "word_starts": torch.tensor([w.word_starts]), "word_mask": torch.ones(1, k, dtype=torch.bool),
            "word_shapes": torch.tensor([[word_shape(x) for x in words[w.first_word : w.first_word + k]]]),
        }
        if feat is not None:
            batch.update(image_features=feat[None], image_mask=torch.ones(1, dtype=torch.bool))
        with torch.no_grad():
            rows.append(list(model(**batch).emissions[0]))
    emissions = torch.stack(stitch(windows, rows))
    mask = torch.ones(1, len(words), dtype=torch.bool)
    tags = [labels[i] for i in model.decode(emissions[None], mask)[0]]
    entities = []
    for typ, s, e in spans(tags, mode="conlleval"):
        ids = [labels.index(t) for t in tags[s:e]]
        if model.crf is not None:
            score = model.crf.span_probability(
                emissions, None, s, e, ids, [labels.index(f"I-{typ}")], constrained=model.decode_constraints
            )
        else:
            probs = torch.softmax(emissions, -1)
            score = float(np.prod([float(probs[j, t]) for j, t in zip(range(s, e), ids)]))
        entities.append((text[toks[s].start : toks[e - 1].end], typ, toks[s].start, toks[e - 1].end, s, e, score))
    return {"text": text, "labels": tags, "entities": entities, "has_image": feat is not None}


def as_reference(pred) -> dict:
    return {
        "text": pred.text, "labels": pred.labels, "has_image": pred.has_image,
        "entities": [(e.text, e.type, e.start, e.end, e.token_start, e.token_end, e.score) for e in pred.entities],
    }


def assert_same(got: dict, want: dict, where: str) -> None:
    assert {k: v for k, v in got.items() if k != "entities"} == {k: v for k, v in want.items() if k != "entities"}, where
    assert [e[:-1] for e in got["entities"]] == [e[:-1] for e in want["entities"]], where
    for g, w in zip(got["entities"], want["entities"]):
        assert g[-1] == pytest.approx(w[-1], abs=1e-5), f"{where}: {g} vs {w}"


@pytest.mark.parametrize("which", ["image", "text"])
@pytest.mark.parametrize("with_images", [True, False])
def test_predict_and_predict_batch_match_the_straightforward_path(which, with_images, image_predictor, text_predictor, png):
    p = image_predictor if which == "image" else text_predictor
    items = items_for(png, with_images)
    with entities_likely(p):
        want = [reference(p, it) for it in items]
        assert sum(len(w["entities"]) for w in want) >= 10  # the scores are really compared
        assert any(0.01 < e[-1] < 0.99 for w in want for e in w["entities"])
        assert sum(w["has_image"] for w in want) == (4 if with_images and which == "image" else 0)
        for k, it in enumerate(items):  # batch 1: predict, once per post
            if isinstance(it, dict):
                got = p.predict(it.get("text", it.get("tokens")), it.get("image"))
            elif isinstance(it, tuple):
                got = p.predict(*it)
            else:
                got = p.predict(it)
            assert_same(as_reference(got), want[k], f"predict, item {k}")
        for bs in (3, 32):
            for k, got in enumerate(p.predict_batch(items, batch_size=bs)):
                assert_same(as_reference(got), want[k], f"predict_batch(batch_size={bs}), item {k}")
        # a shuffled input: the batches are sorted by length inside, and the answers come back in input order
        order = list(range(len(items)))
        random.Random(0).shuffle(order)
        shuffled = p.predict_batch([items[k] for k in order], batch_size=3)
        for k, got in zip(order, shuffled):
            assert_same(as_reference(got), want[k], f"shuffled, item {k}")


def test_entities_of_one_post_equal_their_scores_in_a_batch(image_predictor):
    """``_entities`` (one post) and the batched span scores of ``predict_batch`` agree."""
    p = image_predictor
    with entities_likely(p):
        preds = p.predict_batch(["Kolo met Miri in Lisbon", MESSY, "Tavi and Kolo"], batch_size=32)
        for pred in preds:
            emissions = run_posts(p.model, [Sample("x", [t.text for t in pred.tokens])], [None],
                                  processor=p.processor)[0].emissions
            alone = p._entities(pred.text, pred.tokens, pred.labels, emissions)
            assert [(e.text, e.start, e.end) for e in alone] == [(e.text, e.start, e.end) for e in pred.entities]
            for a, b in zip(alone, pred.entities):
                assert a.score == pytest.approx(b.score, abs=1e-5)


# ---- run_posts ------------------------------------------------------------------------


def test_run_posts_gives_ordinary_tensors_in_input_order():
    """The forward runs in inference mode; what it returns must still work with autograd."""
    model = tiny_model(image_dim=16)
    samples = [Sample(str(i), ["w"] * n) for i, n in enumerate([5, 1, 40, 3, 0, 12])]
    images = [torch.randn(49, 16) if i % 2 else None for i in range(len(samples))]
    res = run_posts(model, samples, images, batch_size=2)
    assert [len(r.label_ids) for r in res] == [5, 1, 40, 3, 0, 12]
    for r in res:
        assert not torch.is_inference(r.emissions)
    weight = torch.ones(len(LABELS), requires_grad=True)
    (res[2].emissions * weight).sum().backward()  # an inference tensor could not be saved for backward
    assert weight.grad is not None
    # each post alone gives the same emissions: batching, sorting and stitching change nothing
    for s, img, r in zip(samples, images, res):
        alone = run_posts(model, [s], [img], batch_size=1)[0]
        torch.testing.assert_close(alone.emissions, r.emissions, atol=1e-5, rtol=1e-5)
        assert alone.label_ids == r.label_ids


def test_run_posts_puts_a_training_model_in_eval_mode():
    model = tiny_model(image_dim=16, dropout=0.5)
    samples = [Sample("a", ["Kolo", "met", "Miri"]), Sample("b", ["x"] * 9)]
    expected = run_posts(model, samples)  # tiny_model is in eval mode
    model.train()
    got = run_posts(model, samples)
    assert not any(m.training for m in model.modules())
    for a, b in zip(got, expected):
        assert torch.equal(a.emissions, b.emissions)


def test_stitch_posts_joins_owned_rows_and_checks_the_tiling():
    model = tiny_model()
    processor = BFCLProcessor.for_model(model)
    samples = [Sample("long", [f"word{i}" for i in range(70)]), Sample("one", ["Paris"]), Sample("none", [])]
    items = processor.windows(samples)
    assert sum(it.sample_index == 0 for it in items) > 2
    rows = [torch.arange(it.window.num_words, dtype=torch.float32)[:, None] + it.window.first_word for it in items]
    stitched = processor.stitch_posts(items, rows, 3)
    assert torch.equal(stitched[0][:, 0], torch.arange(70, dtype=torch.float32))
    assert stitched[1].tolist() == [[0.0]] and stitched[2].shape == (0, len(LABELS))
    # the same as the word-by-word stitch of bfcl.data.alignment
    first = [i for i, it in enumerate(items) if it.sample_index == 0]
    by_words = stitch([items[i].window for i in first], [list(rows[i]) for i in first])
    assert torch.equal(torch.stack(by_words), stitched[0])
    with pytest.raises(ValueError, match="values"):
        processor.stitch_posts(items, [r[:-1] for r in rows], 3)
    with pytest.raises(ValueError, match="tile"):
        processor.stitch_posts([items[i] for i in first[1:]], [rows[i] for i in first[1:]], 1)


def test_pad_posts_pads_with_zeros_and_a_prefix_mask():
    a, b = torch.randn(3, 4), torch.randn(1, 4)
    E, mask = pad_posts([a, b, torch.zeros(0, 4)], 4)
    assert E.shape == (3, 3, 4) and torch.equal(E[0], a) and torch.equal(E[1, :1], b) and not E[1, 1:].any()
    assert mask.tolist() == [[True] * 3, [True, False, False], [False] * 3]
    E, mask = pad_posts([a, a + 1], 4)  # one length: stacked as they are
    assert torch.equal(E, torch.stack([a, a + 1])) and mask.all()
    E, mask = pad_posts([], 4)
    assert E.shape == (0, 1, 4) and mask.shape == (0, 1)


# ---- windows and collate ----------------------------------------------------------------


SENTENCES = [
    ["Kawhi", "Leonard", "wins"],
    [],
    ["\ufe0f", "a", "\u200b"],  # words with no sub-tokens
    ["super" * 40, "b"],  # a word longer than a window
    [f"word{i}" for i in range(60)],  # several windows
    ["RT", "@Kolo_x", ":", "👋🏽", "https://t.co/abc"],
]


def test_encode_batch_equals_encode_each_in_one_tokenizer_call():
    tok = tokenizer()
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(tok, name)

        def __call__(self, *args, **kwargs):
            calls.append(args)
            return tok(*args, **kwargs)

    aligner = WordAligner(Counting(), max_length=16)
    calls.clear()
    batched = aligner.encode_batch(SENTENCES)
    assert len(calls) == 1
    assert batched == [aligner.encode(s) for s in SENTENCES]
    assert aligner.encode_batch([[], []]) == [[], []]


def test_collate_pads_every_field_as_each_item_says():
    aligner = WordAligner(tokenizer(), max_length=16)
    samples = [Sample(str(i), s, ["B-PER"] + ["O"] * (len(s) - 1)) for i, s in enumerate(SENTENCES) if s]
    images = [torch.randn(4, 6).half() if i % 2 else None for i in range(len(samples))]
    items = make_items(samples, aligner, LabelSet(LABELS), images)
    batch = collate(items, pad_token_id=7)
    n, W = batch["input_ids"].shape[1], batch["word_starts"].shape[1]
    for b, it in enumerate(items):
        w, k = it.window, it.window.num_words
        assert batch["input_ids"][b].tolist() == w.input_ids + [7] * (n - len(w.input_ids))
        assert batch["attention_mask"][b].tolist() == [1] * len(w.input_ids) + [0] * (n - len(w.input_ids))
        assert batch["word_starts"][b].tolist() == w.word_starts + [0] * (W - k)
        assert batch["word_mask"][b].tolist() == [True] * k + [False] * (W - k)
        assert batch["word_shapes"][b].tolist() == it.shapes + [0] * (W - k)
        assert batch["labels"][b].tolist() == it.label_ids + [0] * (W - k)
        lo, hi = w.owned
        assert batch["owned_mask"][b].nonzero().flatten().tolist() == list(range(lo - w.first_word, hi - w.first_word))
        if it.image is None:
            assert not batch["image_mask"][b] and not batch["image_features"][b].any()
        else:  # float16 features are converted exactly as they are copied in
            assert batch["image_mask"][b] and torch.equal(batch["image_features"][b], it.image.float())
    assert batch["attention_mask"].dtype == torch.long and batch["word_mask"].dtype == torch.bool
    assert batch["image_features"].dtype == torch.float32
    assert [it.shapes == [word_shape(x) for x in samples[it.sample_index].tokens[
        it.window.first_word : it.window.first_word + it.window.num_words]] for it in items] == [True] * len(items)
    # without shapes (a model that reads none) the batch has zeros there and nothing else changes
    bare = collate(make_items(samples, aligner, LabelSet(LABELS), images, shapes=False), pad_token_id=7)
    assert not bare["word_shapes"].any()
    for key in batch:
        if key != "word_shapes":
            assert torch.equal(bare[key], batch[key]), key


def test_processor_computes_word_shapes_only_for_a_model_that_reads_them():
    samples = [Sample("a", ["Kolo", "@x", "#tag"])]
    plain = BFCLProcessor.for_model(tiny_model()).windows(samples)
    shaped = BFCLProcessor.for_model(tiny_model(word_shape_dim=4)).windows(samples)
    assert plain[0].shapes == [] and shaped[0].shapes == [word_shape(w) for w in samples[0].tokens]


# ---- the feature cache, read as stored ------------------------------------------------------


def test_features_as_stored_are_the_cache_tensors_converted_later(image_predictor, png, tmp_path):
    encoder = image_predictor.cache.encoder
    cold = FeatureCache(tmp_path, encoder)
    stored = cold.encode_images([str(png), png.read_bytes(), None], as_stored=True)  # computed now
    assert stored[0].dtype == torch.float16 and stored[1] is stored[0] and stored[2] is None
    warm = FeatureCache(tmp_path, encoder)  # a fresh object: read from disk
    [from_disk] = warm.encode_images([str(png)], as_stored=True)
    [as_float] = warm.encode_images([str(png)])
    assert from_disk.dtype == torch.float16 and as_float.dtype == torch.float32
    assert torch.equal(from_disk.float(), as_float) and torch.equal(stored[0].float(), as_float)
    assert warm.get(next(iter(warm._memory)), as_stored=True) is from_disk  # the LRU's own tensor
    as_float.add_(1)  # the float32 copies stay independent
    assert torch.equal(warm.encode_images([str(png)])[0], from_disk.float())


# ---- attention ----------------------------------------------------------------------------------


def test_a_mask_that_shows_every_key_changes_nothing():
    """All keys visible (one post, no padding): the fused path drops the mask, with the same result."""
    torch.manual_seed(0)
    att = MultiHeadAttention(16, 4).eval()
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    full = torch.ones(2, 7, dtype=torch.bool)
    fused, _ = att(q, kv, full, need_weights=False)
    assert torch.equal(fused, att(q, kv, None, need_weights=False)[0])
    torch.testing.assert_close(fused, att(q, kv, full, need_weights=True)[0], atol=1e-5, rtol=1e-5)
    partial = full.clone()
    partial[1, 3:] = False
    masked, _ = att(q, kv, partial, need_weights=False)
    torch.testing.assert_close(masked, att(q, kv, partial, need_weights=True)[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(masked[1], fused[1])
