"""Checkpoint folders that are either complete or absent, and that say so.

A checkpoint (``best/``, ``last/``, any ``save_pretrained`` folder) is written
into a temporary sibling folder, a ``manifest.json`` listing every file's
relative path, size and sha256 is written last, and only then is the folder
renamed into place (an existing one is renamed aside first, then deleted). A
kill at any moment therefore leaves the old checkpoint, the new one, or (for
the instant between the two renames) both beside the final name, where
:func:`recover_interrupted_save` finds them.

Loading calls :func:`verify_checkpoint`: a truncated, modified, swapped or
missing file, or a file the manifest does not list, is refused with a
:class:`~bfcl.errors.CheckpointError` naming it. Pickle files are never loaded
by bfcl; one found in the folder is ignored with a warning. A folder without a
manifest (saved before manifests existed) still loads, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bfcl.errors import CheckpointError

log = logging.getLogger("bfcl.checkpoint")

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "bfcl-manifest/1"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
"""Files bfcl never unpickles: present in a checkpoint folder, they are ignored."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[str]:
    """Every regular file under ``root`` as a sorted relative POSIX path (manifest excluded)."""
    out = []
    for p in root.rglob("*"):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel != MANIFEST_NAME:
                out.append(rel)
    return sorted(out)


def write_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """List every file of ``root`` with size and sha256 in ``root/manifest.json``; written last."""
    root = Path(root)
    files = [{"path": rel, "size": (root / rel).stat().st_size, "sha256": _sha256(root / rel)} for rel in _files(root)]
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    with (root / MANIFEST_NAME).open("w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return manifest


def read_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed manifest, None when the folder has none; CheckpointError when it is unreadable."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, list):
        raise CheckpointError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    for entry in files:
        ok = isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("size"), int)
        ok = ok and isinstance(entry.get("sha256"), str)
        rel = entry.get("path", "") if isinstance(entry, dict) else ""
        if not ok or rel.startswith("/") or ".." in rel.split("/"):
            raise CheckpointError(f"{path}: malformed entry {entry!r}")
    return manifest


def verify_checkpoint(root: str | os.PathLike, *, quiet: bool = False) -> bool:
    """Check every file of a checkpoint folder against its manifest.

    Returns True when verified, False for a folder without a manifest (old
    checkpoints; logged unless ``quiet``). Raises CheckpointError naming the
    first missing, truncated, modified or unlisted file. Unlisted pickle files
    are ignored (bfcl never loads them), with a warning.
    """
    root = Path(root)
    manifest = read_manifest(root)
    if manifest is None:
        if not quiet:
            log.warning("%s has no %s (saved by an older bfcl): its files cannot be verified", root, MANIFEST_NAME)
        return False
    listed = {e["path"]: e for e in manifest["files"]}
    for rel, entry in listed.items():
        f = root / rel
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (listed in {root / MANIFEST_NAME})")
        size = f.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(
                f"{f}: {size} bytes, but {MANIFEST_NAME} says {entry['size']} (truncated or replaced)"
            )
        if _sha256(f) != entry["sha256"]:
            raise CheckpointError(f"{f}: contents do not match the sha256 in {MANIFEST_NAME} (modified or swapped)")
    for rel in _files(root):
        if rel in listed:
            continue
        if rel.lower().endswith(PICKLE_SUFFIXES):
            log.warning("%s: a pickle file, not part of the checkpoint; ignored and never loaded", root / rel)
            continue
        raise CheckpointError(f"{root / rel}: not listed in {MANIFEST_NAME} (a foreign file); remove it")
    return True


# ---------------------------------------------------------------- atomic writes


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.tmp-"


def _aside_prefix(final: Path) -> str:
    return f".{final.name}.old-"


def previous_path(final: str | os.PathLike) -> Path:
    """Where :func:`atomic_directory` with ``keep_previous`` leaves the replaced folder."""
    final = Path(final)
    return final.parent / f".{final.name}.prev"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with p.open("rb") as f:
                os.fsync(f.fileno())
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        _fsync_dir(d)


def _check_replaceable(final: Path) -> None:
    """Only an empty folder or an earlier checkpoint may be replaced: saving into a
    folder that holds other things must not delete them."""
    if not final.exists():
        return
    if not final.is_dir() or final.is_symlink():
        raise CheckpointError(f"{final}: exists and is not a folder; refusing to replace it with a checkpoint")
    if any(final.iterdir()) and not ((final / MANIFEST_NAME).is_file() or (final / "config.json").is_file()):
        raise CheckpointError(f"{final}: a folder that is not a checkpoint; refusing to replace it (save elsewhere)")


@contextmanager
def atomic_directory(final: str | os.PathLike, *, keep_previous: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success write its manifest
    and rename it to ``final``; on any error delete it and leave ``final`` untouched.

    An existing ``final`` is renamed aside before the new folder is renamed in, then
    deleted, or kept at :func:`previous_path` with ``keep_previous`` (the trainer keeps
    the previous ``best/`` until ``last/`` records the epoch that replaced it).
    """
    final = Path(final)
    _check_replaceable(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is an ordinary folder
    try:
        yield tmp
        write_manifest(tmp)
        _fsync_tree(tmp)
        if final.exists():
            if keep_previous:
                aside = previous_path(final)
                if aside.exists():
                    shutil.rmtree(aside)
            else:
                aside = Path(tempfile.mkdtemp(prefix=_aside_prefix(final), dir=final.parent))
                aside.rmdir()
            os.replace(final, aside)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            if not keep_previous:
                shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, final)
            _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_interrupted_save(final: str | os.PathLike) -> Path | None:
    """Finish or undo a save that was killed, so ``final`` is a complete checkpoint or absent.

    When ``final`` is missing (killed between the two renames), the newest
    temporary folder whose manifest verifies is renamed in, else the folder that
    was renamed aside. Leftover temporary and aside folders are then deleted.
    Returns ``final`` when it now exists, else None. Only the process that owns
    the output folder may call this (the main rank).
    """
    final = Path(final)
    parent = final.parent
    if not parent.is_dir():
        return None
    temps = sorted(parent.glob(_temp_prefix(final) + "*"), key=lambda p: p.stat().st_mtime, reverse=True)
    asides = sorted(parent.glob(_aside_prefix(final) + "*"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not final.exists():
        for cand in temps + asides:
            try:
                if read_manifest(cand) is not None and verify_checkpoint(cand, quiet=True):
                    os.replace(cand, final)
                    log.warning("%s: an interrupted save was completed from %s", final, cand.name)
                    break
            except CheckpointError as e:
                log.warning("%s: not used to recover %s (%s)", cand, final, e)
    for leftover in temps + asides:
        if leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)
    return final if final.exists() else None


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete a checkpoint folder (or the file at its place) if present."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()
