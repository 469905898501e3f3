"""Atomic file writes: a file appears under its name only once complete.

The content goes to a temporary file in the target's own folder (``os.replace`` is atomic
only within one file system), is flushed and fsynced, then renamed over the target. A crash
or an exception leaves the old file, or none, and no half-written one; the temporary file
is removed on error.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_path", "atomic_write"]


@contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True, prefix: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (safetensors, say).

    On a clean exit the file is fsynced (``durable``) and moved onto ``path``. ``durable=False``
    skips the fsync, for files that are checked on read and rebuilt when damaged.
    ``prefix`` names the temporary file (default ``.<name>.``; it always ends in ``.tmp``).
    The folder must exist.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | os.PathLike, *, durable: bool = True) -> Iterator[IO[str]]:
    """A UTF-8 text file (``\\n`` line ends) that replaces ``path`` when the block ends without error."""
    with atomic_path(path, durable=False) as tmp:  # fsynced here, through the open handle
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
