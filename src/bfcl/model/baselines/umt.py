"""UMT-BERT-CRF, the Unified Multimodal Transformer (Yu, Jiang, Yang and Xia, ACL 2020).

From C, the text encoder's output (dropout applied, as in the authors' code):

    S   = Transformer(C)                       text for the main task
    A   = CMT(q=S, kv=W_1 U)                   image-aware word representations
    Q   = CMT(q=W_2 U, kv=S)                   word-aware visual representations (R x d)
    P   = CMT(q=S, kv=Q)                       ... brought back to the words (n x d)
    g   = sigmoid(W_g [P; A])                  the visual gate
    H   = [P; g * A]                           (n x 2d) -> the shared emission layer: E

    S'  = Transformer(C)                       text only: the auxiliary entity span detection (ESD)
    E_z = W_z S'                               O/B/I scores, with their own CRF
    E'  = alpha * E + (1 - alpha) * E_z W^tr   the final emissions the main CRF scores

W^tr is UMT's conversion matrix (3 x K): O -> O with weight 1, B -> every B-X and I -> every
I-X with weight 1 / (number of types), so the text-only span scores guide the multimodal
label scores and temper the visual bias. The loss is CRF(E') + lambda * CRF_z(E_z), with
lambda = ``umt_span_weight`` (0.5) and alpha = ``umt_alpha`` (0.5), the authors' values. The
span labels are the entity labels with their types removed, derived here from the labels the
model already gets (no second label column in the data). UMT's "X" label for later
sub-tokens is not needed: every word is scored at its first sub-token, as in BFCL.

The authors' code applies W^tr to the ESD emission scores (not to softmax probabilities); so
does this module. Each CMT is a post-LN transformer layer with cross-attention, UMT's
BertCrossEncoder with one layer, as the code's defaults have it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bfcl.model.attention import TransformerLayer
from bfcl.model.baselines.common import HeadOutput, gather_words, head_width, visual_inputs
from bfcl.model.crf import CRF, bio_constraints

SPAN_LABELS = ("O", "B-SPAN", "I-SPAN")
"""ESD's label set: BIO with the entity types collapsed into one (named so the CRF can read it as BIO)."""


def span_label_map(labels: list[str]) -> Tensor:
    """(K,) the span label (0 O, 1 B, 2 I) of each entity label."""
    return torch.tensor([0 if lab == "O" else 1 if lab.startswith("B-") else 2 for lab in labels], dtype=torch.long)


def conversion_matrix(labels: list[str]) -> Tensor:
    """UMT's W^tr (3, K): span label -> entity labels, B and I spread evenly over the types."""
    W = torch.zeros(len(SPAN_LABELS), len(labels))
    spans = span_label_map(labels)
    for z in range(len(SPAN_LABELS)):
        cols = (spans == z).nonzero().flatten()
        if len(cols):
            W[z, cols] = 1.0 / len(cols)
    return W


class UMTHead(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        d = head_width(cfg)
        layer = lambda: TransformerLayer(d, cfg.num_heads, cfg.ffn_dim or 4 * d, cfg.dropout)  # noqa: E731
        self.alpha = cfg.umt_alpha
        self.image_dim = cfg.image_dim
        self.dropout = nn.Dropout(cfg.dropout)
        self.text_layer = layer()  # S
        self.image_proj = nn.Linear(cfg.image_dim, d)  # W_1
        self.image_proj_back = nn.Linear(cfg.image_dim, d)  # W_2
        self.text_reads_image = layer()  # A
        self.image_reads_text = layer()  # Q
        self.text_reads_back = layer()  # P
        self.gate = nn.Linear(2 * d, d)
        self.span_layer = layer()  # S'
        self.span_classifier = nn.Linear(d, len(SPAN_LABELS))
        self.out_dim = 2 * d
        if cfg.decoder == "crf":
            constraints = bio_constraints(SPAN_LABELS) if cfg.bio_constraints else None
            self.span_crf: CRF | None = CRF(len(SPAN_LABELS), constraints=constraints, labels=SPAN_LABELS)
        else:
            self.span_crf = None
        # both follow from the label set in the config: rebuilt, not saved
        self.register_buffer("span_of", span_label_map(cfg.labels), persistent=False)
        self.register_buffer("conversion", conversion_matrix(cfg.labels), persistent=False)

    def forward(self, C: Tensor, text_mask: Tensor, U: Tensor | None, image_mask: Tensor | None, word_starts: Tensor,
                need_weights: bool = False, **_: object) -> HeadOutput:
        C = self.dropout(C)
        U, region_mask = visual_inputs(U, image_mask, C, self.image_dim)
        S, _ = self.text_layer(C, None, text_mask, need_weights=False)
        A, attn = self.text_reads_image(S, self.image_proj(U), region_mask, need_weights=need_weights)
        Q, _ = self.image_reads_text(self.image_proj_back(U), S, text_mask, need_weights=False)
        P, _ = self.text_reads_back(S, Q, region_mask, need_weights=False)
        g = torch.sigmoid(self.gate(torch.cat([P, A], -1)))
        S_span, _ = self.span_layer(C, None, text_mask, need_weights=False)
        span = self.span_classifier(gather_words(S_span, word_starts))
        return HeadOutput(torch.cat([P, g * A], -1), span_emissions=span, text_to_image=attn)

    def convert(self, emissions: Tensor, span_emissions: Tensor) -> Tensor:
        """E' = alpha E + (1 - alpha) E_z W^tr: the span detector's guidance on the label scores."""
        return self.alpha * emissions + (1 - self.alpha) * (span_emissions @ self.conversion.to(span_emissions.dtype))

    def span_targets(self, labels: Tensor) -> Tensor:
        """The O/B/I span labels (B, W) of entity label ids (B, W)."""
        return self.span_of[labels]
