"""``bfcl evaluate --model DIR --data FILE``: score a checkpoint on a data file.

Evaluation is an inference task: the checkpoint is loaded as a Predictor and labels the
file's posts through the same processor and window runner (``bfcl.processing``) that
training's dev selection uses. (It lived in ``bfcl.training.evaluate`` before.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bfcl.confusion import span_confusion
from bfcl.data.splits import read_split
from bfcl.data.umt import write_samples
from bfcl.errors import DataFormatError
from bfcl.inference.predictor import Predictor
from bfcl.metrics import entity_scores


def evaluate_model(
    model_dir: str | Path,
    data: str | Path,
    images: str | Path | None = None,
    output: str | Path | None = None,
    *,
    map_other_to_misc: bool = True,
    batch_size: int = 64,
    strict: bool = False,
    strict_data: bool = False,
    confusion: bool = False,
    feature_cache: str | None = ".cache/bfcl-features",
) -> dict[str, Any]:
    """Scores (``strict``: IOB2 entities); ``output`` gets the predictions in the data file's format.
    ``confusion`` adds ``scores["confusion"]``: the span confusion table (``bfcl.confusion``)."""
    samples = read_split(data, map_other=map_other_to_misc, strict=strict_data)
    unlabelled = [s for s in samples if s.labels is None]
    if unlabelled:
        raise DataFormatError(data, unlabelled[0].line, f"sample {unlabelled[0].id!r} has no labels to score against")
    predictor = Predictor.load(model_dir, feature_cache=feature_cache)
    preds = predictor.label_samples(samples, images_dir=images, batch_size=batch_size)
    mode = "strict" if strict else "conlleval"
    scores = entity_scores([s.labels for s in samples], preds, mode=mode)
    if confusion:
        table = span_confusion([s.labels for s in samples], preds, [s.tokens for s in samples], mode=mode)
        scores["confusion"] = {**table.to_dict(), "table": table.table()}
    if output is not None:
        # CoNLL in, CoNLL out: a UMT file is the one whose samples carry IMGID lines
        fmt = "umt" if any(s.image_id is not None for s in samples) else "conll"
        write_samples(output, samples, labels=preds, fmt=fmt)
    return scores


def evaluate_model_cli(model, data, images, output, **kw) -> dict[str, Any]:
    return evaluate_model(model, data, images, output, **kw)
