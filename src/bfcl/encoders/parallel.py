"""Fill the on-disk feature cache for a folder of images in parallel processes.

Why processes: the frozen CNN is the slow part of preparing a data set, a single process
with one torch thread does not use the machine, and several torch threads in one process
collapse when other jobs share the cores (see ``bfcl.threads``). So each worker
is a spawned process with its own encoder and exactly one torch thread.

Resumable for free: the cache is keyed by image content and written atomically, so a run
that was killed left only complete entries, and the next run answers those from the cache
(``cached`` in the report) and encodes only the rest. A bad image is skipped, and the
report names it with the reason.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from bfcl.encoders.image import ImageEncoder

__all__ = ["IMAGE_SUFFIXES", "FillReport", "fill_cache", "list_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")  # what load_image reads
#: Images per task: a few CPU batches (FeatureCache encodes 4 at a time on CPU), small
#: enough that progress moves and the last tasks spread over the workers.
CHUNK_IMAGES = 16

EncoderFactory = Callable[[], ImageEncoder]


@dataclass
class FillReport:
    """What a run did: ``encoded`` went through the CNN, ``cached`` were already there,
    ``failed`` lists (path, reason) of images that could not be used."""

    total: int = 0
    encoded: int = 0
    cached: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    directory: str = ""

    def summary(self) -> str:
        return (
            f"{self.total} image(s): encoded {self.encoded}, already cached {self.cached}, "
            f"failed {len(self.failed)}; {self.seconds:.1f} s wall, workers' start included -> {self.directory}"
        )


def list_images(folder: str | os.PathLike[str]) -> tuple[list[Path], list[Path]]:
    """Image files under ``folder`` (recursive, sorted, by suffix) and the other files, which are not read."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    images, others = [], []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        (images if p.suffix.lower() in IMAGE_SUFFIXES else others).append(p)
    return images, others


# ----------------------------------------------------------------------------- worker side

_WORKER: dict[str, object] = {}


def _init_worker(factory: EncoderFactory, root: str, tag: str | None) -> None:
    """Runs once in each worker: one torch thread, its own encoder and cache (or the error to report)."""
    import torch

    from bfcl.encoders.cache import FeatureCache

    torch.set_num_threads(1)
    logging.getLogger("bfcl").setLevel(logging.ERROR)  # bad images come back in the report, named once
    try:
        encoder = factory()
        if encoder is None:
            raise ValueError("this encoder reads no images (a text-only model has no features to cache)")
        _WORKER["cache"] = FeatureCache(root, encoder.to("cpu"), tag=tag, memory_items=0)
    except Exception as e:  # reported by the first task, so the main process can say what went wrong
        _WORKER["error"] = f"{type(e).__name__}: {e}"


def _encode_chunk(paths: Sequence[str]) -> tuple[int, int, list[tuple[str, str]], str]:
    """Encode one chunk: (encoded, cached, failed (path, reason), cache directory)."""
    from bfcl.data.images import load_image
    from bfcl.encoders.cache import FeatureCache
    from bfcl.errors import ConfigError

    if "error" in _WORKER:
        raise ConfigError(f"the image encoder could not be built: {_WORKER['error']}")
    cache = _WORKER["cache"]
    assert isinstance(cache, FeatureCache)
    cache.reset_stats()
    results = cache.encode_images(list(paths), on_error="none")
    failed = []
    for path, feats in zip(paths, results):
        if feats is None:  # rare: load again, only to name the reason
            try:
                load_image(path, size=cache.encoder.image_size, on_error="error")
                reason = "unusable"
            except Exception as e:
                reason = str(e)
            failed.append((path, reason))
    return cache.misses, cache.hits, failed, str(cache.directory)


# ----------------------------------------------------------------------------- main side


def fill_cache(
    images: Sequence[str | os.PathLike[str]],
    cache_root: str | os.PathLike[str],
    encoder_factory: EncoderFactory,
    *,
    workers: int = 1,
    tag: str | None = None,
    progress: bool = False,
    chunk_images: int | None = None,
) -> FillReport:
    """Features of every image into ``cache_root`` (the layout of ``FeatureCache``), by ``workers``
    spawned processes, each building its encoder with ``encoder_factory`` (picklable, e.g.
    ``functools.partial(build_image_encoder, name)``) and using one torch thread."""
    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    paths = [str(p) for p in images]
    report = FillReport(total=len(paths))
    if not paths:
        return report
    size = chunk_images or max(1, min(CHUNK_IMAGES, math.ceil(len(paths) / workers)))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    t0 = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold torch threads
    with (
        ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(encoder_factory, str(cache_root), tag)) as pool,
        tqdm(total=len(paths), unit="image", disable=not progress, dynamic_ncols=True) as bar,
    ):
        pending = {pool.submit(_encode_chunk, c) for c in chunks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                error = fut.exception()
                if error is not None:
                    for other in pending:
                        other.cancel()
                    raise error
                encoded, cached, failed, directory = fut.result()
                report.encoded += encoded
                report.cached += cached
                report.failed.extend(failed)
                report.directory = directory
                bar.update(encoded + cached + len(failed))
    report.failed.sort()
    report.seconds = time.perf_counter() - t0
    return report
