"""Entity-level precision, recall and F1, computed by seqeval.

seqeval is the reference the MNER literature reports with; calling it (rather
than re-implementing the arithmetic) keeps our numbers comparable. The default
``conlleval`` mode is seqeval's default chunking, in which a stray ``I-X``
opens an entity, exactly as the conlleval script does.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

from bfcl.data.labels import map_types, parse_label
from bfcl.data.types import Sample
from bfcl.data.umt import show

Mode = Literal["conlleval", "strict"]


def _check(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sequences but predictions have {len(pred)}")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sequence {i}: gold has {len(g)} labels but prediction has {len(p)}")
        for which, seq in (("gold", g), ("prediction", p)):
            for j, label in enumerate(seq):
                try:
                    parse_label(label)
                except ValueError as e:
                    raise ValueError(f"sequence {i}, position {j} ({which}): {e}") from None


def entity_scores(
    gold: Sequence[Sequence[str]],
    pred: Sequence[Sequence[str]],
    mode: Mode = "conlleval",
    *,
    mapping: Mapping[str, str] | None = None,
) -> dict:
    """Micro P/R/F1 over entities plus per-type P/R/F1/support (gold entity count).

    ``mode="strict"`` is seqeval's ``mode="strict", scheme=IOB2``: an entity
    must open with ``B-``, so stray ``I-`` tags are no entity at all.
    ``mapping`` renames types first (e.g. ``{"OTHER": "MISC"}``).
    A type appears in ``per_type`` when it occurs in gold or prediction.
    """
    if mode not in ("conlleval", "strict"):
        raise ValueError(f"unknown mode {mode!r}: use 'conlleval' or 'strict'")
    _check(gold, pred)
    gold_l = [map_types(s, mapping) for s in gold]
    pred_l = [map_types(s, mapping) for s in pred]
    if all(label == "O" for seq in (*gold_l, *pred_l) for label in seq):
        # seqeval warns and averages empty arrays here; the answer is simply 0.
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "per_type": {}}

    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    kwargs = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of empty per-type arrays
        report = classification_report(gold_l, pred_l, output_dict=True, zero_division=0, **kwargs)
    micro = report["micro avg"]
    per_type = {
        name: {
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
            "f1": float(row["f1-score"]),
            "support": int(row["support"]),
        }
        for name, row in sorted(report.items())
        if not name.endswith(" avg")
    }
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "per_type": per_type,
    }


def check_aligned(gold: Sequence[Sample], pred: Sequence[Sample]) -> None:
    """Raise ValueError unless ``pred`` labels the same samples and tokens as ``gold``.

    Tokens are compared one by one, not only counted: a prediction file for
    other posts of the same lengths would otherwise score as if it were right.

    A prediction file that drifted by one sample would otherwise score as
    nonsense without any error.
    """
    gsrc = gold[0].source if gold else "<gold>"
    psrc = pred[0].source if pred else "<pred>"
    if len(gold) != len(pred):
        raise ValueError(f"{psrc} has {len(pred)} samples but gold {gsrc} has {len(gold)}")
    for i, (g, p) in enumerate(zip(gold, pred), start=1):
        where = f"sample {i} ({g.id!r} at {g.source}:{g.line}; {p.id!r} at {p.source}:{p.line})"
        if g.image_id is not None and p.image_id is not None and g.image_id != p.image_id:
            raise ValueError(f"{where}: image ids differ ({g.image_id!r} vs {p.image_id!r})")
        if len(g.tokens) != len(p.tokens):
            raise ValueError(f"{where}: gold has {len(g.tokens)} tokens but prediction has {len(p.tokens)}")
        for j, (gt, pt) in enumerate(zip(g.tokens, p.tokens), start=1):
            if gt != pt:
                raise ValueError(
                    f"{where}: token {j} differs: gold {show(gt)} but prediction {show(pt)} "
                    "(the prediction file labels other text)"
                )
        if g.labels is None:
            raise ValueError(f"{where}: gold sample has no labels")
        if p.labels is None:
            raise ValueError(f"{where}: predicted sample has no labels")


def score_samples(
    gold: Sequence[Sample],
    pred: Sequence[Sample],
    mode: Mode = "conlleval",
    *,
    mapping: Mapping[str, str] | None = None,
) -> dict:
    """``entity_scores`` for two aligned sample lists (gold file vs prediction file)."""
    check_aligned(gold, pred)
    return entity_scores(
        [g.labels for g in gold],  # type: ignore[misc]
        [p.labels for p in pred],  # type: ignore[misc]
        mode,
        mapping=mapping,
    )
