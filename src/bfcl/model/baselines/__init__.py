"""The multimodal baselines of Table 2, each a head of the one ``BFCL`` model.

``model.architecture`` selects one (``umt``, ``gvatt``, ``adacan``, ``ocsga``); everything
around the head is shared with BFCL: the fine-tuned text encoder, the cached frozen-CNN grid,
the word-level emission layer and CRF, the data pipeline, training, checkpoints, prediction.
Each head is built from its paper in the "BERT form" Table 2 uses (the UMT paper's
GVATT-BERT-CRF and AdaCAN-BERT-CRF: the text encoder's output C replaces the BiLSTM states)
and works at the encoder's width d = text_dim.

A head takes C (B, n, d) with its mask, the grid U (B, R, d_v) with ``image_mask`` (B,), and
returns H (B, n, out_dim) for the emission layer. A post without an image gets an empty
visual message (masked attention, zero context), never a stock picture, so its text path
still works.
"""

from __future__ import annotations

from torch import nn

from bfcl.errors import ConfigError
from bfcl.model.baselines.adacan import AdaCANHead
from bfcl.model.baselines.common import HeadOutput, gather_words
from bfcl.model.baselines.gvatt import GVATTHead
from bfcl.model.baselines.ocsga import OCSGAHead
from bfcl.model.baselines.umt import UMTHead

HEADS: dict[str, type[nn.Module]] = {"umt": UMTHead, "gvatt": GVATTHead, "adacan": AdaCANHead, "ocsga": OCSGAHead}


def build_head(cfg) -> nn.Module:
    """The head of ``cfg.architecture`` (a Table 2 baseline)."""
    if cfg.architecture not in HEADS:
        raise ConfigError(f"architecture={cfg.architecture!r} has no baseline head; choose one of {sorted(HEADS)}")
    return HEADS[cfg.architecture](cfg)


__all__ = ["HEADS", "HeadOutput", "build_head", "gather_words"]
