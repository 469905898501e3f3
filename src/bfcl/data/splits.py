"""Which data files a run reads, checked before anything is built.

``resolve_split_files`` turns ``data_dir`` / ``train_file`` / ``dev_file`` /
``test_file`` into paths, with errors that say what is missing and which names
are accepted; ``check_split_files`` also refuses empty files (and, when strict,
files with lines the reader would skip); ``read_split`` reads one file the way
training and evaluation do and logs what it changed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bfcl.data.labels import map_other_to_misc
from bfcl.data.types import Sample
from bfcl.data.umt import ACCEPTED_SPLIT_NAMES, find_split, read_samples
from bfcl.errors import ConfigError, DataFormatError

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
PathLike = str | os.PathLike


def resolve_split_files(
    data_dir: PathLike | None = None,
    train_file: PathLike | None = None,
    dev_file: PathLike | None = None,
    test_file: PathLike | None = None,
) -> dict[str, Path | None]:
    """``{"train": path, "dev": path or None, "test": path or None}``.

    Explicit files override those found in ``data_dir``. A ``data_dir`` or
    explicit file that does not exist, or no training file at all, raises
    ``ConfigError`` naming the setting.
    """
    if data_dir is not None and not Path(data_dir).is_dir():
        what = "is not a directory" if Path(data_dir).exists() else "does not exist"
        raise ConfigError(f"train.data_dir {data_dir} {what}")
    files: dict[str, Path | None] = {}
    for split, explicit in zip(SPLITS, (train_file, dev_file, test_file)):
        if explicit is not None:
            path = Path(explicit)
            if not path.is_file():
                what = "is not a file" if path.exists() else "does not exist"
                raise ConfigError(f"train.{split}_file {path} {what}")
            files[split] = path
        elif data_dir is not None:
            try:
                files[split] = find_split(data_dir, "valid" if split == "dev" else split)
            except FileNotFoundError:
                files[split] = None
            except ValueError as e:  # two candidates for one split
                raise ConfigError(f"train.data_dir: {e}") from None
        else:
            files[split] = None
    if files["train"] is None:
        if data_dir is not None:
            raise ConfigError(
                f"no training file in {data_dir} (accepted names: {ACCEPTED_SPLIT_NAMES}); or set train.train_file"
            )
        raise ConfigError("no training data: set train.data_dir or train.train_file")
    return files


def _has_content(path: Path) -> bool:
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip(b" \t\r\n\f\v\xef\xbb\xbf"):
                return True
    return False


def check_split_files(
    data_dir: PathLike | None = None,
    train_file: PathLike | None = None,
    dev_file: PathLike | None = None,
    test_file: PathLike | None = None,
    *,
    strict: bool = False,
) -> dict[str, Path | None]:
    """``resolve_split_files``, then refuse a split file that holds no samples.

    With ``strict`` every file is parsed strictly, so a line the reader would
    skip is an error here, before any model is built.
    """
    files = resolve_split_files(data_dir, train_file, dev_file, test_file)
    for split, path in files.items():
        if path is None:
            continue
        if strict:
            read_split(path, strict=True, map_other=False, split=split)
        elif not _has_content(path):
            raise DataFormatError(path, 1, f"the {split} file is empty: no samples")
    return files


def read_split(
    path: PathLike, *, map_other: bool = True, strict: bool = False, split: str = "data"
) -> list[Sample]:
    """One data file as training and evaluation read it.

    An empty file (no samples) is refused. ``map_other`` renames OTHER to MISC
    and logs how many labels that changed.
    """
    samples = read_samples(path, strict=strict)
    if not samples:
        raise DataFormatError(path, 1, f"the {split} file is empty: no samples")
    if map_other:
        changed = map_other_to_misc(samples)
        if changed:
            log.info("%s: %d OTHER label(s) read as MISC (map_other_to_misc)", path, changed)
    return samples
