"""AdaCAN-BERT-CRF: the adaptive co-attention network of Zhang, Fu, Liu and Huang (AAAI 2018),
in the BERT form of the UMT paper (the text encoder's output replaces the CNN + BiLSTM states).

For each word h_t (a row of C) with the regions V = W_r U and all words X = C:

    word-guided visual attention:   a_t = softmax_i( w_a^T tanh(W_1 V_i + W_2 h_t) ),  v~_t = sum_i a_ti V_i
    image-guided textual attention: b_t = softmax_j( w_b^T tanh(W_3 X_j + W_4 v~_t) ), h~_t = sum_j b_tj X_j
    gated multimodal fusion:        p = tanh(W_5 v~_t), q = tanh(W_6 h~_t), g = sigmoid(W_g [p; q]),
                                    m_t = g * p + (1 - g) * q
    filtration gate:                s_t = sigmoid(W_s [h_t; m_t]),  u_t = s_t * tanh(W_m m_t)
    H_t = [h_t; u_t]                (n x 2d) -> CRF

The filtration gate decides, word by word, how much of the multimodal feature to keep; a post
without an image has v~_t = 0 and its textual attention is guided by the text alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bfcl.model.baselines.common import HeadOutput, head_width, masked_softmax, visual_inputs


class AdaCANHead(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        d = head_width(cfg)
        self.image_dim = cfg.image_dim
        self.dropout = nn.Dropout(cfg.dropout)
        self.region = nn.Linear(cfg.image_dim, d)
        self.wv_region, self.wv_word, self.wv_score = nn.Linear(d, d, bias=False), nn.Linear(d, d), nn.Linear(d, 1, bias=False)
        self.it_word, self.it_visual, self.it_score = nn.Linear(d, d, bias=False), nn.Linear(d, d), nn.Linear(d, 1, bias=False)
        self.fuse_visual, self.fuse_text, self.fuse_gate = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(2 * d, d)
        self.filter_gate, self.filter_out = nn.Linear(2 * d, d), nn.Linear(d, d)
        self.out_dim = 2 * d

    def forward(self, C: Tensor, text_mask: Tensor, U: Tensor | None, image_mask: Tensor | None, word_starts: Tensor,
                need_weights: bool = False, **_: object) -> HeadOutput:
        h = self.dropout(C)
        U, region_mask = visual_inputs(U, image_mask, C, self.image_dim)
        V = self.region(U)  # (B, R, d)
        z = torch.tanh(self.wv_region(V)[:, None] + self.wv_word(h)[:, :, None])  # (B, n, R, d)
        a = masked_softmax(self.wv_score(z).squeeze(-1), region_mask[:, None]).to(V.dtype)  # (B, n, R)
        v_t = a @ V  # (B, n, d)
        z = torch.tanh(self.it_word(h)[:, None] + self.it_visual(v_t)[:, :, None])  # (B, n, n, d)
        b = masked_softmax(self.it_score(z).squeeze(-1), text_mask[:, None]).to(h.dtype)  # (B, n, n)
        h_t = b @ h
        p, q = torch.tanh(self.fuse_visual(v_t)), torch.tanh(self.fuse_text(h_t))
        g = torch.sigmoid(self.fuse_gate(torch.cat([p, q], -1)))
        m = g * p + (1 - g) * q
        s = torch.sigmoid(self.filter_gate(torch.cat([h, m], -1)))
        u = s * torch.tanh(self.filter_out(m))
        return HeadOutput(torch.cat([h, u], -1), text_to_image=a if need_weights else None)
