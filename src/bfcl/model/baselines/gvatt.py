"""GVATT-BERT-CRF: the visual attention model of Lu, Neves, Carvalho, Zhang and Ji (ACL 2018),
in the BERT form of the UMT paper (the text encoder's output replaces the BiLSTM states).

    q    = C[CLS]                                   the sentence, as the attention's query
    V    = W_r U                                    regions in the text's space
    a    = softmax_i( w^T tanh(W_v V_i + W_q q) )   text-guided visual attention (masked)
    v_c  = sum_i a_i V_i                            the visual context of the post
    b_w  = sigmoid(W_bw h_t + U_bw v_c + b)         visual modulation gate, per word h_t = C_t:
    b_v  = sigmoid(W_bv h_t + U_bv v_c + b)
    m    = tanh(W_m h_t + U_m v_c + b)
    H_t  = b_w * h_t + b_v * m                      the visually tuned word (n x d) -> CRF

A post without an image has v_c = 0 (no region to attend): the gate then reads the word alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bfcl.model.baselines.common import HeadOutput, head_width, masked_softmax, visual_inputs


class GVATTHead(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        d = head_width(cfg)
        self.image_dim = cfg.image_dim
        self.dropout = nn.Dropout(cfg.dropout)
        self.region = nn.Linear(cfg.image_dim, d)
        self.att_region = nn.Linear(d, d, bias=False)
        self.att_query = nn.Linear(d, d)
        self.att_score = nn.Linear(d, 1, bias=False)
        self.modulation = nn.Linear(2 * d, 3 * d)  # [h_t; v_c] -> b_w, b_v, m (the W and U of each, joined)
        self.out_dim = d

    def forward(self, C: Tensor, text_mask: Tensor, U: Tensor | None, image_mask: Tensor | None, word_starts: Tensor,
                need_weights: bool = False, **_: object) -> HeadOutput:
        h = self.dropout(C)
        U, region_mask = visual_inputs(U, image_mask, C, self.image_dim)
        V = self.region(U)
        scores = self.att_score(torch.tanh(self.att_region(V) + self.att_query(h[:, 0])[:, None])).squeeze(-1)
        a = masked_softmax(scores, region_mask).to(V.dtype)  # (B, R)
        v_c = (a.unsqueeze(-1) * V).sum(1)  # (B, d)
        b_w, b_v, m = self.modulation(torch.cat([h, v_c[:, None].expand_as(h)], -1)).chunk(3, dim=-1)
        H = torch.sigmoid(b_w) * h + torch.sigmoid(b_v) * torch.tanh(m)
        # one map per post: every word sees the same visual context
        t2i = a[:, None].expand(-1, C.shape[1], -1) if need_weights else None
        return HeadOutput(H, text_to_image=t2i)
