"""Multimodal co-attention, MCA (Sect. 3.4, eqs. 6-9).

Two CMT passes let each modality pick what it needs from the other before fusion:
visual-guided text attention (eqs. 6-8) and text-guided visual attention (eq. 9).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from bfcl.model.attention import TransformerLayer
from bfcl.model.configuration import BFCLConfig


@dataclass
class CoAttentionOutput:
    text: Tensor
    """T_v (B, n, d): visual-guided text representations (eq. 8)."""
    vision: Tensor
    """V_t (B, n, d): text-guided visual representations (eq. 9), one row per text position."""
    vision_mask: Tensor
    """(B, n) bool: rows of V_t that carry image information (text positions of posts with an image)."""
    text_to_image: Tensor | None
    """(B, n, R): attention of each text position over the image regions in eq. 9 (for explain); None unless asked for."""


class MultimodalCoAttention(nn.Module):
    def __init__(self, cfg: BFCLConfig) -> None:
        super().__init__()
        layer = lambda: TransformerLayer(cfg.d_model, cfg.num_heads, cfg.ffn, cfg.dropout)  # noqa: E731
        self.image_reads_text = layer()  # eqs. 6-7: T~ = CMT(q=V, kv=T), R x d
        self.text_reads_back = layer()  # eq. 8:   T_v = CMT(q=T, kv=T~), n x d
        self.text_reads_image = layer()  # eq. 9:   V_t = CMT(q=T, kv=V), n x d

    def forward(
        self, T: Tensor, text_mask: Tensor, V: Tensor, region_mask: Tensor, need_weights: bool = True
    ) -> CoAttentionOutput:
        """T (B, n, d), text_mask (B, n), V (B, R, d), region_mask (B, R): False for posts without an image.
        ``need_weights``: return eq. 9's attention map (explain); without it every layer runs the fused kernel.

        A post without an image gets empty cross-modal messages, so T_v and V_t reduce to
        its own text passed through the layers' residual paths: the text path keeps working.
        """
        T_tilde, _ = self.image_reads_text(V, T, text_mask, need_weights=False)
        T_v, _ = self.text_reads_back(T, T_tilde, region_mask, need_weights=False)
        V_t, attn = self.text_reads_image(T, V, region_mask, need_weights=need_weights)
        has_image = region_mask.any(dim=1, keepdim=True)
        return CoAttentionOutput(text=T_v, vision=V_t, vision_mask=text_mask & has_image, text_to_image=attn)
