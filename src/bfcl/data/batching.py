"""Samples -> encoder windows -> padded tensor batches.

A post longer than the encoder window becomes several overlapping windows
(``bfcl.data.alignment``); training sees each window as an item, and
prediction stitches the windows' emissions back into one sequence per post
before the CRF decodes it, so every word is labelled.

In training, each word's loss counts once: a labelled batch carries
``owned_mask`` (the words each window owns; the rest is context) and
``open_start`` / ``open_end`` (the owned words begin / end inside the post),
so the CRF scores only owned words and adds no sentence-edge transition
where a window cuts a post (a window may begin inside an entity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from bfcl.data.alignment import Window, WordAligner
from bfcl.data.chars import char_ids
from bfcl.data.labels import LabelSet, repair_stray_i
from bfcl.data.shapes import word_shape
from bfcl.data.types import Sample


@dataclass
class WindowItem:
    sample_index: int
    window: Window
    label_ids: list[int] | None
    shapes: list[int]
    """Word shape ids of the window's words; ``[]`` where they were not computed (collated as 0)."""
    image: Tensor | None
    """(R, d_v) frozen-CNN grid of the post's image (any float dtype: collate copies it into
    float32), or None: no image."""
    post_words: int = 0
    """Words in the whole post (``window.owned`` ends before it: the window is cut at its end)."""
    chars: list[list[int]] | None = None
    """Per word of the window, its character ids (``bfcl.data.chars``), for a model
    with a character CNN; None otherwise."""
    objects: list[list[int]] | None = None
    """Sub-token ids of the labels of the objects in the post's image (OCSGA only; see
    ``bfcl.encoders.objects``); None: the model reads no object labels, or there is no image."""

    @property
    def open_start(self) -> bool:
        """The owned words start inside the post, not at its first word."""
        return self.window.owned[0] > 0

    @property
    def open_end(self) -> bool:
        """The owned words end inside the post, not at its last word."""
        return self.window.owned[1] < self.post_words


def make_items(
    samples: Sequence[Sample],
    aligner: WordAligner,
    labels: LabelSet | None = None,
    images: Sequence[Tensor | None] | None = None,
    *,
    repair: bool = False,
    chars: bool = False,
    objects: Sequence[list[list[int]] | None] | None = None,
    shapes: bool = True,
) -> list[WindowItem]:
    """One item per window. ``repair`` turns stray I-X into B-X (a training-only option;
    gold data for evaluation keeps them, as conlleval does). ``chars``: give each word's
    characters too (the word-level encoder's character CNN reads them). ``objects``: per sample,
    its image's object-label sub-token ids (OCSGA). ``shapes=False`` leaves the word shapes out
    (``[]``: collated as zeros) for a model without a shape embedding.
    All the samples' words go to the tokenizer in one call."""
    items = []
    windows = aligner.encode_batch([s.tokens for s in samples])
    for i, s in enumerate(samples):
        ids = None
        if labels is not None and s.labels is not None:
            tags = repair_stray_i(s.labels) if repair else s.labels
            try:
                ids = labels.encode(tags)
            except (KeyError, ValueError) as e:
                raise ValueError(f"{s.source}:{s.line}: sample {s.id!r}: {e}") from None
        word_shapes = [word_shape(w) for w in s.tokens] if shapes else None
        image = images[i] if images is not None else None
        word_chars = [char_ids(t) for t in s.tokens] if chars else None
        objs = objects[i] if objects is not None else None
        for w in windows[i]:
            sl = slice(w.first_word, w.first_word + w.num_words)
            items.append(WindowItem(
                i, w, ids[sl] if ids is not None else None, word_shapes[sl] if shapes else [], image, len(s.tokens),
                word_chars[sl] if word_chars is not None else None, objs,
            ))
    return items


def _padded(rows: Sequence[Sequence[int]], width: int, pad: int) -> Tensor:
    """(len(rows), width) long tensor of the rows, each padded with ``pad``: one tensor call."""
    return torch.tensor([[*r, *([pad] * (width - len(r)))] for r in rows], dtype=torch.long)


def collate(items: Sequence[WindowItem], pad_token_id: int) -> dict[str, Tensor]:
    """Pad a list of windows into the tensors ``BFCL.forward`` takes (an item without
    shapes gets shape 0 for its words)."""
    B = len(items)
    lengths = [len(it.window.input_ids) for it in items]
    num_words = [it.window.num_words for it in items]
    n = max(lengths)
    W = max(max(num_words), 1)
    input_ids = _padded([it.window.input_ids for it in items], n, pad_token_id)
    attention_mask = (torch.arange(n) < torch.tensor(lengths)[:, None]).long()
    word_starts = _padded([it.window.word_starts for it in items], W, 0)
    word_mask = torch.arange(W) < torch.tensor(num_words)[:, None]
    word_shapes = _padded([it.shapes for it in items], W, 0)
    has_labels = all(it.label_ids is not None for it in items)
    batch = dict(
        input_ids=input_ids, attention_mask=attention_mask, word_starts=word_starts,
        word_mask=word_mask, word_shapes=word_shapes,
    )
    if has_labels:
        owned = torch.zeros((B, W), dtype=torch.bool)
        for b, it in enumerate(items):
            lo, hi = it.window.owned
            owned[b, lo - it.window.first_word : hi - it.window.first_word] = True
        batch["labels"] = _padded([it.label_ids for it in items], W, 0)
        batch["owned_mask"] = owned
        batch["open_start"] = torch.tensor([it.open_start for it in items], dtype=torch.bool)
        batch["open_end"] = torch.tensor([it.open_end for it in items], dtype=torch.bool)
    if all(it.chars is not None for it in items):
        L = max([len(c) for it in items for c in it.chars] + [1])
        char_tensor = torch.zeros((B, W, L), dtype=torch.long)
        for b, it in enumerate(items):
            for k, c in enumerate(it.chars):
                char_tensor[b, k, : len(c)] = torch.tensor(c, dtype=torch.long)
        batch["char_ids"] = char_tensor
    present = [it.image for it in items if it.image is not None]
    if present:
        R, D = present[0].shape
        feats = torch.zeros((B, R, D), dtype=torch.float32)
        mask = torch.zeros(B, dtype=torch.bool)
        for b, it in enumerate(items):
            if it.image is not None:
                feats[b] = it.image  # converted to float32 as it is copied
                mask[b] = True
        batch["image_features"], batch["image_mask"] = feats, mask
    if any(it.objects is not None for it in items):
        batch["object_ids"], batch["object_mask"] = _pad_objects([it.objects or [] for it in items], pad_token_id)
    return batch


def _pad_objects(objects: Sequence[list[list[int]]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """(B, k, L) sub-token ids of each item's object labels and their mask (k, L at least 1)."""
    k = max([len(o) for o in objects] + [1])
    L = max([len(ids) for o in objects for ids in o] + [1])
    out = torch.full((len(objects), k, L), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(objects), k, L), dtype=torch.bool)
    for b, labels in enumerate(objects):
        for j, ids in enumerate(labels):
            out[b, j, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[b, j, : len(ids)] = True
    return out, mask
