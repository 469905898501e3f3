"""``bfcl evaluate --model DIR --data FILE``: score a checkpoint on a data file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bfcl.training.trainer import read_split


def evaluate_model(
    model_dir: str | Path,
    data: str | Path,
    images: str | Path | None = None,
    output: str | Path | None = None,
    *,
    map_other_to_misc: bool = True,
    batch_size: int = 64,
    strict: bool = False,
    feature_cache: str | None = ".cache/bfcl-features",
) -> dict[str, Any]:
    from bfcl.data.umt import write_samples
    from bfcl.inference.predictor import Predictor
    from bfcl.metrics import entity_scores

    predictor = Predictor.load(model_dir, feature_cache=feature_cache)
    samples = read_split(data, map_other_to_misc)
    unlabelled = [s for s in samples if s.labels is None]
    if unlabelled:
        raise ValueError(f"{data}: sample {unlabelled[0].id!r} (line {unlabelled[0].line}) has no labels to score against")
    preds = predictor.label_samples(samples, images_dir=images, batch_size=batch_size)
    scores = entity_scores([s.labels for s in samples], preds, mode="strict" if strict else "conlleval")
    if output is not None:
        write_samples(output, samples, labels=preds)
    return scores


def evaluate_model_cli(model, data, images, output, **kw) -> dict[str, Any]:
    return evaluate_model(model, data, images, output, **kw)
