"""What the baseline heads share: their output, the masked visual inputs, small helpers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bfcl.errors import ConfigError


@dataclass
class HeadOutput:
    hidden: Tensor
    """H (B, n, out_dim): what the emission layer reads at each word's first sub-token."""
    span_emissions: Tensor | None = None
    """UMT only: (B, W, 3) O/B/I scores of the text-only entity span detector, per word."""
    text_to_image: Tensor | None = None
    """(B, n, R) attention of each sub-token over the image regions (for explain); None unless asked for."""


def visual_inputs(U: Tensor | None, image_mask: Tensor | None, like: Tensor, image_dim: int) -> tuple[Tensor, Tensor]:
    """The grid (B, R, d_v) and a region mask (B, R): a batch without image features gets one
    masked zero region per post, so every head runs the same code with or without images."""
    B = like.shape[0]
    if U is None:
        return like.new_zeros(B, 1, image_dim), torch.zeros(B, 1, dtype=torch.bool, device=like.device)
    U = U.to(like.dtype)
    has = image_mask.bool() if image_mask is not None else torch.ones(B, dtype=torch.bool, device=like.device)
    return U, has[:, None].expand(-1, U.shape[1])


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """softmax over ``dim`` where mask is True; all zeros (not NaN) where nothing is visible."""
    scores = scores.float().masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=dim), nan=0.0)


def gather_words(x: Tensor, word_starts: Tensor) -> Tensor:
    """Rows (B, W, d) of x (B, n, d) at each word's first sub-token."""
    return torch.gather(x, 1, word_starts.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def head_width(cfg) -> int:
    """d: the text encoder's width, at which every baseline works (as in its BERT form)."""
    if not cfg.text_dim:
        raise ConfigError(f"architecture={cfg.architecture!r} needs text_dim, the text encoder's width (unknown here)")
    return int(cfg.text_dim)


__all__ = ["HeadOutput", "gather_words", "head_width", "masked_softmax", "visual_inputs"]
