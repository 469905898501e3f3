"""Fusion of the two streams: bottleneck fusion (Sect. 3.5, eqs. 10-11) and the
attention / gated alternatives the paper compares in Table 5.

Every module takes the text stream (B, n, d), the vision stream (B, Nv, d) with
their masks, and returns H (B, n, d), the text-side representation the
decoder labels. The bottleneck rule itself is the four lines in
``BottleneckFusion.forward``.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from bfcl.model.attention import TransformerLayer
from bfcl.model.configuration import BFCLConfig

log = logging.getLogger(__name__)


class BottleneckFusion(nn.Module):
    """m learned bottleneck tokens B are the only path between the streams.

    Per layer (eqs. 10-11), B is updated twice, by text then by vision:
        [T_v, B^] = Transformer([T_v; B];  theta_text)
        [V_t, B ] = Transformer([V_t; B^]; theta_vision)
    This is sequential, unlike MBT (Nagrani et al. 2021), which averages the two
    modalities' bottleneck updates. Mid fusion first runs L/2 plain self-attention
    layers per stream (no exchange), then L/2 bottleneck layers; early fusion runs
    L bottleneck layers.

    In the printed order (eq. 10 before eq. 11, H = T_v after the last layer) the last
    layer's vision update produces a B that nothing reads: it cannot reach H. So it is not
    built and not run. A consequence the paper does not state: with a single bottleneck
    layer (early L = 1, mid L = 2) no vision layer is left and the bottlenecks carry no
    image information into H (co-attention's T_v still does; without MCA nothing does);
    building such a model logs a warning. For the same reason the last eq. 10 runs with
    T_v alone as queries (keys and values are still [T_v; B]): its B^ is never read; and the
    last eq. 11 that runs takes B alone as queries (keys and values [V_t; B]): its V_t would
    only feed the vision layer that is not built. Both are exact: a query row's output
    depends on its own row and the keys/values only.
    """

    def __init__(self, cfg: BFCLConfig) -> None:
        super().__init__()
        layer = lambda: TransformerLayer(cfg.d_model, cfg.num_heads, cfg.ffn, cfg.dropout)  # noqa: E731
        num_vision = max(cfg.num_bottleneck_layers - 1, 0)  # the last eq. 11 is dead (see above)
        if cfg.multimodal and num_vision == 0:
            log.warning(
                "bottleneck fusion with %d bottleneck layer(s) (fusion_stage=%s, num_layers=%d): the bottlenecks carry "
                "no image information into H, because eq. 10 runs before eq. 11; use at least 2 bottleneck layers",
                cfg.num_bottleneck_layers, cfg.fusion_stage, cfg.num_layers,
            )
        self.text_self = nn.ModuleList(layer() for _ in range(cfg.num_self_layers))
        self.vision_self = nn.ModuleList(layer() for _ in range(cfg.num_self_layers if num_vision else 0))
        self.text_layers = nn.ModuleList(layer() for _ in range(cfg.num_bottleneck_layers))
        self.vision_layers = nn.ModuleList(layer() for _ in range(num_vision))
        self.bottlenecks = nn.Parameter(torch.randn(cfg.num_bottlenecks, cfg.d_model) * 0.02)

    def forward(
        self, t: Tensor, t_mask: Tensor, v: Tensor, v_mask: Tensor, need_weights: bool = True
    ) -> tuple[Tensor, list[Tensor]]:
        """Returns H (B, n, d) and, per vision layer, the bottlenecks' attention over the vision stream
        (B, m, Nv); that list is empty unless ``need_weights`` (explain)."""
        for text_layer in self.text_self:
            t, _ = text_layer(t, None, t_mask, need_weights=False)
        for vision_layer in self.vision_self:
            v, _ = vision_layer(v, None, v_mask, need_weights=False)
        n, nv = t.shape[1], v.shape[1]
        b = self.bottlenecks.expand(t.shape[0], -1, -1)
        b_mask = torch.ones(b.shape[:2], dtype=torch.bool, device=b.device)
        t_kv_mask, v_kv_mask = torch.cat([t_mask, b_mask], 1), torch.cat([v_mask, b_mask], 1)
        bottleneck_attn = []
        for i, text_layer in enumerate(self.text_layers):
            if i >= len(self.vision_layers):  # the last eq. 10: its bottleneck update is read by nothing
                t, _ = text_layer(t, torch.cat([t, b], 1), t_kv_mask, need_weights=False)  # so only T_v queries
                continue
            x, _ = text_layer(torch.cat([t, b], 1), None, t_kv_mask, need_weights=False)  # eq. 10
            t, b = x[:, :n], x[:, n:]
            if i == len(self.vision_layers) - 1:  # the last eq. 11: only its B reaches H, so only B queries
                b, attn = self.vision_layers[i](b, torch.cat([v, b], 1), v_kv_mask, need_weights=need_weights)
            else:
                y, attn = self.vision_layers[i](torch.cat([v, b], 1), None, v_kv_mask, need_weights=need_weights)  # eq. 11
                v, b = y[:, :nv], y[:, nv:]
                attn = attn[:, nv:] if attn is not None else None
            if attn is not None:
                bottleneck_attn.append(attn[:, :, :nv])
        return t, bottleneck_attn


class AttentionFusion(nn.Module):
    """AF, the modality attention of Moon et al. (NAACL 2018, Sect. 3.2), per token:

        [a_t, a_v] = sigmoid(W_m [t; v] + b_m)        (one score per modality, from both)
        alpha_m    = exp(a_m) / sum_m' exp(a_m')
        h          = alpha_t t + alpha_v v

    Each modality's weight is computed from all modalities together, with its own row of W_m.
    A post without an image puts all weight on text.
    """

    def __init__(self, cfg: BFCLConfig) -> None:
        super().__init__()
        self.score = nn.Linear(2 * cfg.d_model, 2)

    def forward(
        self, t: Tensor, t_mask: Tensor, v: Tensor, v_mask: Tensor, need_weights: bool = True
    ) -> tuple[Tensor, list[Tensor]]:
        v = v.masked_fill(~v_mask[..., None], 0.0)
        a = torch.sigmoid(self.score(torch.cat([t, v], dim=-1)))  # (B, n, 2)
        a = torch.stack([a[..., 0], a[..., 1].masked_fill(~v_mask, float("-inf"))], dim=-1)
        alpha = torch.softmax(a, dim=-1)
        return alpha[..., :1] * t + alpha[..., 1:] * v, []


class GatedFusion(nn.Module):
    """GF (UMT's visual gate): g = sigmoid(W [T_v; V_t]) scales V_t before it joins T_v.

    "Joins" is read as UMT does it: concatenation followed by a linear map back to d.
    """

    def __init__(self, cfg: BFCLConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * cfg.d_model, cfg.d_model)
        self.out = nn.Linear(2 * cfg.d_model, cfg.d_model)

    def forward(self, t: Tensor, t_mask: Tensor, v: Tensor, v_mask: Tensor, need_weights: bool = True) -> tuple[Tensor, list[Tensor]]:
        v = v.masked_fill(~v_mask[..., None], 0.0)
        g = torch.sigmoid(self.gate(torch.cat([t, v], -1)))
        return self.out(torch.cat([t, g * v], -1)), []


def build_fusion(cfg: BFCLConfig) -> nn.Module | None:
    """None is the -BF ablation: T_v goes straight to the decoder."""
    return {"bottleneck": BottleneckFusion, "attention": AttentionFusion, "gated": GatedFusion}.get(cfg.fusion, lambda c: None)(cfg)
