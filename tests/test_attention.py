"""The fused attention path (scaled_dot_product_attention) against the explicit one that returns maps."""

from __future__ import annotations

import pytest
import torch

from bfcl.model.attention import MultiHeadAttention, TransformerLayer
from helpers import tiny_model


def masks(B: int, N: int) -> torch.Tensor:
    """Key masks with a full row, a partial row, an all-masked row (no image) and a single key."""
    m = torch.ones(B, N, dtype=torch.bool)
    m[1, N // 2 :] = False
    m[2] = False
    m[3, 1:] = False
    return m


@pytest.mark.parametrize("with_mask", [True, False])
def test_fused_matches_explicit(with_mask):
    torch.manual_seed(0)
    att = MultiHeadAttention(16, 4, dropout=0.3).eval()  # eval: dropout off on both paths
    q, kv = torch.randn(4, 5, 16), torch.randn(4, 7, 16)
    key_mask = masks(4, 7) if with_mask else None
    explicit, attn = att(q, kv, key_mask, need_weights=True)
    fused, none = att(q, kv, key_mask, need_weights=False)
    assert none is None and attn.shape == (4, 5, 7)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    if with_mask:  # no visible key: a zero message on both paths (the output bias of W^O only)
        torch.testing.assert_close(fused[2], att.o.bias.expand(5, 16), atol=1e-6, rtol=0)
        assert float(attn[2].detach().abs().sum()) == 0.0


@pytest.mark.parametrize("optimizer", ["fused", "foreach", "for-loop"])
def test_an_evaluation_after_optimiser_steps_uses_the_new_weights(optimizer):
    """Stacked Q/K/V weights cached by one evaluation must not serve the next one after training:
    torch's fused AdamW changes the weights without bumping their version counters."""
    torch.manual_seed(5)
    layer = TransformerLayer(16, 4, 32, 0.0)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2, **{"fused": {"fused": True}, "foreach": {"foreach": True},
                                                            "for-loop": {"foreach": False}}[optimizer])
    x, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    layer.eval()
    with torch.no_grad():  # an epoch's evaluation fills the cache
        layer(x, None, None, need_weights=False)
        layer(x, kv, None, need_weights=False)
    layer.train()
    for _ in range(3):  # the next epoch
        opt.zero_grad()
        layer(x, kv, None, need_weights=False)[0].pow(2).sum().backward()
        opt.step()
    layer.eval()
    with torch.no_grad():
        self_out, cross_out = layer(x, None, None, need_weights=False)[0], layer(x, kv, None, need_weights=False)[0]
    torch.testing.assert_close(self_out, layer(x, None, None, need_weights=True)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cross_out, layer(x, kv, None, need_weights=True)[0], atol=1e-5, rtol=1e-5)


def test_fused_gradients_match_and_are_finite():
    torch.manual_seed(1)
    layer = TransformerLayer(16, 4, 32, 0.0)
    q, kv = torch.randn(4, 5, 16, requires_grad=True), torch.randn(4, 7, 16, requires_grad=True)
    key_mask = masks(4, 7)
    grads = []
    for need in (True, False):
        q.grad = kv.grad = None
        layer.zero_grad()
        out, _ = layer(q, kv, key_mask, need_weights=need)
        out.pow(2).sum().backward()
        grads.append([q.grad.clone(), kv.grad.clone()] + [p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*grads):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_fused_dropout_is_applied_in_training():
    torch.manual_seed(2)
    att = MultiHeadAttention(16, 4, dropout=0.5).train()
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    a, _ = att(q, kv, None, need_weights=False)
    b, _ = att(q, kv, None, need_weights=False)
    assert not torch.allclose(a, b)
    att.eval()
    c, _ = att(q, kv, None, need_weights=False)
    d, _ = att(q, kv, None, need_weights=False)
    torch.testing.assert_close(c, d)


def test_model_maps_only_when_asked_and_same_emissions():
    from test_model import SENTS, batch_for, image

    m = tiny_model()
    b = batch_for(m, SENTS, [image(0), None, image(1), image(2)])
    with torch.no_grad():
        plain = m(**b)
        maps = m(**b, output_attentions=True)
    assert plain.text_to_image is None and plain.bottleneck_attention is None
    assert maps.text_to_image is not None and len(maps.bottleneck_attention) == 1
    torch.testing.assert_close(plain.emissions, maps.emissions, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain.loss, maps.loss, atol=1e-5, rtol=1e-5)


# ---- training on a CPU: bfcl's dropout and the explicit attention around it ----------------


def test_dropout_zeroes_p_and_scales_the_rest():
    from bfcl.model.attention import dropout

    torch.manual_seed(3)
    x = torch.ones(200_000, requires_grad=True)
    y = dropout(x, 0.3, True)
    kept = y != 0
    share = float(kept.float().mean())
    assert abs(share - 0.7) < 5 * (0.3 * 0.7 / x.numel()) ** 0.5  # Bernoulli(0.7), within 5 sigma
    assert torch.all(y[kept] == torch.tensor(1 / 0.7))  # inverted dropout: the mean is kept
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # d/dx of x * mask / (1 - p) is mask / (1 - p)


def test_dropout_is_the_identity_when_off_and_seeded_when_on():
    from bfcl.model.attention import Dropout, dropout

    x = torch.randn(4, 5)
    assert dropout(x, 0.5, False) is x and dropout(x, 0.0, True) is x
    torch.manual_seed(0)
    a = dropout(x, 0.5, True)
    torch.manual_seed(0)
    b = dropout(x, 0.5, True)
    torch.testing.assert_close(a, b)
    d = Dropout(0.5)
    assert isinstance(d, torch.nn.Dropout) and d.eval()(x) is x
    x64 = torch.ones(10_000, dtype=torch.float64)  # other dtypes: torch's own dropout, same law
    y64 = dropout(x64, 0.5, True)
    assert y64.dtype == torch.float64 and set(y64.unique().tolist()) <= {0.0, 2.0}


def test_cpu_training_attention_is_the_same_attention(monkeypatch):
    """With dropout taken out, the training path gives the eval (fused) path's outputs and gradients,
    the zero message of a query with no visible key included."""
    import bfcl.model.attention as attention

    monkeypatch.setattr(attention, "dropout", lambda x, p, training: x)
    torch.manual_seed(4)
    att = MultiHeadAttention(16, 4, dropout=0.3)
    q0, kv0 = torch.randn(4, 5, 16), torch.randn(4, 7, 16)
    key_mask = masks(4, 7)
    outs, grads = [], []
    for train in (True, False):  # True: dropout p > 0 on a CPU -> the explicit training path
        att.train(train)
        att.zero_grad()
        q, kv = q0.clone().requires_grad_(True), kv0.clone().requires_grad_(True)
        out, none = att(q, kv, key_mask, need_weights=False)
        assert none is None
        out.pow(2).sum().backward()
        outs.append(out.detach())
        grads.append([q.grad, kv.grad] + [p.grad.clone() for p in att.parameters()])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[0][2], att.o.bias.detach().expand(5, 16), atol=1e-6, rtol=0)
    for a, b in zip(*grads):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_training_layers_use_bfcls_dropout():
    from bfcl.model.attention import Dropout

    layer = TransformerLayer(16, 4, 32, 0.1)
    drops = [m for m in layer.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 3 and all(type(m) is Dropout for m in drops)  # attention, FFN, residual
    assert set(layer.state_dict()) == {  # no parameters of their own: checkpoints unchanged
        f"{m}.{p}" for m in ("attn.q", "attn.k", "attn.v", "attn.o", "ln1", "ffn.0", "ffn.3", "ln2") for p in ("weight", "bias")
    }


def _reference_attention(att: MultiHeadAttention, query, key_value):
    """Eqs. 4-5 with one product per projection, as written."""
    b, nq, d = query.shape
    split = lambda x: x.view(b, -1, att.h, att.d_head).transpose(1, 2)  # noqa: E731
    q, k, v = split(att.q(query)), split(att.k(key_value)), split(att.v(key_value))
    a = torch.softmax(q @ k.transpose(-1, -2) / att.d_head**0.5, dim=-1)
    return att.o((a @ v).transpose(1, 2).reshape(b, nq, d))


@pytest.mark.parametrize("self_attention", [True, False])
def test_packed_projections_are_the_separate_ones(self_attention):
    """Q, K, V (or K, V) in one product give the per-projection result, with and without
    autograd, and the weights kept for inference follow every change to a parameter."""
    torch.manual_seed(3)
    att = MultiHeadAttention(16, 4).eval()
    q = torch.randn(2, 5, 16)
    kv = q if self_attention else torch.randn(2, 7, 16)
    torch.testing.assert_close(att(q, kv, need_weights=False)[0], _reference_attention(att, q, kv), atol=1e-6, rtol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(att(q, kv, need_weights=False)[0], _reference_attention(att, q, kv), atol=1e-6, rtol=1e-5)
    # an optimiser step (in place, no autograd) and a loaded state dict both change what is kept
    with torch.no_grad():
        att.k.weight.add_(0.5)
        torch.testing.assert_close(att(q, kv, need_weights=False)[0], _reference_attention(att, q, kv), atol=1e-6, rtol=1e-5)
    other = MultiHeadAttention(16, 4).eval()
    att.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(att(q, kv, need_weights=False)[0], _reference_attention(other, q, kv), atol=1e-6, rtol=1e-5)
    assert set(att.state_dict()) == {f"{n}.{p}" for n in "qkvo" for p in ("weight", "bias")}  # checkpoints unchanged
    # gradients reach each projection's own parameters
    att.train()
    att(q.requires_grad_(), kv if self_attention else kv.requires_grad_(), need_weights=False)[0].sum().backward()
    assert all(getattr(att, n).weight.grad is not None and getattr(att, n).weight.grad.abs().sum() > 0 for n in "qkv")
