"""Run a model over posts of any length: window emissions -> stitched per post -> decoded.

Training and evaluation and the prediction API all go through here, so the
labels a user gets are the labels the metrics scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from bfcl.data.alignment import WordAligner, stitch
from bfcl.data.batching import WindowItem, collate, make_items
from bfcl.data.types import Sample
from bfcl.model.modeling import BFCL


@dataclass
class PostResult:
    label_ids: list[int]
    emissions: Tensor
    """(n_words, K) emissions of the whole post, stitched from its windows."""
    attention: dict | None = None


def batches(items: Sequence[WindowItem], batch_size: int, *, sort: bool = True):
    """Index lists of roughly equal-length windows (less padding, same results)."""
    order = list(range(len(items)))
    if sort:
        order.sort(key=lambda i: len(items[i].window.input_ids))
    for k in range(0, len(order), batch_size):
        yield order[k : k + batch_size]


@torch.no_grad()
def run_posts(
    model: BFCL,
    samples: Sequence[Sample],
    images: Sequence[Tensor | None] | None = None,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    keep_attention: bool = False,
    progress: Callable | None = None,
) -> list[PostResult]:
    model.eval()
    aligner = WordAligner(model.tokenizer, max_length=model.config.max_length)
    items = make_items(samples, aligner, None, images)
    window_emissions: list[Tensor | None] = [None] * len(items)
    window_attn: list[dict | None] = [None] * len(items)
    pad = model.tokenizer.pad_token_id or 0
    for idx in batches(items, batch_size):
        batch = {k: v.to(device) for k, v in collate([items[i] for i in idx], pad).items()}
        out = model(**batch, output_attentions=keep_attention)
        em = out.emissions.float().cpu()
        for j, i in enumerate(idx):
            window_emissions[i] = em[j, : items[i].window.num_words]
            if keep_attention:
                window_attn[i] = _attention_of(out, j, items[i])
        if progress is not None:
            progress(len(idx))
    # stitch windows back into posts
    per_post: list[list[int]] = [[] for _ in samples]
    for i, it in enumerate(items):
        per_post[it.sample_index].append(i)
    emissions = []
    for s, idxs in zip(samples, per_post):
        wins = [items[i].window for i in idxs]
        rows = stitch(wins, [list(window_emissions[i]) for i in idxs]) if wins else []
        K = model.config.num_labels
        emissions.append(torch.stack(rows) if rows else torch.zeros(0, K))
    results = []
    for k in range(0, len(samples), 256):
        chunk = emissions[k : k + 256]
        W = max([len(e) for e in chunk] + [1])
        E = torch.zeros(len(chunk), W, model.config.num_labels)
        mask = torch.zeros(len(chunk), W, dtype=torch.bool)
        for b, e in enumerate(chunk):
            E[b, : len(e)] = e
            mask[b, : len(e)] = True
        paths = model.decode(E.to(device), mask.to(device))
        for b, path in enumerate(paths):
            post = k + b
            attn = None
            if keep_attention and per_post[post]:
                attn = window_attn[per_post[post][0]]
            results.append(PostResult(list(path), chunk[b], attn))
    return results


def _attention_of(out, j: int, item: WindowItem) -> dict:
    """Attention maps of one window, cut to its real sub-tokens (for explain)."""
    n = len(item.window.input_ids)
    d = {"word_starts": list(item.window.word_starts), "first_word": item.window.first_word}
    if out.text_to_image is not None:
        d["text_to_image"] = out.text_to_image[j, :n].float().cpu()
    d["bottleneck_attention"] = [a[j].float().cpu() for a in out.bottleneck_attention or ()]
    return d


def predict_labels(model: BFCL, samples: Sequence[Sample], images=None, **kw) -> list[list[str]]:
    labels = model.config.labels
    return [[labels[i] for i in r.label_ids] for r in run_posts(model, samples, images, **kw)]
