"""Tiny random-weight bfcl checkpoints for the load test and the robustness harness.

The serving, loading and input-handling code paths do not depend on the model being
good, only on it being a real checkpoint: a 2-layer, 32-wide BERT with the packaged
MiniLM tokenizer, and (optionally) the real packaged EfficientNet-Lite0 image path.
Building one takes a second and needs no network.
"""

from __future__ import annotations

from pathlib import Path

LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def _tiny_bert(seed: int):
    """(random 2-layer BERT, MiniLM tokenizer)."""
    import torch
    from transformers import BertConfig, BertModel

    from bfcl.encoders.text import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=160,
    )
    return BertModel(cfg), tokenizer


def tiny_text_encoder_dir(path: str | Path, seed: int = 0) -> Path:
    """The tiny BERT and its tokenizer saved like any local transformers checkpoint
    (usable as ``model.text_encoder=<path>`` in a training config)."""
    path = Path(path)
    encoder, tokenizer = _tiny_bert(seed)
    encoder.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_checkpoint(path: str | Path, *, image: bool = True, seed: int = 0) -> Path:
    """Save a tiny random BFCL model at ``path`` (config.json, model.safetensors, tokenizer/).

    ``image=False`` gives the text-only setting (encoder + CRF, no image encoder)."""
    import torch

    from bfcl.model.configuration import BFCLConfig
    from bfcl.model.modeling import BFCL

    encoder, tokenizer = _tiny_bert(seed)
    if image:
        cfg = BFCLConfig(
            d_model=32, num_heads=4, ffn_dim=64, num_layers=2, num_bottlenecks=2, dropout=0.0, image_dim=1280,
            num_regions=49, labels=list(LABELS), max_length=32, contrastive_dim=8, image_encoder="efficientnet-lite0",
        )
    else:
        cfg = BFCLConfig(multimodal=False, decoder="crf", image_encoder="none", labels=list(LABELS), max_length=32, dropout=0.0)
    torch.manual_seed(seed + 1)
    return BFCL(cfg, encoder, tokenizer).eval().save_pretrained(path)
