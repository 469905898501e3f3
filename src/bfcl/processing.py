"""``BFCLProcessor``: the one road from a post to a batch and back, in the manner of
Hugging Face's ``CLIPProcessor``.

It owns everything between what a caller holds and what ``BFCL.forward`` takes:
the tokenizer and the tweet style (raw text -> the words the model was trained on),
word alignment and windowing with word shapes (``bfcl.data.alignment``,
``bfcl.data.batching``, ``bfcl.data.shapes``), the frozen image encoder behind its
feature cache (``bfcl.encoders.cache``), and collate; and the way back, stitching
the windows of a long post into one sequence per post. Training, evaluation, the
Predictor, ``explain`` and the server all build their batches here, so the labels a
user gets and the labels the metrics scored come from one path.

``run_posts`` runs a model over posts of any length with it: window emissions, stitched
per post, decoded by the CRF over whole posts, so every word is labelled; training's
dev selection, ``bfcl evaluate`` and the Predictor all go through it.

Saved next to the model: ``save_pretrained(dir)`` writes ``dir/tokenizer/`` and
``from_pretrained(dir)`` reads it back with ``dir/config.json`` (the checkpoint layout
is unchanged, so every existing checkpoint loads).
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from bfcl.data.alignment import WordAligner
from bfcl.data.batching import WindowItem, collate, make_items
from bfcl.data.labels import LabelSet
from bfcl.data.types import ImageInput, OnError, Sample
from bfcl.data.umt import image_paths
from bfcl.encoders import image as image_encoders
from bfcl.encoders.cache import FeatureCache
from bfcl.encoders.objects import ImageObjects, ObjectLabeler, build_object_labeler, split_objects
from bfcl.encoders.text import load_tokenizer, tokenizer_from_dir
from bfcl.errors import CheckpointError, ConfigError
from bfcl.data.tokenize import Token, resolve_style, tokens_from_input
from bfcl.data.tokenstyle import agreement_summary, infer_style
from bfcl.metrics import entity_scores
from bfcl.model.configuration import BFCLConfig
from bfcl.model.modeling import TOKENIZER_DIR, read_checkpoint_config

log = logging.getLogger("bfcl.processing")


class BFCLProcessor:
    """Posts (raw text, tokens or ``Sample``s, with images) -> window batches -> per-post results.

    ``feature_cache``: the frozen image encoder behind its content-keyed cache, or None
    (the model reads no images, or the caller passes features itself).
    """

    def __init__(self, tokenizer: Any, config: BFCLConfig, *, feature_cache: FeatureCache | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.feature_cache = feature_cache
        self.tweet_style = resolve_style(config.tweet_style)
        """How raw text is split into words: the style recorded from the training data."""
        self.aligner = WordAligner(tokenizer, max_length=config.max_length)
        self.pad_token_id: int = tokenizer.pad_token_id or 0
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._labeler: tuple[Any, ObjectLabeler | None] = (None, None)

    # ---- construction ----------------------------------------------------
    @classmethod
    def from_config(cls, config: BFCLConfig, **kw: Any) -> "BFCLProcessor":
        """The processor of a fresh model: the text encoder's own tokenizer."""
        return cls(load_tokenizer(config.text_encoder), config, **kw)

    @classmethod
    def for_model(cls, model: Any, **kw: Any) -> "BFCLProcessor":
        """The processor of a model in memory (its tokenizer and config)."""
        return cls(model.tokenizer, model.config, **kw)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kw: Any) -> "BFCLProcessor":
        """Read ``path/tokenizer/`` and the model settings of ``path/config.json`` (a checkpoint folder)."""
        path = Path(path)
        _, config = read_checkpoint_config(path, verify=False)
        tok_dir = path / TOKENIZER_DIR
        try:
            tokenizer = tokenizer_from_dir(tok_dir) if tok_dir.is_dir() else load_tokenizer(config.text_encoder)
        except (ConfigError, OSError, ValueError) as e:
            raise CheckpointError(f"{tok_dir}: the tokenizer cannot be loaded ({type(e).__name__}: {e})") from None
        return cls(tokenizer, config, **kw)

    def save_pretrained(self, path: str | Path) -> None:
        """``path/tokenizer/``: what ``from_pretrained`` needs besides the model's config.json."""
        self.tokenizer.save_pretrained(str(Path(path) / TOKENIZER_DIR))

    @staticmethod
    def build_feature_cache(
        config: BFCLConfig, root: str | Path, device: torch.device | str | None = None
    ) -> FeatureCache | None:
        """The config's frozen image encoder behind a feature cache under ``root``; None when the
        config reads no images. Its sizes must be the config's (they come from the encoder's name)."""
        if not config.uses_image:
            return None
        encoder = image_encoders.build_image_encoder(config.image_encoder)  # looked up late: tests swap it
        if encoder is None:
            return None
        if (encoder.feature_dim, encoder.num_regions) != (config.image_dim, config.num_regions):
            raise ConfigError(
                f"model.image_encoder={config.image_encoder!r} gives {encoder.num_regions} x {encoder.feature_dim} "
                f"features, but the config says num_regions={config.num_regions}, image_dim={config.image_dim}"
            )
        return FeatureCache(Path(root), encoder if device is None else encoder.to(device))

    def attach_image_encoder(self, root: str | Path | None, device: torch.device | str | None = None) -> FeatureCache | None:
        """``build_feature_cache`` for this processor; ``root`` None: a private folder deleted with it."""
        if root is None and self.config.uses_image:
            self._tmp = tempfile.TemporaryDirectory(prefix="bfcl-features-")
            root = self._tmp.name
        self.feature_cache = self.build_feature_cache(self.config, root, device) if root is not None else None
        return self.feature_cache

    # ---- text --------------------------------------------------------------
    def tokenize(self, words: str | Sequence[str]) -> list[Token]:
        """Raw text split the way the training data was (offsets into the string), or given words kept."""
        return tokens_from_input(words, style=self.tweet_style)

    # ---- images ------------------------------------------------------------
    @property
    def object_labeler(self) -> ObjectLabeler | None:
        """OCSGA's object labels, from the image encoder behind the cache; None for every other model."""
        if self.config.architecture != "ocsga" or self.feature_cache is None:
            return None
        encoder = self.feature_cache.encoder
        if self._labeler[0] is not encoder:
            self._labeler = (encoder, build_object_labeler(self.config, encoder))
        return self._labeler[1]

    def image_features(
        self, images: Sequence[ImageInput], on_error: OnError = "error", *, as_stored: bool = False
    ) -> list[Tensor | ImageObjects | None]:
        """Frozen-CNN grids through the content-keyed cache; None where there is no image (or no cache).
        For OCSGA, each grid comes with its image's object labels (``ImageObjects``).

        ``as_stored``: the cache's own tensors in its storage dtype, read-only (see
        ``FeatureCache.get``): enough for ``windows``, whose batches copy them into float32.
        OCSGA's labeler reads float32 grids, so it always gets converted ones."""
        if self.feature_cache is None:
            return [None] * len(images)
        sources = [_as_source(im) for im in images]
        labeler = self.object_labeler
        if as_stored and labeler is None:
            return self.feature_cache.encode_images(sources, on_error=on_error, as_stored=True)
        features = self.feature_cache.encode_images(sources, on_error=on_error)  # any cache with encode_images
        return features if labeler is None else labeler(sources, features)

    def sample_features(
        self, samples: Sequence[Sample], images_dir: str | Path | None, extensions: Sequence[str] = (".jpg",),
        on_error: OnError = "none", logger: logging.Logger = log,
    ) -> list[Tensor | None]:
        """Features of data-file posts, their images looked up by IMGID in ``images_dir``."""
        if self.feature_cache is None or images_dir is None:
            return [None] * len(samples)
        paths = image_paths(samples, images_dir, extensions)
        missing = sum(p is None for p in paths)
        if missing:
            logger.info("%d of %d posts have no image file in %s: they get an image mask", missing, len(paths), images_dir)
        return self.image_features(paths, on_error=on_error)

    # ---- windows and batches -------------------------------------------------
    def windows(
        self, samples: Sequence[Sample], images: Sequence[Tensor | None] | None = None, *,
        labels: LabelSet | None = None, repair: bool = False,
    ) -> list[WindowItem]:
        """One item per encoder window (long posts give several); ``labels`` encodes the gold tags.
        Word shapes are computed only for a model that reads them (``word_shape_dim > 0``)."""
        grids, objects = split_objects(images, self.tokenizer) if images is not None else (None, None)
        return make_items(
            samples, self.aligner, labels, grids, repair=repair, chars=self.config.char_cnn_dim > 0, objects=objects,
            shapes=self.config.word_shape_dim > 0,
        )

    def collate(self, items: Sequence[WindowItem]) -> dict[str, Tensor]:
        """Pad windows into the tensors ``BFCL.forward`` takes."""
        return collate(items, self.pad_token_id)

    def batches(
        self, items: Sequence[WindowItem], batch_size: int, *, device: torch.device | str = "cpu", sort: bool = True,
    ) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
        """``(item indices, batch)`` over roughly equal-length windows (less padding, same results)."""
        order = list(range(len(items)))
        if sort:
            order.sort(key=lambda i: len(items[i].window.input_ids))
        for k in range(0, len(order), batch_size):
            idx = order[k : k + batch_size]
            yield idx, {name: t.to(device) for name, t in self.collate([items[i] for i in idx]).items()}

    def train_loader(
        self, items: Sequence[WindowItem], batch_size: int, generator: torch.Generator
    ) -> torch.utils.data.DataLoader:
        """Shuffled training batches, reproducible from ``generator``."""
        return torch.utils.data.DataLoader(
            items, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=self.collate
        )

    # ---- back to posts -------------------------------------------------------
    def stitch_posts(self, items: Sequence[WindowItem], window_rows: Sequence[Tensor], num_posts: int) -> list[Tensor]:
        """Per post, the (n_words, K) rows of its windows joined (each word from the window that owns it).

        Tensor slices, not per-word rows: a one-window post's rows are its window's rows
        (the common case costs nothing); the ownership checks are ``stitch``'s."""
        per_post: list[list[int]] = [[] for _ in range(num_posts)]
        for i, it in enumerate(items):
            per_post[it.sample_index].append(i)
        out = []
        for idxs in per_post:
            if not idxs:
                out.append(torch.zeros(0, self.config.num_labels))
                continue
            parts, done = [], 0
            for i in idxs:
                w, rows = items[i].window, window_rows[i]
                lo, hi = w.owned
                if len(rows) != w.num_words:
                    raise ValueError(f"window at word {w.first_word} has {w.num_words} words but {len(rows)} values")
                if lo != done or not (w.first_word <= lo <= hi <= w.first_word + w.num_words):
                    raise ValueError(f"owned ranges do not tile the sentence at word {done}: got {w.owned}")
                parts.append(rows[lo - w.first_word : hi - w.first_word])
                done = hi
            last = items[idxs[-1]].window
            if done != last.first_word + last.num_words:
                raise ValueError(f"owned ranges stop at word {done}, before the sentence ends")
            out.append(parts[0] if len(parts) == 1 else torch.cat(parts))
        return out


def _as_source(image: ImageInput) -> Any:
    """Paths and bytes go to the cache as they are; a PIL image is encoded to PNG bytes so it is keyed by content."""
    if image is None or isinstance(image, (str, bytes, bytearray, memoryview)):
        return image
    if isinstance(image, Path):
        return str(image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    if hasattr(image, "__fspath__"):
        return image
    raise TypeError(f"image must be a path, bytes, a PIL image or None, not {type(image).__name__}")


def trained_posts_with_image(model: Any) -> int | None:
    """Training posts that had an image feature, from the checkpoint; None where it is not recorded."""
    info = getattr(model, "checkpoint_info", None) or {}
    seen = (info.get("training_data") or {}).get("train_posts_with_image")
    return seen if isinstance(seen, int) else None


def choose_tweet_style(
    config: BFCLConfig, samples: Sequence[Sample], logger: logging.Logger = log
) -> tuple[str, dict[str, Any]]:
    """The raw-text tokenisation style for a model trained on ``samples``: inferred from their tokens
    (``tweet_style="auto"``) or the configured one, checked against them; with a report of how often
    it gives the training sentences back. The caller records the style in a new config."""
    sentences = [s.tokens for s in samples]
    report = infer_style(sentences)
    style = config.tweet_style
    if style == "auto":
        style = report.style
        logger.info("tweet_style: %s, inferred from the training tokens (splits %s)", report.style, report.decided)
    elif style != report.style:
        logger.warning("tweet_style=%s is set, but the training tokens look like %s (splits %s; %s handles %s "
                    "the other way); set model.tweet_style=auto to use the inferred style",
                    style, report.style, report.decided, style, ", ".join(report.mismatches[style]) or "nothing")
    return style, {"style": style, "inferred": report.style, "splits": report.decided,
                   "agreement": agreement_summary(sentences, style)}



# ---- running a model over posts: shared by training's dev selection, evaluation and prediction ----
DECODE_CHUNK = 256
"""Posts decoded by the CRF at once (their stitched emissions padded together)."""


@dataclass
class PostResult:
    label_ids: list[int]
    emissions: Tensor
    """(n_words, K) emissions of the whole post, stitched from its windows."""
    attention: dict | None = None


def run_posts(
    model: Any,
    samples: Sequence[Sample],
    images: Sequence[Tensor | None] | None = None,
    *,
    processor: BFCLProcessor | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    keep_attention: bool = False,
    progress: Callable | None = None,
) -> list[PostResult]:
    """Label ``samples`` (with their image features, or None): one result per post.

    Windows run in batches of similar length (less padding); results come back in input order.
    """
    if model.training:  # train()/eval() set every submodule; re-setting an eval model costs ~1 ms a call
        model.eval()
    processor = processor or BFCLProcessor.for_model(model)
    with torch.no_grad():
        items = processor.windows(samples, images)
        window_emissions: list[Tensor | None] = [None] * len(items)
        window_attn: list[dict | None] = [None] * len(items)
        for idx, batch in processor.batches(items, batch_size, device=device):
            # inference mode drops autograd's per-op bookkeeping (~7% of a one-post forward); what
            # leaves it is copied out of it, so callers get ordinary tensors (usable with autograd)
            with torch.inference_mode():
                out = model(**batch, output_attentions=keep_attention)
            em = out.emissions.to("cpu", torch.float32, copy=True)
            for j, i in enumerate(idx):
                window_emissions[i] = em[j, : items[i].window.num_words]
                if keep_attention:
                    window_attn[i] = _attention_of(out, j, items[i])
            if progress is not None:
                progress(len(idx))
        emissions = processor.stitch_posts(items, window_emissions, len(samples))
        first_window: dict[int, int] = {}
        for i, it in enumerate(items):
            first_window.setdefault(it.sample_index, i)
        results = []
        for k in range(0, len(samples), DECODE_CHUNK):
            chunk = emissions[k : k + DECODE_CHUNK]
            E, mask = pad_posts(chunk, model.config.num_labels)
            for b, path in enumerate(model.decode(E.to(device), mask.to(device))):
                first = first_window.get(k + b)
                attn = window_attn[first] if keep_attention and first is not None else None
                results.append(PostResult(path, chunk[b], attn))
    return results


def pad_posts(emissions: Sequence[Tensor], num_labels: int) -> tuple[Tensor, Tensor]:
    """Per-post (n_i, K) emissions padded into (B, max(n_i, 1), K) zeros, with the prefix mask (B, W)."""
    sizes = [len(e) for e in emissions]
    W = max(sizes + [1])
    if sizes and min(sizes) == W:  # nothing to pad (one post, or posts of one length)
        return torch.stack([e.float() for e in emissions]), torch.ones(len(sizes), W, dtype=torch.bool)
    E = torch.zeros(len(emissions), W, num_labels)
    for b, e in enumerate(emissions):
        E[b, : len(e)] = e
    return E, torch.arange(W) < torch.tensor(sizes)[:, None]


def _attention_of(out, j: int, item: WindowItem) -> dict:
    """Attention maps of one window, cut to its real sub-tokens (for explain)."""
    n = len(item.window.input_ids)
    d = {"word_starts": list(item.window.word_starts), "first_word": item.window.first_word}
    if out.text_to_image is not None:
        d["text_to_image"] = out.text_to_image[j, :n].to("cpu", torch.float32, copy=True)
    d["bottleneck_attention"] = [a[j].to("cpu", torch.float32, copy=True) for a in out.bottleneck_attention or ()]
    return d


def predict_labels(model: Any, samples: Sequence[Sample], images=None, **kw) -> list[list[str]]:
    """BIO labels per post (``run_posts`` decoded to names)."""
    labels = model.config.labels
    return [[labels[i] for i in r.label_ids] for r in run_posts(model, samples, images, **kw)]


def score_posts(
    model: Any, samples: Sequence[Sample], images: Sequence[Tensor | None] | None, *,
    processor: BFCLProcessor | None = None, batch_size: int = 64, device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Entity scores of the model's labels against the samples' gold labels, with the predictions."""
    preds = predict_labels(model, samples, images, processor=processor, batch_size=batch_size, device=device)
    return {**entity_scores([s.labels for s in samples], preds), "predictions": preds}


__all__ = [
    "BFCLProcessor", "PostResult", "choose_tweet_style", "pad_posts", "predict_labels", "run_posts",
    "score_posts", "trained_posts_with_image",
]
