"""The BFCL model: shapes, masks, ablations, losses, save/load, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from bfcl.data.alignment import WordAligner
from bfcl.data.batching import collate, make_items
from bfcl.data.labels import LabelSet
from bfcl.data.types import Sample
from bfcl.model.attention import TransformerLayer
from bfcl.model.contrastive import ContrastiveHeads
from bfcl.model.fusion import AttentionFusion, BottleneckFusion, GatedFusion
from bfcl.model.modeling import BFCL

from helpers import LABELS, tiny_config, tiny_model, tokenizer

SENTS = [
    (["Kolo", "is", "a", "good", "boy"], ["B-MISC", "O", "O", "O", "O"]),
    (["RT", "@fan", ":", "Paris", "Hilton", "in", "London", "tonight", "!"], ["O", "O", "O", "B-PER", "I-PER", "O", "B-LOC", "O", "O"]),
    (["Apple", "shares", "rise"], ["B-ORG", "O", "O"]),
    (["\ufe0f", "Miri", "at", "the", "Louvre", "\u200b"], ["O", "B-PER", "O", "O", "B-LOC", "O"]),
]


def batch_for(model, sents, images=None, labels=True):
    samples = [Sample(str(i), w, l) for i, (w, l) in enumerate(sents)]
    aligner = WordAligner(model.tokenizer, max_length=model.config.max_length)
    items = make_items(samples, aligner, LabelSet(LABELS) if labels else None, images)
    return collate(items, model.tokenizer.pad_token_id)


def image(seed: int, R: int = 49, D: int = 16) -> torch.Tensor:
    return torch.randn(R, D, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_loss():
    m = tiny_model()
    b = batch_for(m, SENTS, [image(0), None, image(1), image(2)])
    out = m(**b, output_attentions=True)
    assert out.emissions.shape == (4, 9, len(LABELS))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.text_to_image.shape[0] == 4 and out.text_to_image.shape[2] == 49
    # mid fusion, L = 4: 2 self + 2 bottleneck layers; the last layer's vision update is dead, so 1 map
    assert len(out.bottleneck_attention) == 1
    assert out.bottleneck_attention[0].shape[:2] == (4, 2)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"use_mca": False}, {"fusion": "none"}, {"fusion": "attention"}, {"fusion": "gated"}, {"fusion_stage": "early"},
     {"multimodal": False}, {"multimodal": False, "bilstm": True}, {"multimodal": False, "decoder": "softmax"},
     {"word_shape_dim": 4}, {"emission_reads_text": True}],
)
def test_item_output_independent_of_batch(overrides):
    """Padding, other posts' images and missing-image masks never change a post's emissions."""
    m = tiny_model(**overrides)
    alone = m(**batch_for(m, SENTS[:1], [None])).emissions[0, :5]
    mixed = m(**batch_for(m, SENTS, [None, image(3), None, image(4)])).emissions[0, :5]
    torch.testing.assert_close(alone, mixed, atol=1e-5, rtol=1e-5)
    with_img = m(**batch_for(m, SENTS[2:3], [image(5)])).emissions[0, :3]
    with_img_mixed = m(**batch_for(m, [SENTS[1], SENTS[2]], [None, image(5)])).emissions[1, :3]
    torch.testing.assert_close(with_img, with_img_mixed, atol=1e-5, rtol=1e-5)


def test_missing_image_equals_no_image_features():
    """A masked image and no image tensor at all are the same case: the text path alone."""
    m = tiny_model()
    b = batch_for(m, SENTS[:2], [image(0), None])
    masked = m(**b).emissions[1]
    none = m(**batch_for(m, SENTS[1:2], None)).emissions[0]
    torch.testing.assert_close(masked[: none.shape[0]], none, atol=1e-5, rtol=1e-5)


def test_image_changes_the_labels_input():
    m = tiny_model()
    a = m(**batch_for(m, SENTS[:1], [image(0)])).emissions
    b = m(**batch_for(m, SENTS[:1], [image(1)])).emissions
    assert not torch.allclose(a, b)


def test_without_fusion_and_mca_the_image_cannot_reach_the_text():
    m = tiny_model(use_mca=False, fusion="none")
    a = m(**batch_for(m, SENTS[:1], [image(0)])).emissions
    b = m(**batch_for(m, SENTS[:1], [None])).emissions
    torch.testing.assert_close(a, b)


def test_bottleneck_is_the_only_path_between_streams():
    """-MCA + BF: zeroing the bottleneck tokens' influence (m tokens with no keys) must cut the image off."""
    m = tiny_model(use_mca=False, fusion_stage="early")
    fusion: BottleneckFusion = m.fusion
    T = torch.randn(1, 5, 32)
    V1, V2 = torch.randn(1, 49, 32), torch.randn(1, 49, 32)
    tm, vm = torch.ones(1, 5, dtype=torch.bool), torch.ones(1, 49, dtype=torch.bool)
    h1, _ = fusion(T, tm, V1, vm)
    h2, _ = fusion(T, tm, V2, vm)
    assert not torch.allclose(h1, h2)  # information flows ...
    # ... and only through the bottleneck: a text layer sees n + m keys, never the vision tokens
    seen = []
    hook = fusion.text_layers[0].attn.register_forward_hook(lambda mod, inp, out: seen.append(inp[1].shape))
    fusion(T, tm, V1, vm)
    hook.remove()
    assert seen[0] == (1, 5 + 2, 32)  # keys/values: the 5 text tokens and the 2 bottlenecks


def test_layer_counts_follow_fusion_stage():
    mid = tiny_model(num_layers=8, fusion_stage="mid")
    early = tiny_model(num_layers=8, fusion_stage="early")
    assert (len(mid.fusion.text_self), len(mid.fusion.text_layers)) == (4, 4)
    assert (len(early.fusion.text_self), len(early.fusion.text_layers)) == (0, 8)
    # eq. 11 of the last layer produces a B nothing reads: not built
    assert (len(mid.fusion.vision_self), len(mid.fusion.vision_layers)) == (4, 3)
    assert len(early.fusion.vision_layers) == 7
    assert mid.fusion.bottlenecks.shape == (2, 32)


def test_ablation_settings_remove_what_they_say():
    assert tiny_model(use_mca=False).mca is None
    assert tiny_model(fusion="none").fusion is None
    assert isinstance(tiny_model(fusion="attention").fusion, AttentionFusion)
    assert isinstance(tiny_model(fusion="gated").fusion, GatedFusion)
    assert tiny_model(multimodal=False, decoder="softmax").crf is None
    text_only = tiny_model(multimodal=False)
    assert not hasattr(text_only, "mca") and not hasattr(text_only, "fusion")
    # -CL: the contrastive terms vanish from the total loss
    m = tiny_model(lambda_vt=0.0, lambda_tv=0.0)
    out = m(**batch_for(m, SENTS, [image(0), image(1), image(2), image(3)]))
    assert out.loss_vt is None and torch.equal(out.loss, out.ner_loss)
    m = tiny_model(lambda_vt=0.5, lambda_tv=0.25)
    out = m(**batch_for(m, SENTS, [image(0), image(1), image(2), image(3)]))
    torch.testing.assert_close(out.loss, out.ner_loss + 0.5 * out.loss_vt + 0.25 * out.loss_tv)
    with pytest.raises(ValueError, match="needs use_mca"):
        tiny_config(use_mca=False, fusion="gated")


def test_contrastive_losses_match_direct_computation():
    cfg = tiny_config(temperature=0.6)
    heads = ContrastiveHeads(cfg)
    T = torch.randn(4, 6, 32)
    tmask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3, [1] * 6]).bool()
    V = torch.randn(4, 49, 32)
    imask = torch.tensor([True, True, False, True])
    with torch.no_grad():
        l_vt, l_tv = heads(T, tmask, V, imask)
        t, v = _pooled(heads, T, tmask, V)
    keep = [0, 1, 3]
    t, v = [t[i] for i in keep], [v[i] for i in keep]
    cos = lambda a, b: float(torch.dot(a, b) / (a.norm() * b.norm()))  # noqa: E731
    vt = tv = 0.0
    for i in range(3):
        vt += -math.log(math.exp(cos(v[i], t[i]) / 0.6) / sum(math.exp(cos(v[i], t[j]) / 0.6) for j in range(3)))
        tv += -math.log(math.exp(cos(t[i], v[i]) / 0.6) / sum(math.exp(cos(t[i], v[j]) / 0.6) for j in range(3)))
    assert float(l_vt) == pytest.approx(vt / 3, rel=1e-4)
    assert float(l_tv) == pytest.approx(tv / 3, rel=1e-4)
    # fewer than two posts with images: nothing to contrast
    z1, z2 = heads(T, tmask, V, torch.tensor([False, True, False, False]))
    assert float(z1) == 0.0 and float(z2) == 0.0


def _pooled(heads, T, tmask, V):
    return [heads.g(T[i][tmask[i]].mean(0)) for i in range(len(T))], [heads.f(V[i].mean(0)) for i in range(len(V))]


def test_attention_with_no_visible_key_is_zero_not_nan():
    layer = TransformerLayer(8, 2, 16, 0.0)
    q, kv = torch.randn(1, 3, 8), torch.randn(1, 4, 8)
    out, attn = layer(q, kv, torch.zeros(1, 4, dtype=torch.bool))
    assert torch.isfinite(out).all() and float(attn.detach().abs().sum()) == 0.0


def fit(m, b, steps: int, lr: float) -> None:
    opt = torch.optim.AdamW(m.parameters(), lr=lr)
    for _ in range(steps):
        loss = m(**b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_tiny_batch_overfits():
    torch.manual_seed(0)
    m = tiny_model(dropout=0.0).train()
    b = batch_for(m, SENTS, [image(0), None, image(1), image(2)])
    fit(m, b, steps=80, lr=3e-3)
    m.eval()
    paths = m.decode(m(**b).emissions, b["word_mask"])
    gold = [[LABELS.index(x) for x in l] for _, l in SENTS]
    assert paths == gold


def test_emission_reads_text_joins_C_to_H():
    """The departure of docs/MODEL.md: the emission layer sees [H; C] (H from fusion, C from the
    encoder, at each word's first sub-token), so its weight splits into a fused and a text block."""
    m = tiny_model(emission_reads_text=True, dropout=0.0)
    d, dt = m.config.d_model, m.config.text_dim
    assert m.emission.in_features == d + dt
    b = batch_for(m, SENTS[:2], [image(0), None], labels=False)
    seen = {}
    m.fusion.register_forward_hook(lambda mod, args, out: seen.__setitem__("H", out[0]))
    m.text_encoder.register_forward_hook(lambda mod, args, out: seen.__setitem__("C", out.last_hidden_state))
    emissions = m(**b).emissions
    starts = b["word_starts"][..., None]
    H = seen["H"].gather(1, starts.expand(-1, -1, d))
    C = seen["C"].gather(1, starts.expand(-1, -1, dt))
    W, bias = m.emission.weight, m.emission.bias
    expected = H @ W[:, :d].T + C @ W[:, d:].T + bias
    mask = b["word_mask"]
    torch.testing.assert_close(emissions[mask], expected[mask], atol=1e-5, rtol=1e-5)
    # the paper's model (the default) labels from H alone
    assert tiny_model().emission.in_features == d


def test_save_load_gives_identical_predictions(tmp_path):
    m = tiny_model(word_shape_dim=4, bio_constraints=True)
    b = batch_for(m, SENTS, [image(0), None, image(1), image(2)], labels=False)
    before = m(**b).emissions
    m.save_pretrained(tmp_path / "ckpt")
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    loaded = BFCL.from_pretrained(tmp_path / "ckpt")
    torch.testing.assert_close(loaded(**b).emissions, before)
    assert loaded.config == m.config


def test_same_seed_same_training():
    def run():
        torch.manual_seed(7)
        m = tiny_model(seed=3, dropout=0.1).train()
        fit(m, batch_for(m, SENTS, [image(0), None, image(1), image(2)]), steps=3, lr=1e-3)
        return m.emission.weight.detach().clone()

    assert torch.equal(run(), run())


@pytest.mark.parametrize("num_layers, stage", [(6, "early"), (4, "mid"), (6, "mid")])
def test_skipping_the_dead_vision_layer_leaves_h_unchanged(num_layers, stage):
    """Running every row of every eq. 11, the last one included (as a literal reading of the
    paper would), gives the same H and the same bottleneck maps as the fusion's shortcuts."""
    from bfcl.model.attention import TransformerLayer

    torch.manual_seed(0)
    m = tiny_model(num_layers=num_layers, fusion_stage=stage)
    f = m.fusion
    B, n, nv, d = 2, 5, 7, 32
    t, v = torch.randn(B, n, d), torch.randn(B, nv, d)
    t_mask, v_mask = torch.ones(B, n, dtype=torch.bool), torch.ones(B, nv, dtype=torch.bool)
    t_mask[1, 3:], v_mask[1] = False, False  # padding, and a post without an image
    H, maps = f(t, t_mask, v, v_mask)
    # the literal reading: every layer runs text then vision on all rows, including the last one
    extra = TransformerLayer(32, 4, 64, 0.0)
    tv, vv = t, v
    for layer in f.text_self:
        tv, _ = layer(tv, None, t_mask)
    for layer in f.vision_self:
        vv, _ = layer(vv, None, v_mask)
    b = f.bottlenecks.expand(B, -1, -1)
    kv_t = torch.cat([t_mask, torch.ones(B, 2, dtype=torch.bool)], 1)
    kv_v = torch.cat([v_mask, torch.ones(B, 2, dtype=torch.bool)], 1)
    literal_maps = []
    for text_layer, vision_layer in zip(f.text_layers, list(f.vision_layers) + [extra]):
        x, _ = text_layer(torch.cat([tv, b], 1), None, kv_t)
        tv, b = x[:, :n], x[:, n:]
        y, attn = vision_layer(torch.cat([vv, b], 1), None, kv_v)
        vv, b = y[:, :nv], y[:, nv:]
        literal_maps.append(attn[:, nv:, :nv])
    assert len(maps) == len(f.vision_layers) >= 1
    torch.testing.assert_close(H[t_mask], tv[t_mask], atol=1e-6, rtol=1e-5)
    for got, want in zip(maps, literal_maps):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_single_bottleneck_layer_warns_and_its_bottlenecks_carry_no_image(caplog):
    # without MCA the bottlenecks are the only path from the image: with one bottleneck layer, none
    m = tiny_model(num_layers=2, fusion_stage="mid", use_mca=False)
    assert "bottlenecks carry no image information" in caplog.text
    b1 = batch_for(m, SENTS[:1], [image(0)])
    b2 = batch_for(m, SENTS[:1], [image(5)])
    assert torch.allclose(m(**b1).emissions, m(**b2).emissions, atol=1e-6)


def test_attention_fusion_scores_each_modality_from_both():
    """Moon et al.: a_m = sigmoid(W_m [t; v]); changing the image changes the text's weight too."""
    from bfcl.model.fusion import AttentionFusion

    torch.manual_seed(0)
    af = AttentionFusion(tiny_config(fusion="attention"))
    assert af.score.weight.shape == (2, 64)
    t = torch.randn(1, 3, 32)
    mask = torch.ones(1, 3, dtype=torch.bool)
    h1, _ = af(t, mask, torch.randn(1, 3, 32), mask)
    h0, _ = af(t, mask, torch.randn(1, 3, 32), torch.zeros(1, 3, dtype=torch.bool))
    assert torch.allclose(h0, t)  # no image: all weight on text
    assert not torch.allclose(h1, t)
