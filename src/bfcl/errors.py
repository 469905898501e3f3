"""The errors bfcl raises on bad input, one type per kind of input.

Each message names the file, key or sample and what is wrong with it, so the
CLI can print it as one line. All are ``ValueError`` subclasses, so callers that
caught ``ValueError`` before keep working.
"""

from __future__ import annotations

import os


class BFCLError(ValueError):
    """Base of every error about a user's input (data, image, config, checkpoint)."""


class DataFormatError(BFCLError):
    """A data file does not follow the format; the message names file and line."""

    def __init__(self, source: str | os.PathLike, line: int, message: str) -> None:
        self.source = str(source)
        self.line = line
        super().__init__(f"{self.source}:{line}: {message}")


class ImageLoadError(BFCLError):
    """An image could not be used; the message names the input and the problem."""


class ConfigError(BFCLError):
    """A setting is unknown, mistyped, out of range, or ignored by the chosen model."""


class CheckpointError(BFCLError):
    """A checkpoint folder is incomplete, tampered with, or inconsistent with its weights."""
