"""The two decoupled image-text contrastive losses (Sect. 3.7, eqs. 13-15).

Eq. 13 as printed cannot be meant literally: its denominator sums sim(v_i, t_i)
over the positive's own index i, i.e. over matched pairs only (no image is ever
set against another post's text), and then adds the positive again; eq. 15 fixes
the index but still counts the positive twice. Both describe in words the usual
in-batch contrastive loss, so we use standard InfoNCE, where the other posts of
the batch are the negatives and the positive appears once:
    L_vt = mean_i -log softmax_j( sim(v_i, t_j) / tau )[i]
    L_tv = mean_i -log softmax_j( sim(t_i, v_j) / tau )[i]
What is contrasted are the unimodal representations (T of eq. 1 pooled, V of
eq. 2 averaged over its regions), so the gradient reaches the text encoder.
A post without an image takes no part in either loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bfcl.model.attention import masked_mean
from bfcl.model.configuration import BFCLConfig


def similarity_matrix(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """sim(a_i, b_j) for all pairs: cosine (eq. 14) or plain dot product."""
    if kind == "cosine":
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return a @ b.T


def info_nce(anchors: Tensor, candidates: Tensor, temperature: float, kind: str) -> Tensor:
    """Mean over anchors of -log p(own candidate | anchor) among all candidates in the batch."""
    logits = similarity_matrix(anchors, candidates, kind) / temperature
    return F.cross_entropy(logits, torch.arange(len(anchors), device=anchors.device))


class ContrastiveHeads(nn.Module):
    """f (vision) and g (text): small projection heads into the contrastive space (eq. 14)."""

    def __init__(self, cfg: BFCLConfig) -> None:
        super().__init__()
        head = lambda: nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.ReLU(), nn.Linear(cfg.d_model, cfg.contrastive_dim))  # noqa: E731
        self.f, self.g = head(), head()
        self.cfg = cfg

    def pool_text(self, T: Tensor, text_mask: Tensor) -> Tensor:
        return T[:, 0] if self.cfg.text_pooling == "cls" else masked_mean(T, text_mask)

    def forward(self, T: Tensor, text_mask: Tensor, V: Tensor, image_mask: Tensor) -> tuple[Tensor, Tensor]:
        """T (B, n, d), V (B, R, d), image_mask (B,). Returns (L_vt, L_tv); zero when fewer than 2 posts have images."""
        zero = T.new_zeros(())
        if int(image_mask.sum()) < 2:
            return zero, zero
        t = self.g(self.pool_text(T, text_mask)[image_mask])
        v = self.f(V[image_mask].mean(dim=1))
        tau, kind = self.cfg.temperature, self.cfg.similarity
        return info_nce(v, t, tau, kind), info_nce(t, v, tau, kind)
