"""The records every part of bfcl passes around: a labelled (or unlabelled) ``Sample``,
a ``Post`` to label, the one ``ImageInput`` type and the one ``OnError`` policy type."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args


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


ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, "PIL.Image.Image", None]  # noqa: F821
"""An image as any caller may hand it over: a path, the file's bytes, a PIL image, or None
(no image). The one image type of bfcl: the loader, the feature cache, the processor and
the Predictor all take it."""

OnError = Literal["error", "none"]
"""What a bad image does: ``"error"`` raises (naming it), ``"none"`` logs it and the post
is read as having no image (the documented fallback)."""

ON_ERROR: tuple[str, ...] = get_args(OnError)


@dataclass(frozen=True)
class Post:
    """One post to label: raw ``text`` or already split ``tokens``, and its image.

    ``Post.coerce`` is the one place that says what counts as a post, so the API,
    the CLI and the server accept the same shapes with the same messages.
    """

    text: str | None = None
    tokens: tuple[str, ...] | None = None
    image: ImageInput = None

    @property
    def words(self) -> str | list[str]:
        """What the tokenizer gets: the raw string, or the given words."""
        return self.text if self.text is not None else list(self.tokens or ())

    @classmethod
    def coerce(cls, item: Any, index: int) -> "Post":
        """A string, a token list, a ``(text or tokens, image)`` pair, a ``{"text"|"tokens", "image"}``
        dict, or a Post; anything else is refused with an error naming item ``index``."""
        if isinstance(item, Post):
            return item
        if isinstance(item, str):
            return cls(text=item)
        if isinstance(item, dict):
            if "text" in item and item["text"] is not None:
                return cls._of(item["text"], item.get("image"), index)
            if "tokens" in item:
                return cls(tokens=tuple(item["tokens"]), image=item.get("image"))
            raise ValueError(f"item {index}: needs a 'text' or 'tokens' field")
        if isinstance(item, tuple) and len(item) == 2:
            return cls._of(item[0], item[1], index)
        if isinstance(item, list) and all(isinstance(t, str) for t in item):
            return cls(tokens=tuple(item))
        raise TypeError(
            f"item {index}: expected a string, a token list, a (text, image) pair or a dict, got {type(item).__name__}"
        )

    @classmethod
    def _of(cls, words: Any, image: ImageInput, index: int) -> "Post":
        if isinstance(words, str):
            return cls(text=words, image=image)
        if isinstance(words, (list, tuple)):  # each word is checked where it is located
            return cls(tokens=tuple(words), image=image)
        raise TypeError(f"item {index}: text must be a string or a list of strings, got {type(words).__name__}")
