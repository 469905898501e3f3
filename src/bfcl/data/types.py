"""The one record every part of bfcl passes around: a labelled (or unlabelled) post."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sample:
    """One post: its words, their BIO labels, and the id of its image.

    ``image_id`` is None when the format carries no image (CoNLL) or the
    caller has none; a sample whose image file is absent keeps its id and
    gets an image mask later, never a stand-in picture.
    ``source``/``line`` say where the sample came from, for error messages.
    """

    id: str
    tokens: list[str]
    labels: list[str] | None = None
    image_id: str | None = None
    source: str = "<memory>"
    line: int = 0
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.tokens):
            raise ValueError(
                f"{self.source}:{self.line}: sample {self.id!r} has {len(self.tokens)} tokens "
                f"but {len(self.labels)} labels"
            )
