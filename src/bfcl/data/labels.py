"""BIO label vocabulary and span extraction.

Span extraction is written out here (rather than calling seqeval per sentence)
so data statistics, training and metrics agree on what an entity is; the tests
check it against seqeval on random sequences.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from bfcl.data.types import Sample

OUTSIDE = "O"
SpanMode = Literal["conlleval", "strict"]

# O, or B-/I- followed by a type with no whitespace (types may contain '-').
LABEL_RE = re.compile(r"O|[BI]-\S+")


def is_valid_label(label: str) -> bool:
    """True for ``O``, ``B-X`` and ``I-X`` (the only tags the Twitter data uses)."""
    return LABEL_RE.fullmatch(label) is not None


def parse_label(label: str) -> tuple[str, str | None]:
    """Split ``B-PER`` into ``("B", "PER")``; ``O`` gives ``("O", None)``."""
    if not is_valid_label(label):
        raise ValueError(f"label {label!r} is not O, B-<type> or I-<type>")
    if label == OUTSIDE:
        return OUTSIDE, None
    return label[0], label[2:]


class LabelSet:
    """An ordered label vocabulary: the id of a label is its index.

    The order is part of a trained model, so the constructor keeps whatever
    order it is given (checkpoints round-trip through ``to_dict``/``from_dict``);
    ``from_types``/``from_samples`` build the canonical order: ``O``, then
    ``B-X``, ``I-X`` for each type in sorted order.
    """

    def __init__(self, labels: Iterable[str]) -> None:
        labels = tuple(labels)
        seen: set[str] = set()
        for label in labels:
            if not isinstance(label, str) or not is_valid_label(label):
                raise ValueError(f"invalid label {label!r}: expected O, B-<type> or I-<type>")
            if label in seen:
                raise ValueError(f"duplicate label {label!r} in label set")
            seen.add(label)
        if OUTSIDE not in seen:
            raise ValueError("a label set must contain 'O'")
        for label in labels:
            if label != OUTSIDE:
                partner = ("I-" if label[0] == "B" else "B-") + label[2:]
                if partner not in seen:
                    raise ValueError(f"label set has {label!r} but not {partner!r}")
        self._labels = labels
        self._index = {label: i for i, label in enumerate(labels)}

    @classmethod
    def from_types(cls, types: Iterable[str]) -> LabelSet:
        """Canonical label set for the given entity types."""
        unique = sorted(set(types))
        labels = [OUTSIDE]
        for t in unique:
            labels += [f"B-{t}", f"I-{t}"]
        return cls(labels)

    @classmethod
    def from_samples(
        cls, samples: Iterable[Sample], *, mapping: Mapping[str, str] | None = None
    ) -> LabelSet:
        """Canonical label set covering every type seen (B- or I-) in the samples."""
        types: set[str] = set()
        for sample in samples:
            if sample.labels is None:
                continue
            labels = map_types(sample.labels, mapping) if mapping else sample.labels
            for label in labels:
                _, t = parse_label(label)
                if t is not None:
                    types.add(t)
        return cls.from_types(types)

    @classmethod
    def from_dict(cls, data: Mapping) -> LabelSet:
        """Inverse of ``to_dict``."""
        if "labels" not in data:
            raise ValueError("label set dict has no 'labels' key")
        return cls(data["labels"])

    def to_dict(self) -> dict:
        """JSON-ready form, stored next to model weights."""
        return {"labels": list(self._labels), "scheme": "BIO"}

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def types(self) -> tuple[str, ...]:
        """Entity types in label order, each once."""
        out: dict[str, None] = {}
        for label in self._labels:
            if label != OUTSIDE:
                out[label[2:]] = None
        return tuple(out)

    def id(self, label: str) -> int:
        try:
            return self._index[label]
        except KeyError:
            raise ValueError(f"unknown label {label!r}; known labels: {', '.join(self._labels)}") from None

    def label(self, id: int) -> str:
        if not 0 <= id < len(self._labels):
            raise IndexError(f"label id {id} out of range 0..{len(self._labels) - 1}")
        return self._labels[id]

    def encode(self, labels: Iterable[str]) -> list[int]:
        return [self.id(label) for label in labels]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.label(int(i)) for i in ids]

    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self._labels))

    def label2id(self) -> dict[str, int]:
        return dict(self._index)

    def __len__(self) -> int:
        return len(self._labels)

    def __iter__(self):
        return iter(self._labels)

    def __contains__(self, label: object) -> bool:
        return label in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSet) and other._labels == self._labels

    def __hash__(self) -> int:
        return hash(self._labels)

    def __repr__(self) -> str:
        return f"LabelSet({list(self._labels)!r})"


OTHER_TO_MISC = {"OTHER": "MISC"}
"""Twitter-2015 calls MISC "OTHER": this mapping makes reports line up with the paper."""


def map_types(labels: Sequence[str], mapping: Mapping[str, str] | None) -> list[str]:
    """Rename entity types, e.g. ``{"OTHER": "MISC"}`` so Twitter-2015 matches 2017."""
    if not mapping:
        return list(labels)
    out = []
    for label in labels:
        prefix, t = parse_label(label)
        out.append(label if t is None or t not in mapping else f"{prefix}-{mapping[t]}")
    return out


def check_bio2(labels: Sequence[str]) -> list[tuple[int, str]]:
    """Positions and tags of stray ``I-X`` (not continuing a ``B-X``/``I-X``).

    BIO2 requires every entity to open with ``B-``; Twitter-2015 breaks this a
    few hundred times, and the two span modes disagree exactly there.
    """
    stray = []
    prev_prefix, prev_type = OUTSIDE, None
    for i, label in enumerate(labels):
        prefix, t = parse_label(label)
        if prefix == "I" and (prev_prefix == OUTSIDE or prev_type != t):
            stray.append((i, label))
        prev_prefix, prev_type = prefix, t
    return stray


def repair_stray_i(labels: Sequence[str]) -> list[str]:
    """Turn each stray ``I-X`` into ``B-X``.

    Training-only option (gives the tagger consistent BIO2 targets). Gold data
    used for evaluation must keep its stray tags, as conlleval does, or scores
    stop being comparable with published ones.
    """
    out = list(labels)
    for i, label in check_bio2(labels):
        out[i] = "B-" + label[2:]
    return out


def repair_stray_i_counted(labels: Sequence[str]) -> tuple[list[str], int]:
    """``repair_stray_i`` and how many labels it changed."""
    stray = check_bio2(labels)
    out = list(labels)
    for i, label in stray:
        out[i] = "B-" + label[2:]
    return out, len(stray)


def count_stray_i(samples: Iterable[Sample]) -> int:
    """How many labels ``repair_stray_i`` would change in these samples (for a log line)."""
    return sum(len(check_bio2(s.labels)) for s in samples if s.labels is not None)


def map_sample_types(samples: Iterable[Sample], mapping: Mapping[str, str] | None) -> int:
    """Rename entity types in place; returns how many labels changed (0 when nothing did)."""
    changed = 0
    for s in samples:
        if s.labels is None or not mapping:
            continue
        new = map_types(s.labels, mapping)
        changed += sum(a != b for a, b in zip(s.labels, new))
        s.labels = new
    return changed


def map_other_to_misc(samples: Iterable[Sample]) -> int:
    """Twitter-2015's OTHER read as MISC, in place; returns how many labels changed."""
    return map_sample_types(samples, OTHER_TO_MISC)


def spans(labels: Sequence[str], mode: SpanMode = "conlleval") -> list[tuple[str, int, int]]:
    """Entities as ``(type, start, end_exclusive)``.

    ``conlleval`` follows seqeval's default chunking: a ``B-`` or any tag whose
    type differs from the previous one opens a span, so a stray ``I-X`` opens
    one too. ``strict`` follows seqeval's ``mode="strict", scheme=IOB2``: only
    ``B-X`` opens a span, continued by ``I-X`` of the same type; stray ``I-``
    tags belong to no span.
    """
    if mode not in ("conlleval", "strict"):
        raise ValueError(f"unknown span mode {mode!r}: use 'conlleval' or 'strict'")
    parsed = [parse_label(label) for label in labels]
    out: list[tuple[str, int, int]] = []
    start: int | None = None
    cur: str | None = None
    for i, (prefix, t) in enumerate(parsed):
        continues = prefix == "I" and start is not None and t == cur
        if continues:
            continue
        if start is not None:
            out.append((cur, start, i))  # type: ignore[arg-type]
            start, cur = None, None
        if prefix == "B" or (prefix == "I" and mode == "conlleval"):
            start, cur = i, t
    if start is not None:
        out.append((cur, start, len(parsed)))  # type: ignore[arg-type]
    return out


def validate_label_set(labels: object) -> tuple[str, ...]:
    """Check a stored label list (e.g. a checkpoint's) is a valid BIO set and return it.

    A trained model's label order is part of its weights, so a hand-edited list
    (``I-PER`` turned into a second ``B-LOC``, a ``B-X`` without ``I-X``, an
    ``X-LOC``) would silently relabel predictions; it is refused instead, with a
    ValueError naming the first offending label and its position.
    """
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise ValueError(f"labels must be a list of strings, got {type(labels).__name__}")
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not is_valid_label(label):
            raise ValueError(f"label {i} ({label!r}) is not O, B-<type> or I-<type>")
        if label in seen:
            raise ValueError(f"label {i} ({label!r}) repeats label {seen[label]}")
        seen[label] = i
    if OUTSIDE not in seen:
        raise ValueError("the label set has no 'O'")
    for label, i in seen.items():
        if label != OUTSIDE:
            partner = ("I-" if label[0] == "B" else "B-") + label[2:]
            if partner not in seen:
                raise ValueError(f"label {i} ({label!r}) has no {partner!r} partner")
    return tuple(labels)
