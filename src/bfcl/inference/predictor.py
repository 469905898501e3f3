"""Hand a trained model a post and its picture; get the names back.

``bfcl.load(dir)`` returns a :class:`Predictor`. It owns the model, the frozen
image encoder and its feature cache, and turns raw text into words the way the
model's training data was tokenised, so entity offsets point into the caller's string.

A model knows what it was trained on: ``train_posts_with_image`` (from the
checkpoint; None for checkpoints older than that record). A model that saw no
image has random image weights, so it ignores images (the CNN is never run,
``has_image`` is False) and warns once; one that saw fewer than
``FEW_IMAGES`` warns that its image weights are barely trained.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from bfcl.data.labels import spans
from bfcl.data.types import ImageInput, OnError, Post, Sample
from bfcl.data.tokenize import Token
from bfcl.errors import ConfigError
from bfcl.model.modeling import BFCL
from bfcl.processing import DECODE_CHUNK, BFCLProcessor, PostResult, pad_posts, run_posts, trained_posts_with_image

log = logging.getLogger("bfcl.predict")

FEW_IMAGES = 100
"""Fewer training posts with an image than this: the image weights are barely trained."""


@dataclass
class Entity:
    text: str
    type: str
    start: int
    """Character offset into the input text (``text[start:end] == entity.text``)."""
    end: int
    score: float
    """Marginal probability of exactly this span and type under the CRF (or the product of
    token probabilities for the softmax decoder)."""
    token_start: int
    token_end: int

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "type": self.type, "start": self.start, "end": self.end, "score": round(self.score, 6)}


@dataclass
class Prediction:
    text: str
    tokens: list[Token]
    labels: list[str]
    entities: list[Entity]
    has_image: bool
    attention: dict | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "entities": [e.to_dict() for e in self.entities],
            "tokens": [t.text for t in self.tokens],
            "labels": self.labels,
            "has_image": self.has_image,
        }


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or cuda when available else cpu; a ConfigError naming it when torch cannot
    parse it or it is not present (rather than torch's error from deep inside ``.to()``)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {str(device)!r}: not a torch device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r}: no CUDA GPU is available here (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {str(device)!r}: MPS is not available here (use cpu)")
    return dev


class Predictor:
    def __init__(
        self,
        model: BFCL,
        *,
        feature_cache: str | Path | None = None,
        image_on_error: str = "error",
        device: str | torch.device | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.image_on_error = image_on_error
        self.processor = BFCLProcessor.for_model(model)
        """Posts to batches and back: tokenizer, tweet style, windows, image encoder and feature cache."""
        self.tweet_style = self.processor.tweet_style
        """How raw text is split into words: the style recorded from the training data."""
        self.train_posts_with_image: int | None = trained_posts_with_image(model)
        """Training posts that had an image feature; None for checkpoints that do not record it."""
        self.ignores_images = self.config.uses_image and self.train_posts_with_image == 0
        """True when the model never saw an image in training: images given to it are not used."""
        self._warned_ignored = False
        if self.config.uses_image and self.train_posts_with_image is not None and 0 < self.train_posts_with_image < FEW_IMAGES:
            log.warning("this model saw only %d training posts with an image: its image weights are barely trained",
                        self.train_posts_with_image)
        if self.config.uses_image and not self.ignores_images:
            self.processor.attach_image_encoder(feature_cache or None, self.device)

    @property
    def cache(self):
        """The frozen image encoder's feature cache (None: this predictor reads no images)."""
        return self.processor.feature_cache

    @classmethod
    def load(cls, path: str | Path, **kw) -> "Predictor":
        device = kw.get("device")
        if device is not None:
            resolve_device(device)  # before the checkpoint is read: a bad --device is named, not a torch error
        return cls(BFCL.from_pretrained(path, device="cpu"), **kw)

    @property
    def labels(self) -> list[str]:
        return list(self.config.labels)

    # ---- images -------------------------------------------------------
    def image_features(self, images: Sequence[ImageInput], on_error: OnError | None = None) -> list[Tensor | None]:
        """Frozen-CNN grids through the content-keyed cache; None where there is no image.

        A bad image raises (naming it) or, with ``on_error="none"``, is logged and treated as
        no image: the loader's documented fallback.
        """
        return self._image_features(images, on_error)

    def _image_features(self, images: Sequence[ImageInput], on_error: OnError | None, as_stored: bool = False):
        """``image_features``; ``as_stored``: the cache's own read-only tensors (``predict_batch``'s batches copy them)."""
        self._warn_if_ignored(images)
        return self.processor.image_features(images, on_error=on_error or self.image_on_error, as_stored=as_stored)

    def _warn_if_ignored(self, images: Sequence[Any]) -> None:
        if self.ignores_images and not self._warned_ignored and any(im is not None for im in images):
            log.warning("this model was trained without images (train_posts_with_image=0): "
                        "images given to it are ignored, and predictions use the text only")
            self._warned_ignored = True

    # ---- prediction -----------------------------------------------------
    def predict(
        self, text: str | Sequence[str], image: ImageInput = None, *, explain: bool = False, image_on_error: str | None = None
    ) -> Prediction:
        return self.predict_batch([(text, image)], batch_size=1, explain=explain, image_on_error=image_on_error)[0]

    def predict_batch(
        self,
        items: Iterable[Any],
        *,
        batch_size: int = 32,
        explain: bool = False,
        image_on_error: str | None = None,
        progress=None,
    ) -> list[Prediction]:
        """``items``: strings, token lists, ``(text, image)`` pairs or ``{"text"|"tokens", "image"}`` dicts.

        ``image_on_error`` overrides the predictor's policy for this call ("error" or "none").
        """
        posts = [Post.coerce(item, k) for k, item in enumerate(items)]
        texts = [p.words for p in posts]
        tokenised = [self.processor.tokenize(t) for t in texts]
        # the cache's stored tensors: collate converts them to float32 as it copies them into the batch
        features = self._image_features([p.image for p in posts], image_on_error, as_stored=True)
        samples = [Sample(str(k), [t.text for t in toks]) for k, toks in enumerate(tokenised)]
        runnable = [k for k, s in enumerate(samples) if s.tokens]
        results: dict[int, PostResult] = {}
        if runnable:
            out = run_posts(
                self.model, [samples[k] for k in runnable], [features[k] for k in runnable],
                processor=self.processor, batch_size=batch_size, device=self.device, keep_attention=explain,
                progress=progress,
            )
            results = dict(zip(runnable, out))
        label_names = self.config.labels
        labels = {k: [label_names[i] for i in r.label_ids] for k, r in results.items()}
        found = {k: spans(labs, mode="conlleval") for k, labs in labels.items()}
        scores = self._span_scores({k: (results[k].emissions, labs, found[k]) for k, labs in labels.items() if found[k]})
        preds = []
        for k, (text, toks) in enumerate(zip(texts, tokenised)):
            raw = text if isinstance(text, str) else " ".join(text)
            r = results.get(k)
            if r is None:
                preds.append(Prediction(raw, [], [], [], features[k] is not None))
                continue
            ents = _make_entities(raw, toks, found[k], scores.get(k, ()))
            preds.append(Prediction(raw, toks, labels[k], ents, features[k] is not None, r.attention))
        return preds

    def label_samples(
        self,
        samples: Sequence[Sample],
        *,
        images_dir: str | Path | None = None,
        batch_size: int = 64,
        image_extensions=(".jpg",),
        image_on_error: OnError = "none",
        progress=None,
    ) -> list[list[str]]:
        """Labels for already-tokenised samples (data files); images looked up by IMGID.

        A data file's posts whose image file is absent are the normal no-image case; an
        unreadable image is logged and treated the same unless ``image_on_error="error"``.
        """
        self._warn_if_ignored([images_dir])
        feats = self.processor.sample_features(samples, images_dir, image_extensions, on_error=image_on_error)
        res = run_posts(self.model, samples, feats, processor=self.processor, batch_size=batch_size,
                        device=self.device, progress=progress)
        return [[self.config.labels[i] for i in r.label_ids] for r in res]

    # ---- entities with CRF confidence ------------------------------------
    def _entities(self, text: str, toks: list[Token], labels: list[str], emissions: Tensor) -> list[Entity]:
        """One post's entities with their scores (``predict_batch`` scores all its posts at once)."""
        found = spans(labels, mode="conlleval")
        scores = self._span_scores({0: (emissions, labels, found)}) if found else {}
        return _make_entities(text, toks, found, scores.get(0, ()))

    def _span_scores(self, posts: dict[int, tuple[Tensor, list[str], list[tuple[str, int, int]]]]) -> dict[int, list[float]]:
        """Per post, the score of each of its entity spans ``(type, start, end)``: ``posts[k]`` is the
        post's (n_words, K) emissions, its labels and its spans. The CRF scores every span of
        every post from one forward-backward pass per chunk of posts."""
        if not posts:
            return {}
        index = {lab: i for i, lab in enumerate(self.config.labels)}
        keys = list(posts)
        queries = {}
        for k in keys:
            _, labels, found = posts[k]
            queries[k] = [
                (s, e, [index[labels[j]] for j in range(s, e)], [index[f"I-{typ}"]] if f"I-{typ}" in index else [])
                for typ, s, e in found
            ]
        out: dict[int, list[float]] = {}
        if self.model.crf is None:  # softmax decoder: the product of the span's token probabilities
            for k in keys:
                probs = torch.softmax(posts[k][0].float(), -1)
                out[k] = [float(probs[torch.arange(s, e), torch.tensor(ids)].prod()) for s, e, ids, _ in queries[k]]
            return out
        for c in range(0, len(keys), DECODE_CHUNK):
            chunk = keys[c : c + DECODE_CHUNK]
            E, mask = pad_posts([posts[k][0] for k in chunk], self.config.num_labels)
            scores = self.model.crf.span_marginals(
                E.to(self.device), mask.to(self.device), [queries[k] for k in chunk],
                constrained=self.model.decode_constraints,
            )
            out.update(zip(chunk, scores))
        return out


def _make_entities(text: str, toks: list[Token], found: list[tuple[str, int, int]], scores: Iterable[float]) -> list[Entity]:
    """Entities of ``text`` from word spans ``(type, start, end)`` and their scores."""
    return [
        Entity(text[toks[s].start : toks[e - 1].end], typ, toks[s].start, toks[e - 1].end, float(score), s, e)
        for (typ, s, e), score in zip(found, scores)
    ]


def load(path: str | Path, **kw) -> Predictor:
    """Load a checkpoint directory (config.json + model.safetensors + tokenizer/) offline."""
    return Predictor.load(path, **kw)


__all__ = ["Entity", "ImageInput", "Prediction", "Predictor", "load", "resolve_device"]
