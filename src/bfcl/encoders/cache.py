"""On-disk cache of frozen image-encoder grid features, keyed by image content.

The image CNN is frozen, so an image's region features never change for a given
encoder: compute them once, store them, and later epochs and runs never touch the CNN.

Layout: ``root/<encoder-dir>/<sha256[:2]>/<sha256>.safetensors`` where ``sha256`` is the
hash of the image file's bytes (so the same picture under two paths is one entry) and
``<encoder-dir>`` is the sanitised ``encoder.name`` (which includes the weights' identity)
plus an optional ``tag`` for a different image preprocessing. Files are written to a
temporary name and ``os.replace``-d into place, so concurrent writers and crashes never
leave a half-written entry under the final name.

Damaged entries: every file stores a sha256 of its tensor bytes; an entry that fails to
parse, has the wrong shape/dtype/encoder, or fails the checksum is treated as a miss,
logged, recomputed and overwritten -- a cache must never be able to break training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import Tensor

from bfcl.data.atomic import atomic_path
from bfcl.data.images import ImageLoadError, load_image
from bfcl.data.types import ImageInput, OnError
from bfcl.encoders.image import ImageEncoder

__all__ = ["FeatureCache", "ImageLoader", "ImageSource", "content_key", "sanitize_name"]

log = logging.getLogger(__name__)

ImageSource = ImageInput
"""A path or the image file's bytes (a PIL image goes through ``bfcl.processing``); the one image type."""
#: Decodes image bytes into a float tensor (3, S, S) in [0, 1], or None when it cannot.
ImageLoader = Callable[[bytes], "Tensor | None"]

# Large CPU batches are slower per image (activations fall out of cache): measured for
# EfficientNet-Lite0 on 2 cores, 14 ms/image at batch 4 vs 21 at 16 and 40-75 at 32.
CPU_BATCH_SIZE = 4
ACCELERATOR_BATCH_SIZE = 32
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_TENSOR = "features"


def content_key(data: bytes) -> str:
    """Cache key of an image: sha256 hex digest of its file bytes."""
    return hashlib.sha256(data).hexdigest()


def sanitize_name(name: str) -> str:
    """Filesystem-safe directory name for an encoder name; a short hash keeps distinct names distinct."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "encoder"
    return f"{safe[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _tensor_digest(t: Tensor) -> str:
    # hashed through the buffer protocol: no copy of the tensor's bytes
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


class FeatureCache:
    """Content-addressed cache of ``encoder`` grid features (R, D_v) per image.

    ``dtype`` is the storage type (float16 halves the disk and memory footprint; features
    are always returned as float32, rounded through ``dtype`` on cold and warm paths alike so
    results do not depend on whether the cache was warm). ``memory_items`` bounds an
    in-process LRU in front of the disk (0 disables it). ``tag`` separates caches built with
    a different image preprocessing (the encoder name covers only the weights).

    Counters for benchmarks: ``hits`` (non-None inputs answered without running the CNN),
    ``misses`` (images run through the CNN), ``failed`` (inputs that could not be read or
    decoded) and ``encoder_seconds`` (wall time inside the CNN, including the copy to CPU).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        encoder: ImageEncoder,
        *,
        dtype: torch.dtype = torch.float16,
        memory_items: int = 2048,
        tag: str | None = None,
    ) -> None:
        if not dtype.is_floating_point:
            raise ValueError(f"storage dtype must be floating point, got {dtype}")
        self.root = Path(root)
        self.encoder = encoder
        self.dtype = dtype
        self.memory_items = max(0, int(memory_items))
        self.tag = tag
        self.directory = self.root / sanitize_name(encoder.name if tag is None else f"{encoder.name}+{tag}")
        self._memory: OrderedDict[str, Tensor] = OrderedDict()
        self.reset_stats()

    # ------------------------------------------------------------------ stats

    def reset_stats(self) -> None:
        self.hits = 0
        self.misses = 0
        self.failed = 0
        self.encoder_seconds = 0.0

    # ------------------------------------------------------------------ key/value API

    def path_for(self, key: str) -> Path:
        self._check_key(key)
        return self.directory / key[:2] / f"{key}.safetensors"

    def get(self, key: str, *, as_stored: bool = False) -> Tensor | None:
        """Features (R, D_v) float32 for a content key, from memory or disk; None if absent or damaged.

        ``as_stored``: the stored tensor itself, in the storage dtype (no conversion, no copy),
        for a caller that converts it while copying it elsewhere (a batch); it is shared with
        the in-memory LRU, so it must not be modified."""
        stored = self._memory_get(key)
        if stored is None:
            stored = self._read(key)
            if stored is None:
                return None
            self._memory_put(key, stored)
        return stored if as_stored else stored.to(torch.float32, copy=True)

    def put(self, key: str, features: Tensor, *, as_stored: bool = False) -> Tensor:
        """Store features (R, D_v) for a key; returns them as float32 after the storage-dtype round trip
        (``as_stored``: the stored tensor itself, as in :meth:`get`)."""
        self._check_key(key)
        expected = (self.encoder.num_regions, self.encoder.feature_dim)
        if tuple(features.shape) != expected:
            raise ValueError(f"features for {self.encoder.name} must have shape {expected}, got {tuple(features.shape)}")
        stored = features.detach().to("cpu", self.dtype).contiguous().clone()
        self._write(key, stored)
        self._memory_put(key, stored)
        return stored if as_stored else stored.to(torch.float32, copy=True)

    def __contains__(self, key: str) -> bool:
        return key in self._memory or self.path_for(key).is_file()

    # ------------------------------------------------------------------ batch API

    def encode_images(
        self,
        sources: Sequence[ImageSource],
        *,
        loader: ImageLoader | None = None,
        batch_size: int | None = None,
        on_error: OnError = "none",
        as_stored: bool = False,
    ) -> list[Tensor | None]:
        """Region features (R, D_v) float32 per source, in order; None for no image.

        A source is a path, the image file's bytes, or None. Each is hashed, served from the
        cache when possible, and otherwise decoded by ``loader`` (given the bytes that were
        hashed, so the features always belong to the key) and encoded in batches of
        ``batch_size`` (default: 32 on an accelerator, 4 on CPU, where EfficientNet-Lite0 costs
        ~14 ms/image at batch 4 but ~21 at 16 and ~40+ at 32); identical contents are encoded once. With ``on_error="none"`` an
        unreadable file, a loader exception or a loader returning None gives None (the
        example is treated as text-only); with ``"error"`` the error propagates. The default
        loader is ``bfcl.data.images.load_image`` at ``encoder.image_size``. ``as_stored``: the
        stored tensors themselves, in the storage dtype, shared with the cache and with each
        other (see :meth:`get`): for a caller that only copies them (a batch being collated).
        """
        if on_error not in ("error", "none"):
            raise ValueError(f"on_error must be 'error' or 'none', got {on_error!r}")
        if batch_size is None:
            batch_size = CPU_BATCH_SIZE if self.encoder.device.type == "cpu" else ACCELERATOR_BATCH_SIZE
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        load = self._default_loader(on_error) if loader is None else (lambda data, _label: loader(data))

        results: list[Tensor | None] = [None] * len(sources)
        pending: OrderedDict[str, tuple[bytes, list[int], str]] = OrderedDict()
        for i, src in enumerate(sources):
            if src is None:
                continue
            data = self._read_source(src, on_error)
            if data is None:
                self.failed += 1
                continue
            key = content_key(data)
            if key in pending:  # same content earlier in this call: computed once, shared
                pending[key][1].append(i)
                continue
            cached = self.get(key, as_stored=as_stored)
            if cached is not None:
                self.hits += 1
                results[i] = cached
            else:
                label = f"<{len(data)} bytes>" if isinstance(src, (bytes, bytearray, memoryview)) else str(src)
                pending[key] = (data, [i], label)

        items = list(pending.items())
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            keys, pixels = [], []
            for key, (data, idxs, label) in chunk:
                img = self._load(load, data, label, on_error)
                if img is None:
                    self.failed += len(idxs)
                    continue
                keys.append(key)
                pixels.append(img)
            if not pixels:
                continue
            t0 = time.perf_counter()
            feats = self.encoder(torch.stack(pixels)).to("cpu")
            self.encoder_seconds += time.perf_counter() - t0
            for key, f in zip(keys, feats):
                out = self.put(key, f, as_stored=as_stored)
                self.misses += 1
                idxs = pending[key][1]
                results[idxs[0]] = out
                for j in idxs[1:]:
                    self.hits += 1
                    results[j] = out if as_stored else out.clone()
        return results

    # ------------------------------------------------------------------ internals

    def _default_loader(self, on_error: OnError) -> Callable[[bytes, str], Tensor | None]:
        size = self.encoder.image_size

        def load(data: bytes, label: str) -> Tensor | None:
            return load_image(data, size=size, on_error=on_error, name=label)

        return load

    @staticmethod
    def _read_source(src: ImageSource, on_error: OnError) -> bytes | None:
        if isinstance(src, (bytes, bytearray, memoryview)):
            return bytes(src)
        try:
            return Path(src).read_bytes()
        except OSError as exc:
            if on_error == "error":
                raise ImageLoadError(f"cannot read image {src}: {exc.strerror or exc}") from exc
            log.warning("image %s unreadable (%s); treating as no image", src, exc)
            return None

    def _load(
        self, load: Callable[[bytes, str], Tensor | None], data: bytes, label: str, on_error: OnError
    ) -> Tensor | None:
        try:
            img = load(data, label)
        except Exception as exc:
            if on_error == "error":
                raise
            log.warning("image %s failed to load (%s); treating as no image", label, exc)
            return None
        if img is None:
            if on_error == "error":
                raise ValueError(f"image {label} could not be decoded (loader returned None)")
            return None
        size = self.encoder.image_size
        if not isinstance(img, Tensor) or tuple(img.shape) != (3, size, size):
            shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"loader must return a (3, {size}, {size}) tensor in [0, 1], got {shape}")
        return img

    @staticmethod
    def _check_key(key: str) -> None:
        # Keys become file names: only accept what content_key() produces (no path tricks).
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(f"cache key must be a lowercase sha256 hex digest, got {key!r}")

    def _memory_get(self, key: str) -> Tensor | None:
        t = self._memory.get(key)
        if t is not None:
            self._memory.move_to_end(key)
        return t

    def _memory_put(self, key: str, stored: Tensor) -> None:
        if self.memory_items == 0:
            return
        self._memory[key] = stored
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def _read(self, key: str) -> Tensor | None:
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            raw = path.read_bytes()
            t = load_safetensors(raw)[_TENSOR]
            meta = _read_metadata(raw)
            expected = (self.encoder.num_regions, self.encoder.feature_dim)
            problems = []
            if tuple(t.shape) != expected:
                problems.append(f"shape {tuple(t.shape)} != {expected}")
            # float32 entries hold the encoder output exactly, so any storage dtype can use them
            if t.dtype not in (self.dtype, torch.float32):
                problems.append(f"dtype {t.dtype} != {self.dtype}")
            if meta.get("encoder") != self.encoder.name or meta.get("key") != key:
                problems.append("encoder/key metadata mismatch")
            if meta.get("sha256") != _tensor_digest(t):
                problems.append("checksum mismatch")
            if problems:
                raise ValueError("; ".join(problems))
            return t.to(self.dtype)
        except (SafetensorError, ValueError, KeyError, OSError, RuntimeError) as exc:
            log.warning("damaged feature cache entry %s (%s); recomputing", path, exc)
            return None

    def _write(self, key: str, stored: Tensor) -> None:
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"encoder": self.encoder.name, "key": key, "sha256": _tensor_digest(stored)}
        # No fsync: every entry is checksummed on read and recomputed when damaged.
        with atomic_path(path, durable=False, prefix=f".{key[:16]}.") as tmp:
            save_file({_TENSOR: stored}, tmp, metadata=meta)


def _read_metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (8-byte little-endian header length, then JSON)."""
    if len(raw) < 8:
        raise ValueError("file too short")
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    return dict(header.get("__metadata__") or {})
