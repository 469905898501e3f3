"""HTTP API for a trained bfcl model (FastAPI).

    from bfcl.serving.app import create_app
    app = create_app("runs/demo/best")          # or an already loaded bfcl.Predictor

Endpoints: ``POST /predict`` (JSON with a base64 image, or a multipart form with an image
file), ``POST /predict/batch`` (JSON), ``POST /explain`` (heat maps, see ``bfcl.serving.page``),
``GET /health``, ``GET /info``; the web page at ``/``; OpenAPI at ``/docs``.

Errors always answer ``{"detail": "<reason>"}`` and never carry a traceback: 413 when the
body, an image's bytes or its pixel count is too large, 415 for an unsupported content
type, 422 when the request is well-formed HTTP but its content is unusable (malformed JSON,
missing or non-string text, text over the character limit, too many batch items, bad
base64, bytes that are not a supported image), 500 ``"internal error"`` for anything
unexpected (the traceback goes to the ``bfcl.serving`` logger).

Concurrency: the model is loaded once, when the app is created. Torch modules and the
feature cache are not safe to drive from several threads at once, so every model call
holds one lock per predictor (shared by all apps serving it). The call itself runs in a
worker thread (``run_in_threadpool``), so while one request computes, the event loop keeps
accepting connections, parsing and rejecting requests and answering ``/health``. Decoding
and checking a request's images also happens in that worker thread but outside the lock.
One model call at a time is also what a CPU box wants: torch already uses every core.

Offsets (``start``/``end``) count Unicode code points of the submitted text, as Python
strings do (a JavaScript client indexing UTF-16 must convert for characters beyond the BMP).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import threading
import warnings
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bfcl.data.images import DEFAULT_MAX_PIXELS, ImageLoadError
from bfcl.inference.predictor import Predictor

__all__ = ["ServeLimits", "create_app"]

log = logging.getLogger("bfcl.serving")

MiB = 1024 * 1024


# --------------------------------------------------------------------------- limits


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


# --------------------------------------------------------------------------- schemas


class PredictRequest(BaseModel):
    """One post: its text and, optionally, its picture."""

    model_config = ConfigDict(extra="forbid")

    text: StrictStr = Field(description="The post, as written; entity offsets index into this string.")
    image: StrictStr | None = Field(
        default=None,
        description="The post's image file (JPEG, PNG, GIF, WebP, BMP or TIFF), base64-encoded; "
        "a `data:image/...;base64,` URL is also accepted. Omit or null for a text-only post.",
    )


class BatchRequest(BaseModel):
    """Several posts, answered in order."""

    model_config = ConfigDict(extra="forbid")

    items: list[PredictRequest]


class EntityOut(BaseModel):
    text: str = Field(description="The entity as it appears in the input (`text[start:end]`).")
    type: str = Field(description="An entity type of the model's label set (`GET /info`), e.g. PER in Twitter-2015/2017.")
    start: int = Field(description="Offset of the first character, in code points.")
    end: int = Field(description="Offset just past the last character, in code points.")
    score: float = Field(description="Model probability of exactly this span and type.")


class PredictionOut(BaseModel):
    text: str
    entities: list[EntityOut]
    tokens: list[str] = Field(description="Words the text was split into (Twitter tokenisation).")
    labels: list[str] = Field(description="One BIO label per token.")
    has_image: bool = Field(description="Whether an image was used for this prediction.")


class BatchResponse(BaseModel):
    predictions: list[PredictionOut]


class HealthOut(BaseModel):
    status: str = "ok"


class LimitsOut(BaseModel):
    max_body_bytes: int
    max_image_bytes: int
    max_pixels: int
    max_text_chars: int
    max_batch_items: int
    image_formats: list[str]
    read_timeout_s: float


class InfoOut(BaseModel):
    version: str = Field(description="bfcl version of this server.")
    checkpoint_version: str | None = Field(description="bfcl version that saved the checkpoint.")
    labels: list[str]
    text_encoder: str
    image_encoder: str
    uses_image: bool = Field(description="False for text-only models: images are checked, then ignored.")
    train_posts_with_image: int | None = Field(
        default=None, description="Training posts that had a picture (from the checkpoint); 0: it never learned to read one."
    )
    config: dict[str, Any] = Field(description="Every model setting (BFCLConfig).")
    limits: LimitsOut


class ErrorOut(BaseModel):
    detail: str


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    why = {
        413: "Body, image bytes or image pixels over the limit",
        415: "Unsupported content type",
        422: "Malformed or invalid request; `detail` names the problem",
        500: "Internal error (details are logged, never returned)",
    }
    return {c: {"model": ErrorOut, "description": why[c]} for c in codes}


_PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["text"],
                "properties": {
                    "text": {"type": "string", "description": "The post."},
                    "image": {"type": "string", "format": "binary", "description": "Optional image file."},
                },
            }
        },
    },
}
_BATCH_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}}},
}


# --------------------------------------------------------------------------- request parsing


@dataclass
class _Item:
    text: str
    image: bytes | None
    where: str
    """How error messages name this item: "" for /predict, "items[3]." in a batch."""


MAX_DETAIL_CHARS = 300
"""Longest error ``detail``: messages quote names and values from the request, which may be huge."""


def _clip(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters with a note of how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _reject(status: int, detail: str) -> NoReturn:
    raise HTTPException(status_code=status, detail=_clip(detail, MAX_DETAIL_CHARS))


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ""
        for p in err["loc"]:  # a key is the client's text: an unknown 200 kB field name must not come back
            loc += f"[{p}]" if isinstance(p, int) else (f".{_clip(str(p))}" if loc else _clip(str(p)))
        parts.append(f"{loc or 'body'}: {err['msg']}")
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _parse_json(body: bytes) -> Any:
    if not body:
        _reject(422, "empty body: expected a JSON object")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        _reject(422, "malformed JSON: body is not UTF-8 text")
    except json.JSONDecodeError as e:
        _reject(422, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}")
    except RecursionError:
        _reject(422, "malformed JSON: nested too deeply")


def _validate_model(model: type[BaseModel], obj: Any) -> Any:
    if not isinstance(obj, dict):
        _reject(422, f"body must be a JSON object, not {type(obj).__name__}")
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        _reject(422, _format_validation(e))


def _parse_batch(body: bytes, limits: ServeLimits) -> BatchRequest:
    obj = _parse_json(body)
    if isinstance(obj, dict) and isinstance(obj.get("items"), list) and len(obj["items"]) > limits.max_batch_items:
        _reject(422, f"items: {len(obj['items'])} posts; the limit is {limits.max_batch_items} per request")
    return _validate_model(BatchRequest, obj)


def _check_text(text: str, where: str, limits: ServeLimits) -> None:
    if len(text) > limits.max_text_chars:
        _reject(422, f"{where}text is {len(text)} characters; the limit is {limits.max_text_chars}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        _reject(422, f"{where}text contains a lone surrogate (not valid Unicode)")


def _decode_base64(value: str, where: str, limits: ServeLimits) -> bytes:
    what = f"{where}image"
    if value.startswith("data:"):
        header, sep, value = value.partition(",")
        if not sep or not header.endswith(";base64"):
            _reject(422, f"{what}: a data URL must look like data:<type>;base64,<data>")
    compact = "".join(value.split())  # line-wrapped base64 (e.g. from `base64`) is fine
    if not compact:
        _reject(422, f"{what}: empty string (omit the field or send null for no image)")
    # Refuse oversize images before materialising them (4 base64 chars carry 3 bytes).
    if (len(compact) // 4) * 3 > limits.max_image_bytes + 3:
        _reject(413, f"{what}: about {(len(compact) // 4) * 3} bytes; the limit is {limits.max_image_bytes}")
    if len(compact) % 4:
        compact += "=" * (-len(compact) % 4)
    altchars = b"-_" if ("-" in compact or "_" in compact) else None
    try:
        return base64.b64decode(compact, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as e:
        _reject(422, f"{what}: invalid base64 ({e})")


def _check_image(data: bytes, what: str, limits: ServeLimits) -> None:
    """Size, format and pixel count from the header alone (no pixel decoding)."""
    if len(data) > limits.max_image_bytes:
        _reject(413, f"{what}: {len(data)} bytes; the limit is {limits.max_image_bytes}")
    if not data:
        _reject(422, f"{what}: empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=list(limits.image_formats)) as img:
                width, height = img.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            _reject(413, f"{what}: too many pixels (refused as a decompression bomb); the limit is {limits.max_pixels}")
        except UnidentifiedImageError:
            _reject(422, f"{what}: not a readable image (accepted formats: {', '.join(limits.image_formats)})")
        except (OSError, SyntaxError, ValueError) as e:
            _reject(422, f"{what}: unreadable image header ({e})")
    if width * height > limits.max_pixels:
        _reject(413, f"{what}: {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}")


def _prepare(raw: list[tuple[str, str | bytes | None, str]], limits: ServeLimits) -> list[_Item]:
    """Texts checked, images decoded from base64 and checked; runs in a worker thread."""
    items = []
    for text, image, where in raw:
        _check_text(text, where, limits)
        data = _decode_base64(image, where, limits) if isinstance(image, str) else image
        if data is not None:
            _check_image(data, f"{where}image", limits)
        items.append(_Item(text, data, where))
    return items


# --------------------------------------------------------------------------- model access

_LOCKS: "weakref.WeakKeyDictionary[Predictor, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(predictor: Predictor) -> threading.Lock:
    """The one lock serialising calls into ``predictor``, shared by every app that serves it."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(predictor)
        if lock is None:
            lock = _LOCKS[predictor] = threading.Lock()
        return lock


def _run_model(predictor: Predictor, lock: threading.Lock, items: list[_Item]) -> list[dict[str, Any]]:
    """Predictions for checked items; an image that fails to decode answers 422 naming it.

    Images are encoded with ``image_on_error="error"``, whatever the predictor's own policy, so
    a client never silently gets a text-only answer for a broken picture.
    """
    with lock:
        try:
            preds = predictor.predict_batch([(it.text, it.image) for it in items], image_on_error="error")
        except ImageLoadError as e:
            for it in items:  # error path only: find which item it was
                if it.image is None:
                    continue
                try:
                    predictor.image_features([it.image], on_error="error")
                except ImageLoadError as item_error:
                    _reject(422, f"{it.where}image could not be decoded: {item_error}")
            _reject(422, f"image could not be decoded: {e}")
    return [p.to_dict() for p in preds]


# --------------------------------------------------------------------------- ASGI middleware


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body over the limit of {limit} bytes")


class _ReadTimeout(HTTPException):
    def __init__(self, seconds: float) -> None:
        # Connection: close, or uvicorn would keep the half-sent connection until its keep-alive timeout.
        super().__init__(
            status_code=408,
            detail=f"request body not received: no data for {seconds:g} s",
            headers={"Connection": "close"},
        )


class _BodyLimitMiddleware:
    """413 for bodies over the limit: from Content-Length up front, else while reading;
    408 when the body stops arriving for ``read_timeout`` seconds (uvicorn has no body timeout).

    A client that sends far more than the limit may see its connection reset before it
    reads the 413 (the server stops reading); that is the price of not reading it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float = ServeLimits.read_timeout_s) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await JSONResponse({"detail": "invalid Content-Length header"}, status_code=400)(scope, receive, send)
                return
            if size > self.max_bytes:
                await JSONResponse({"detail": _BodyTooLarge(self.max_bytes).detail}, status_code=413)(scope, receive, send)
                return
        received = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body only a disconnect can come: no deadline for that
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=self.read_timeout)
            except asyncio.TimeoutError:
                raise _ReadTimeout(self.read_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        await self.app(scope, limited_receive, send)


class _CatchAllMiddleware:
    """500 ``{"detail": "internal error"}`` for any unexpected exception; traceback to the log only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:  # the client left mid-request: nobody to answer, nothing broken
            log.info("client disconnected during %s %s", scope.get("method"), scope.get("path"))
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:  # too late for a clean 500: let the server drop the connection
                raise
            await JSONResponse({"detail": "internal error"}, status_code=500)(scope, receive, send)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Last resort for errors outside the catch-all middleware (e.g. in another middleware).
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's default echoes the input back (possibly megabytes of base64); name the fields only.
    parts = [f"{'.'.join(_clip(str(p)) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()[:5]]
    return JSONResponse({"detail": _clip("; ".join(parts) or "invalid request", MAX_DETAIL_CHARS)}, status_code=422)


# --------------------------------------------------------------------------- the app


def create_app(
    predictor_or_model_dir: Predictor | str | Path,
    *,
    limits: ServeLimits | None = None,
    feature_cache: str | Path | None = None,
    device: str | None = None,
) -> FastAPI:
    """A FastAPI app serving one model, loaded now (not per request).

    ``predictor_or_model_dir``: a loaded :class:`~bfcl.inference.predictor.Predictor`, or a
    checkpoint directory loaded with ``bfcl.load``; ``feature_cache`` (where image features
    are kept across restarts; default a temporary directory) and ``device`` apply only to
    the latter.
    """
    from bfcl import __version__
    from bfcl.serving.page import add_page, train_posts_with_image

    limits = limits or ServeLimits()
    if isinstance(predictor_or_model_dir, Predictor):
        if feature_cache is not None or device is not None:
            raise TypeError("feature_cache and device apply when loading a model directory, not to a Predictor")
        predictor = predictor_or_model_dir
    else:
        predictor = Predictor.load(Path(predictor_or_model_dir), feature_cache=feature_cache, device=device, image_on_error="error")
    lock = model_lock(predictor)
    config = predictor.config
    checkpoint = getattr(predictor.model, "checkpoint_info", None) or {}
    info = InfoOut(
        version=__version__,
        checkpoint_version=checkpoint.get("bfcl_version"),
        labels=list(config.labels),
        text_encoder=config.text_encoder,
        image_encoder=config.image_encoder,
        uses_image=predictor.cache is not None,
        train_posts_with_image=train_posts_with_image(predictor),
        config=json.loads(json.dumps(config.to_dict(), default=str)),
        limits=LimitsOut(**{**asdict(limits), "image_formats": list(limits.image_formats)}),
    )

    app = FastAPI(
        title="bfcl",
        version=__version__,
        description="Multimodal named entity recognition: the named entities in a post, helped by its image, "
        "of the types the model was trained on (`GET /info` lists its labels).",
    )
    app.state.predictor = predictor
    app.state.limits = limits
    app.state.model_lock = lock
    app.add_middleware(_CatchAllMiddleware)
    app.add_middleware(  # outermost: runs first
        _BodyLimitMiddleware, max_bytes=limits.max_body_bytes, read_timeout=limits.read_timeout_s
    )
    app.add_exception_handler(Exception, _internal_error)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]

    async def predict_items(raw: list[tuple[str, str | bytes | None, str]]) -> list[dict[str, Any]]:
        items = await run_in_threadpool(_prepare, raw, limits)
        return await run_in_threadpool(_run_model, predictor, lock, items)

    @app.post(
        "/predict",
        response_model=PredictionOut,
        summary="Entities in one post",
        description="JSON `{\"text\", \"image\"?: base64}` or a multipart form with a `text` field "
        "and an optional `image` file.",
        openapi_extra={"requestBody": _PREDICT_BODY},
        responses=_error_responses(413, 415, 422, 500),
    )
    async def predict(request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json" or ctype.endswith("+json"):
            raw_body = await request.body()
            # Parsing up to max_body_bytes of JSON takes a while: off the event loop.
            body = await run_in_threadpool(lambda: _validate_model(PredictRequest, _parse_json(raw_body)))
            raw = [(body.text, body.image, "")]
        elif ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            raw = [await _read_form(request, limits)]
        else:
            _reject(415, f"unsupported content type {ctype or '(none)'}: send application/json or multipart/form-data")
        return (await predict_items(raw))[0]

    @app.post(
        "/predict/batch",
        response_model=BatchResponse,
        summary="Entities in several posts",
        description=f"At most `max_batch_items` posts (default {ServeLimits.max_batch_items}); "
        "answers come in the order of `items`.",
        openapi_extra={"requestBody": _BATCH_BODY},
        responses=_error_responses(413, 415, 422, 500),
    )
    async def predict_batch(request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not (ctype == "application/json" or ctype.endswith("+json")):
            _reject(415, f"unsupported content type {ctype or '(none)'}: send application/json")
        raw_body = await request.body()
        body = await run_in_threadpool(_parse_batch, raw_body, limits)
        raw = [(it.text, it.image, f"items[{k}].") for k, it in enumerate(body.items)]
        return {"predictions": await predict_items(raw) if raw else []}

    @app.get("/health", response_model=HealthOut, summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info", response_model=InfoOut, summary="Model and server settings")
    async def get_info() -> InfoOut:
        return info

    def openapi() -> dict[str, Any]:
        # The request models are parsed by hand (JSON or multipart on one route), so FastAPI
        # does not see them; register them so the hand-written request bodies resolve.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (PredictRequest, BatchRequest):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in model_schema.pop("$defs", {}).items():
                    components.setdefault(name, sub)
                components[model.__name__] = model_schema
            batch_items = components["BatchRequest"]["properties"]["items"]
            batch_items["maxItems"] = limits.max_batch_items
            components["PredictRequest"]["properties"]["text"]["maxLength"] = limits.max_text_chars
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    add_page(app, predictor, limits, lock)  # GET / (the web page) and POST /explain
    return app


def _multipart_boundary(content_type: str) -> bytes | None:
    """The ``boundary`` parameter of a multipart Content-Type (quotes removed), or None."""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary" and value.strip():
            return value.strip().strip('"').encode("latin-1", "replace")
    return None


async def _read_form(request: Request, limits: ServeLimits) -> tuple[str, str | bytes | None, str]:
    """(text, image, "") from a form: ``text`` a plain field, ``image`` a file (or base64 text)."""
    body = await request.body()  # cached: request.form() parses these bytes
    if request.headers.get("content-type", "").lower().startswith("multipart/"):
        boundary = _multipart_boundary(request.headers["content-type"])
        # The parser keeps the parts it completed and silently drops a cut-off last part (an
        # image, say): an upload without its closing delimiter is incomplete, so refuse it.
        if boundary and b"--" + boundary + b"--" not in body:
            _reject(422, "malformed multipart body: no closing boundary (the upload is incomplete)")
    try:
        form = await request.form(max_files=2, max_fields=10, max_part_size=limits.max_body_bytes)
    except StarletteHTTPException as e:  # Starlette's, not FastAPI's subclass
        if isinstance(e, _BodyTooLarge) or e.status_code != 400:
            raise
        _reject(422, f"malformed form body: {e.detail}")
    try:
        unexpected = sorted(set(form.keys()) - {"text", "image"})
        if unexpected:
            _reject(422, f"unexpected form field(s): {', '.join(unexpected)} (expected text and image)")
        texts, images = form.getlist("text"), form.getlist("image")
        if not texts:
            _reject(422, "text: missing form field")
        if len(texts) > 1 or len(images) > 1:
            _reject(422, "send text and image at most once each")
        text = texts[0]
        if not isinstance(text, str):
            _reject(422, "text: must be a plain form field, not a file")
        image: str | bytes | None = None
        if images:
            upload = images[0]
            if isinstance(upload, UploadFile):
                if upload.size is not None and upload.size > limits.max_image_bytes:
                    _reject(413, f"image: {upload.size} bytes; the limit is {limits.max_image_bytes}")
                data = await upload.read()
                # A browser form with no file chosen sends an empty part with an empty file name.
                image = None if (not data and not upload.filename) else data
            elif upload:
                image = upload
        return text, image, ""
    finally:
        await form.close()
