"""The Cross-Modal Transformer (CMT) layer of Sect. 3.4 (Fig. 3, eqs. 3-7).

One layer serves every transformer in the model: with a query from one stream
and keys/values from the other it is a CMT layer; with the same stream on both
sides it is the plain transformer layer of the fusion stage (eqs. 10-11).
Written by hand rather than with ``nn.MultiheadAttention`` for two reasons:
a query whose keys are all masked (a post without an image) must get a zero
message, not NaN; and the attention maps are returned for ``bfcl explain``.
When the maps are not needed (``need_weights=False``: training, prediction,
every layer whose map nobody reads) the same attention runs through
``torch.nn.functional.scaled_dot_product_attention``, which fuses the
product, softmax and dropout and never materialises the maps.

Training on a CPU is the exception: there the fused kernels do not take dropout
(SDPA falls back to its unfused "math" path) and dropout itself is the costly part
of these d_model = 128 layers, because torch draws every Bernoulli mask element one
at a time (about 6.5 ns per element, against 0.8 for the multiply). So on a CPU,
in training, every dropout of these layers (attention weights, FFN, residual) is
:func:`dropout`, which draws the same Bernoulli(1 - p) keep mask from uniform floats
at about half the cost, and attention runs the explicit product around it (no
kernel to fall back through): about 7% less time per layer, forward and backward.
Same mathematics; a different random stream from ``nn.Dropout``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout (zero each element with probability ``p``, scale the rest by 1 / (1 - p)).

    ``F.dropout`` except for float32 on a CPU, where the keep mask is ``rand >= p`` (uniform
    floats with 24 random bits: P(keep) = 1 - p to within 2**-24), about twice as fast as
    torch's element-by-element Bernoulli sampling there.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or x.dtype != torch.float32 or p >= 1.0:
        return F.dropout(x, p, training=True)
    scale = torch.rand(x.shape, dtype=x.dtype).ge_(p).mul_(1.0 / (1.0 - p))  # 0 or 1 / (1 - p)
    return x * scale


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`dropout` (no parameters: checkpoints are unchanged)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


class MultiHeadAttention(nn.Module):
    """MH-SA(Q, K, V) = Concat(head_1..head_h) W^O, head_i = A(Q W_i^Q, K W_i^K, V W_i^V) (eqs. 4-5)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.h = num_heads
        self.d_head = d_model // num_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)
        self.dropout = Dropout(dropout)
        self._packed: dict[str, tuple[tuple, Tensor, Tensor]] = {}  # inference-time concatenated weights (not state)

    def _packed_linear(self, x: Tensor, names: str) -> Tensor:
        """x through the projections ``names`` ("qkv" or "kv") at once: one matmul with their
        weights stacked, instead of one small matmul each (the same products; fewer, larger
        kernels). Without autograd the stacked weights are kept until a parameter changes.

        A forward with autograd drops them: it is what precedes an optimiser step, and torch's
        fused AdamW updates the weights in place without bumping their version counters, so
        the (pointer, version) stamp alone would keep serving the weights of an earlier
        evaluation to the next one."""
        layers = [getattr(self, n) for n in names]
        if torch.is_grad_enabled():
            self._packed.clear()
            w = torch.cat([lin.weight for lin in layers])
            b = torch.cat([lin.bias for lin in layers])
            return F.linear(x, w, b)
        stamp = tuple((t.data_ptr(), t._version) for lin in layers for t in (lin.weight, lin.bias))
        hit = self._packed.get(names)
        if hit is None or hit[0] != stamp:
            hit = (stamp, torch.cat([lin.weight for lin in layers]), torch.cat([lin.bias for lin in layers]))
            self._packed[names] = hit
        return F.linear(x, hit[1], hit[2])

    def forward(
        self, query: Tensor, key_value: Tensor, key_mask: Tensor | None = None, need_weights: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """query (B, Nq, d), key_value (B, Nk, d), key_mask (B, Nk) bool (True = attend).

        Returns the output (B, Nq, d) and the head-averaged attention (B, Nq, Nk), or None
        for the attention when ``need_weights`` is False (the fused kernel's path).
        """
        b, nq, d = query.shape
        nk = key_value.shape[1]
        if key_value is query:  # self-attention: Q, K and V in one product
            q, k, v = self._packed_linear(query, "qkv").split(d, dim=-1)
        else:
            q = self.q(query)
            k, v = self._packed_linear(key_value, "kv").split(d, dim=-1)
        q = q.view(b, nq, self.h, self.d_head).transpose(1, 2)
        k = k.view(b, nk, self.h, self.d_head).transpose(1, 2)
        v = v.view(b, nk, self.h, self.d_head).transpose(1, 2)
        if not need_weights:
            if self.training and self.dropout.p > 0 and q.device.type == "cpu" and q.dtype == torch.float32:
                out = self._cpu_training(q, k, v, key_mask)
            else:
                out = self._fused(q, k, v, key_mask)
            return self.o(out.transpose(1, 2).reshape(b, nq, self.h * self.d_head)), None
        # eq. 3: A(Q, K, V) = softmax(Q K^T / sqrt(d_h)) V, scaled by the width of a head (eq. 5)
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        attn = torch.softmax(logits.float(), dim=-1).to(q.dtype)
        if key_mask is not None:
            # no visible key (e.g. no image): an empty message instead of NaN
            attn = torch.nan_to_num(attn, nan=0.0)
        out = self.dropout(attn) @ v
        out = out.transpose(1, 2).reshape(b, nq, self.h * self.d_head)
        return self.o(out), attn.mean(dim=1)

    def _cpu_training(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
        """Training on a CPU: the explicit product with :func:`dropout` on the attention weights.
        A query with no visible key gets the zero message, as on the other paths."""
        logits = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(self.d_head))
        has_key = None
        if key_mask is not None:
            has_key = key_mask.any(dim=1)
            hidden = ~(key_mask | ~has_key[:, None])  # an item with no visible key attends to all, then is zeroed
            logits = logits.masked_fill(hidden[:, None, None, :], float("-inf"))
        attn = dropout(torch.softmax(logits, dim=-1), self.dropout.p, True)
        out = attn @ v
        return out if has_key is None else out * has_key[:, None, None, None].to(out.dtype)

    def _fused(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
        """The same attention by ``scaled_dot_product_attention`` (its default scale is 1/sqrt(d_head)).

        An item with no visible key attends to all of them and its output is then zeroed:
        the zero message of the explicit path, whatever a fully masked row gives in a
        given kernel, and no NaN in the backward pass.
        """
        p = self.dropout.p if self.training else 0.0
        if key_mask is not None and key_mask.device.type == "cpu" and bool(key_mask.all()):
            # every key visible (one post, an image, no padding): the same result without the
            # mask's four small ops, ~10% of a one-post fusion on CPU (a GPU would sync here)
            key_mask = None
        if key_mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        has_key = key_mask.any(dim=1)  # (B,)
        mask = (key_mask | ~has_key[:, None])[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return out * has_key[:, None, None, None].to(out.dtype)


class TransformerLayer(nn.Module):
    """Post-LN transformer layer; with a cross-modal key/value it is the CMT layer.

    eq. 6: X~ = LN(Q + MH-SA(Q, KV, KV));  eq. 7: out = LN(X~ + FFN(X~)).
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.ln1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.GELU(), Dropout(dropout), nn.Linear(ffn_dim, d_model))
        self.ln2 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)

    def forward(
        self,
        query: Tensor,
        key_value: Tensor | None = None,
        key_mask: Tensor | None = None,
        need_weights: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        kv = query if key_value is None else key_value
        msg, attn = self.attn(query, kv, key_mask, need_weights)
        x = self.ln1(query + self.dropout(msg))
        x = self.ln2(x + self.dropout(self.ffn(x)))
        return x, attn


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over dim 1 of x (B, N, d) where mask (B, N) is True; zero where nothing is visible."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


__all__ = ["Dropout", "MultiHeadAttention", "TransformerLayer", "dropout", "masked_mean"]
