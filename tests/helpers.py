"""Tiny random-weight models for fast, deterministic unit tests."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from bfcl.model.configuration import BFCLConfig
from bfcl.model.modeling import BFCL

LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@functools.lru_cache(maxsize=1)
def tokenizer():
    from bfcl.encoders.text import load_tokenizer

    return load_tokenizer("minilm")


def tiny_encoder(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tokenizer().vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=160,
    )
    return BertModel(cfg)


def save_tiny_encoder(folder):
    """A tiny random BERT and the MiniLM tokenizer saved in ``folder`` like any local transformers
    checkpoint (a ``text_encoder`` setting can name it)."""
    tiny_encoder().save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder


def tiny_config(**overrides) -> BFCLConfig:
    base = dict(
        d_model=32, num_heads=4, ffn_dim=64, num_layers=4, num_bottlenecks=2, dropout=0.0,
        image_dim=16, num_regions=49, labels=list(LABELS), max_length=32, contrastive_dim=8,
    )
    base.update(overrides)
    return BFCLConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> BFCL:
    cfg = tiny_config(**overrides)
    enc = tiny_encoder(seed)
    torch.manual_seed(seed + 1)
    return BFCL(cfg, enc, tokenizer()).eval()


@contextmanager
def running(app, host: str = "127.0.0.1") -> Iterator[str]:
    """uvicorn in a background thread on a free loopback port; yields its base URL (no trailing slash)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
