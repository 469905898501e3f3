"""OCSGA in its BERT form: the object-guided model of Wu, Zheng, Cai, Chen, Leung and Li
(ACM MM 2020, "Multimodal Representation with Embedded Visual Guiding Objects for NER in
Social Media Posts").

OCSGA reads the image as the labels of the objects in it, embedded with the same word
embeddings as the text, so that both sides live in one space, and lets text and objects
interact through dense co-attention: self-attention within each side and attention of the
words guided by the objects (the SA and GA units of MCAN, Yu et al. 2019). Here:

    O   = W_o mean(E[label sub-tokens])        each object label through the text encoder's own
                                               (fine-tuned) input embedding table
    O'  = SA(O)                                objects attend to each other
    T   = SA(C)                                words attend to each other
    H   = GA(q=T, kv=O')                       words guided by the objects (n x d) -> CRF

The labels come from ``bfcl.encoders.objects``: by default the frozen image encoder's top-k
ImageNet classes, a documented approximation of OCSGA's Mask R-CNN detections (no detector
weights can be had offline), or a JSON file of real detector output. OCSGA's character-level
word features are the sub-word encoder's business here. A post with no objects (no image, or
no entry in the detector file) gets an empty guided message: its text path still works.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bfcl.errors import ConfigError
from bfcl.model.attention import TransformerLayer
from bfcl.model.baselines.common import HeadOutput, head_width


class OCSGAHead(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        d = self.width = head_width(cfg)
        layer = lambda: TransformerLayer(d, cfg.num_heads, cfg.ffn_dim or 4 * d, cfg.dropout)  # noqa: E731
        self.dropout = nn.Dropout(cfg.dropout)
        self.object_proj = nn.Linear(d, d)
        self.objects_self = layer()  # SA over the objects
        self.text_self = layer()  # SA over the words
        self.text_reads_objects = layer()  # GA: words guided by the objects
        self.out_dim = d

    def embed_objects(self, object_ids: Tensor, object_mask: Tensor, word_embeddings: nn.Module) -> Tensor:
        """(B, k, d): each label's mean sub-token embedding, projected."""
        E = word_embeddings(object_ids)  # (B, k, L, e)
        if E.shape[-1] != self.width:
            raise ConfigError(
                f"architecture='ocsga' embeds object labels with the text encoder's input embeddings, which are "
                f"{E.shape[-1]} wide, not text_dim={self.width}"
            )
        m = object_mask.to(E.dtype).unsqueeze(-1)
        return self.object_proj((E * m).sum(2) / m.sum(2).clamp(min=1.0))

    def forward(self, C: Tensor, text_mask: Tensor, U: Tensor | None, image_mask: Tensor | None, word_starts: Tensor,
                need_weights: bool = False, object_ids: Tensor | None = None, object_mask: Tensor | None = None,
                word_embeddings: nn.Module | None = None, **_: object) -> HeadOutput:
        h = self.dropout(C)
        B = C.shape[0]
        if object_ids is None or word_embeddings is None:
            O = C.new_zeros(B, 1, self.width)
            o_mask = torch.zeros(B, 1, dtype=torch.bool, device=C.device)
        else:
            O = self.embed_objects(object_ids, object_mask, word_embeddings)
            o_mask = object_mask.any(-1)
            if image_mask is not None:
                o_mask = o_mask & image_mask.bool()[:, None]
        O, _ = self.objects_self(O, None, o_mask, need_weights=False)
        T, _ = self.text_self(h, None, text_mask, need_weights=False)
        H, _ = self.text_reads_objects(T, O, o_mask, need_weights=False)
        return HeadOutput(H)
