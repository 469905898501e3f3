"""Dataset statistics, counted the two ways the literature counts entities.

``entities`` uses conlleval/seqeval-default chunking (what evaluation scores
against); ``entities_strict`` counts spans opened by ``B-`` (what papers'
dataset tables usually report). They differ only on stray ``I-`` tags.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from bfcl.data.labels import OTHER_TO_MISC, map_types, spans
from bfcl.data.types import Sample
from bfcl.data.umt import find_splits, image_path, read_samples
from bfcl.errors import DataFormatError



def split_stats(
    samples: Iterable[Sample],
    *,
    map_other_to_misc: bool = True,
    images_dir: str | os.PathLike | None = None,
) -> dict:
    """Stats of one split: sample count, entity counts per type, optional image coverage."""
    mapping = OTHER_TO_MISC if map_other_to_misc else None
    n = 0
    lenient: Counter[str] = Counter()
    strict: Counter[str] = Counter()
    found = missing = 0
    for sample in samples:
        n += 1
        if sample.labels is not None:
            labels = map_types(sample.labels, mapping)
            lenient.update(t for t, _, _ in spans(labels, "conlleval"))
            strict.update(t for t, _, _ in spans(labels, "strict"))
        if images_dir is not None:
            if image_path(images_dir, sample.image_id) is not None:
                found += 1
            else:
                missing += 1
    types = sorted(set(lenient) | set(strict))
    out: dict = {
        "samples": n,
        "entities": {t: lenient[t] for t in types},
        "entities_strict": {t: strict[t] for t in types},
    }
    if images_dir is not None:
        out["images_found"] = found
        out["images_missing"] = missing
    return out


def dataset_stats(
    directory: str | os.PathLike,
    *,
    map_other_to_misc: bool = True,
    images_dir: str | os.PathLike | None = None,
    strict: bool = False,
) -> dict[str, dict]:
    """``{split: split_stats}`` for each split file in ``directory`` (or for one file).

    Splits are keyed by file stem (train, valid or dev, test), in that order.
    ``strict`` refuses lines the reader would otherwise skip with a warning; a file
    without samples raises ``DataFormatError``.
    """
    directory = Path(directory)
    if images_dir is not None and not Path(images_dir).is_dir():
        raise FileNotFoundError(f"images directory not found: {images_dir}")
    files = {directory.stem: directory} if directory.is_file() else find_splits(directory)
    out = {}
    for name, path in files.items():
        samples = read_samples(path, strict=strict)
        if not samples:  # "0 samples" with exit 0 would hide a failed download or a wrong path
            raise DataFormatError(path, 1, f"the {name} file is empty: no samples")
        out[name] = split_stats(samples, map_other_to_misc=map_other_to_misc, images_dir=images_dir)
    return out
