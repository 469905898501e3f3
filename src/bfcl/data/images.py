"""Deterministic image loading: any PIL-readable picture to a (3, size, size) tensor in [0, 1].

No mean/std normalisation here: each image encoder applies its own. No random
crop either: the paper resizes every image to 224x224, and evaluation must see
the same pixels every time.

Only JPEG, PNG, GIF, WebP, BMP and TIFF are opened, and the format is checked
from the file's first bytes before Pillow sees it: Pillow can also open EPS
(through Ghostscript), PDF-like and a few dozen rarer formats, none of which a
tweet photo needs, so a file named ``.jpg`` that is really EPS never reaches
a decoder. The API, the CLI, training and the server all load through here.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from bfcl.data.types import ImageInput, OnError
from bfcl.errors import ImageLoadError  # noqa: F401  (re-exported: bfcl.data.images.ImageLoadError)

logger = logging.getLogger(__name__)

DEFAULT_SIZE = 224
# Far above any tweet photo, far below what would exhaust memory when decoded.
DEFAULT_MAX_PIXELS = 64_000_000

ImageSource = ImageInput
"""The one image type (``bfcl.data.types.ImageInput``), under the name this module used."""

_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
"""Pillow format names that may be decoded (Pillow reads multi-picture JPEGs, MPO, as JPEG)."""
_ALLOWED_TEXT = "JPEG, PNG, GIF, WebP, BMP or TIFF"
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_OTHER_MAGIC = (  # named in the error so the user knows what the file really is
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"<?xml", "XML/SVG"),
    (b"<svg", "SVG"),
    (b"8BPS", "Photoshop PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xffO\xffQ", "JPEG 2000"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x1f\x8b", "gzip"),
)
_HEAD_BYTES = 16


def sniff_format(head: bytes) -> str | None:
    """The allowed format these first bytes start, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    return None


def _refuse_format(head: bytes, what: str) -> None:
    if sniff_format(head) is not None:
        return
    kind = next((name for magic, name in _OTHER_MAGIC if head.startswith(magic)), None)
    if kind is None and head[4:8] == b"ftyp":
        kind = "HEIF/AVIF or a video"
    looks = f"; it looks like {kind}" if kind else ""
    raise ImageLoadError(f"image {what}: not an image file in an allowed format ({_ALLOWED_TEXT}){looks}")


def _describe(source: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.width}x{source.height}>"
    return f"<{len(source)} bytes>"


def _scale_high_depth(img: Image.Image) -> np.ndarray:
    """Single-channel float array in [0, 1] from a 16/32-bit or float image.

    ``I;16*`` is 16-bit by definition. ``I`` and ``F`` carry no bit depth, so
    the value range picks the scale: 8-bit, 16-bit or [0, 1] data keep their
    meaning, anything else is stretched min..max.
    """
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        return arr / 65535.0
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.zeros(arr.shape)
    arr = np.nan_to_num(arr, nan=0.0, posinf=finite.max(), neginf=finite.min())
    lo, hi = float(arr.min()), float(arr.max())
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        return arr
    if lo >= 0.0 and hi <= 255.0:
        return arr / 255.0
    if lo >= 0.0 and hi <= 65535.0:
        return arr / 65535.0
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros(arr.shape)


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB version of an image; transparency is composited on white.

    Transparent pixels are often black underneath; compositing on white shows
    what a viewer shows instead of turning logos into black squares.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info) or (
        mode in ("L", "RGB") and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _HIGH_DEPTH_MODES:
        gray = (np.clip(_scale_high_depth(img), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return img.convert("RGB")


def _to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    if img.mode in _HIGH_DEPTH_MODES:
        # Resize at full precision before quantising anything.
        gray = Image.fromarray(_scale_high_depth(img).astype(np.float32))  # mode F
        gray = gray.resize((size, size), Image.Resampling.BICUBIC)
        chan = torch.from_numpy(np.array(gray, dtype=np.float32)).clamp_(0.0, 1.0)
        return chan.unsqueeze(0).expand(3, size, size).contiguous()
    rgb = to_rgb(img).resize((size, size), Image.Resampling.BICUBIC)
    arr = np.array(rgb, dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def _open(source: ImageSource, what: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError(f"image {what}: no data (0 bytes)")
        data = bytes(source)
        _refuse_format(data[:_HEAD_BYTES], what)
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    path = Path(source)
    if not path.exists():
        raise ImageLoadError(f"image {what}: file not found")
    if not path.is_file():
        raise ImageLoadError(f"image {what}: not a regular file")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"image {what}: empty file (0 bytes)")
    with path.open("rb") as f:
        _refuse_format(f.read(_HEAD_BYTES), what)
    return Image.open(path, formats=ALLOWED_FORMATS)


def _load(source: ImageSource, what: str, size: int, max_pixels: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = _open(source, what)
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageLoadError(f"image {what}: refused as a decompression bomb ({e})") from e
        except UnidentifiedImageError:
            raise ImageLoadError(f"image {what}: not an image file PIL can read") from None
        except OSError as e:
            raise ImageLoadError(f"image {what}: cannot be read ({e})") from e
        try:
            pixels = img.width * img.height
            if pixels > max_pixels:
                raise ImageLoadError(
                    f"image {what}: {img.width}x{img.height} = {pixels} pixels exceeds the "
                    f"limit of {max_pixels} (possible decompression bomb)"
                )
            try:
                img.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise ImageLoadError(f"image {what}: refused as a decompression bomb ({e})") from e
            except (OSError, SyntaxError, ValueError) as e:
                raise ImageLoadError(f"image {what}: truncated or corrupt image data ({e})") from e
            try:
                oriented = ImageOps.exif_transpose(img)
            except Exception as e:  # broken EXIF must not cost us the picture
                logger.warning("image %s: ignoring unreadable EXIF orientation (%s)", what, e)
                oriented = img
            try:
                return _to_tensor(oriented if oriented is not None else img, size)
            except (OSError, ValueError) as e:
                raise ImageLoadError(f"image {what}: cannot convert mode {img.mode} to RGB ({e})") from e
        finally:
            if not isinstance(source, Image.Image):
                img.close()


def load_image(
    source: ImageSource | None,
    *,
    size: int = DEFAULT_SIZE,
    on_error: OnError = "error",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> torch.Tensor | None:
    """Float tensor (3, size, size) in [0, 1], or None for "no image".

    ``source`` is a path, encoded bytes or a PIL image; None means the sample
    has no image and gives None without a warning. With ``on_error="none"`` an
    unusable image is logged (naming it) and also gives None, so one bad file
    does not stop a whole run. ``name`` labels bytes/PIL input in messages.
    """
    if on_error not in ("error", "none"):
        raise ValueError(f"on_error must be 'error' or 'none', not {on_error!r}")
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive int, not {size!r}")
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, not {max_pixels!r}")
    if source is None:
        return None
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        raise TypeError(f"image source must be a path, bytes or PIL image, not {type(source).__name__}")
    what = _describe(source, name)
    try:
        return _load(source, what, size, max_pixels)
    except ImageLoadError as e:
        if on_error == "error":
            raise
        logger.warning("%s; using no image", e)
        return None


def load_image_batch(
    sources: Sequence[ImageSource | None],
    *,
    size: int = DEFAULT_SIZE,
    on_error: OnError = "none",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked images (B, 3, size, size) and a bool mask (B,) of which are real.

    Missing images are zero-filled and masked out; the model must read the
    mask, never the zeros.
    """
    pixels = torch.zeros(len(sources), 3, size, size)
    mask = torch.zeros(len(sources), dtype=torch.bool)
    for i, source in enumerate(sources):
        tensor = load_image(source, size=size, on_error=on_error, max_pixels=max_pixels)
        if tensor is not None:
            pixels[i] = tensor
            mask[i] = True
    return pixels, mask
