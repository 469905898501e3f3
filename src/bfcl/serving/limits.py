"""What one request may ask of the server, and the checks that hold a request to it.

Every check raises FastAPI's ``HTTPException`` with a short ``detail`` naming the field
(``image``, ``items[3].text``) and the limit; nothing here touches the model. The checks
run in a worker thread (decoding a 10 MB base64 image is not for the event loop).
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass
from typing import NoReturn

from fastapi.exceptions import HTTPException
from PIL import Image, UnidentifiedImageError

from bfcl.data.images import DEFAULT_MAX_PIXELS

__all__ = ["MAX_DETAIL_CHARS", "Item", "ServeLimits", "clip", "prepare", "reject"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of the server; anything beyond is refused before the model runs.

    Status codes: byte and pixel sizes answer 413 (the content is too large to take in);
    text length and batch size answer 422 (a field's value breaks a documented constraint,
    like any other invalid field).
    """

    max_body_bytes: int = 32 * MiB
    """Request body, checked against Content-Length and again while a body streams in
    (chunked uploads have no Content-Length). Fits one image at the byte limit in base64."""
    max_image_bytes: int = 10 * MiB
    """One image's encoded file size (after base64 decoding). Tweet photos are a few MB."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """width x height of one image, read from its header before decoding. The image loader
    refuses more than ``bfcl.data.images.DEFAULT_MAX_PIXELS`` (64M) itself, so that is the
    ceiling here too."""
    max_text_chars: int = 5_000
    """Characters (code points) of one post's text. Tweets are at most 280; longer posts
    still work (the encoder splits them into windows), but cost grows with the number of
    words (the CRF's per-word steps dominate) and the model lock makes everyone else wait."""
    max_batch_items: int = 32
    """Items in one ``/predict/batch`` request (the Predictor's default model batch)."""
    image_formats: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
    """PIL formats accepted from clients. A whitelist keeps untrusted uploads away from
    rarely used decoders (EPS, for one, runs Ghostscript)."""
    read_timeout_s: float = 30.0
    """Seconds the server waits for each next piece of a request body. A client that declares
    a Content-Length and then stalls gets 408 and its connection closed, instead of holding
    a connection (and its buffers) open forever."""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_image_bytes", "max_pixels", "max_text_chars", "max_batch_items"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ServeLimits.{name} must be a positive int, got {value!r}")
        timeout = self.read_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"ServeLimits.read_timeout_s must be a positive number of seconds, got {timeout!r}")
        if self.max_pixels > DEFAULT_MAX_PIXELS:
            raise ValueError(
                f"ServeLimits.max_pixels={self.max_pixels} is above the image loader's own limit "
                f"({DEFAULT_MAX_PIXELS}); larger images would still be refused"
            )
        Image.init()
        unknown = [f for f in self.image_formats if f not in Image.ID]
        if not self.image_formats or unknown:
            raise ValueError(f"ServeLimits.image_formats: unknown PIL format(s) {unknown or '(none given)'}")


MAX_DETAIL_CHARS = 300
"""Longest error ``detail``: messages quote names and values from the request, which may be huge."""


def clip(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters with a note of how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def reject(status: int, detail: str) -> NoReturn:
    """Answer ``status`` with ``detail`` (clipped: it may quote the client's input)."""
    raise HTTPException(status_code=status, detail=clip(detail, MAX_DETAIL_CHARS))


@dataclass
class Item:
    """One post after its checks: text, image bytes (or None) and how errors name it."""

    text: str
    image: bytes | None
    where: str
    """How error messages name this item: "" for /predict, "items[3]." in a batch."""


def check_text(text: str, where: str, limits: ServeLimits) -> None:
    """Length in code points, and valid Unicode (JSON may carry lone surrogates)."""
    if len(text) > limits.max_text_chars:
        reject(422, f"{where}text is {len(text)} characters; the limit is {limits.max_text_chars}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        reject(422, f"{where}text contains a lone surrogate (not valid Unicode)")


def decode_base64(value: str, where: str, limits: ServeLimits) -> bytes:
    """Bytes of a base64 image or ``data:`` URL; 413 before decoding when it is too large."""
    what = f"{where}image"
    if value.startswith("data:"):
        header, sep, value = value.partition(",")
        if not sep or not header.endswith(";base64"):
            reject(422, f"{what}: a data URL must look like data:<type>;base64,<data>")
    compact = "".join(value.split())  # line-wrapped base64 (e.g. from `base64`) is fine
    if not compact:
        reject(422, f"{what}: empty string (omit the field or send null for no image)")
    # Refuse oversize images before materialising them (4 base64 chars carry 3 bytes).
    if (len(compact) // 4) * 3 > limits.max_image_bytes + 3:
        reject(413, f"{what}: about {(len(compact) // 4) * 3} bytes; the limit is {limits.max_image_bytes}")
    if len(compact) % 4:
        compact += "=" * (-len(compact) % 4)
    altchars = b"-_" if ("-" in compact or "_" in compact) else None
    try:
        return base64.b64decode(compact, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as e:
        reject(422, f"{what}: invalid base64 ({e})")


def check_image(data: bytes, what: str, limits: ServeLimits) -> None:
    """Size, format and pixel count from the header alone (no pixel decoding)."""
    if len(data) > limits.max_image_bytes:
        reject(413, f"{what}: {len(data)} bytes; the limit is {limits.max_image_bytes}")
    if not data:
        reject(422, f"{what}: empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=list(limits.image_formats)) as img:
                width, height = img.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            reject(413, f"{what}: too many pixels (refused as a decompression bomb); the limit is {limits.max_pixels}")
        except UnidentifiedImageError:
            reject(422, f"{what}: not a readable image (accepted formats: {', '.join(limits.image_formats)})")
        except (OSError, SyntaxError, ValueError) as e:
            reject(422, f"{what}: unreadable image header ({e})")
    if width * height > limits.max_pixels:
        reject(413, f"{what}: {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}")


def prepare(raw: list[tuple[str, str | bytes | None, str]], limits: ServeLimits) -> list[Item]:
    """Texts checked, images decoded from base64 and checked; runs in a worker thread."""
    items = []
    for text, image, where in raw:
        check_text(text, where, limits)
        data = decode_base64(image, where, limits) if isinstance(image, str) else image
        if data is not None:
            check_image(data, f"{where}image", limits)
        items.append(Item(text, data, where))
    return items
