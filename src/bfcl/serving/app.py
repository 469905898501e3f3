"""HTTP API for a trained bfcl model (FastAPI).

    from bfcl.serving.app import create_app
    app = create_app("runs/demo/best")          # or an already loaded bfcl.Predictor

Endpoints: ``POST /predict`` (JSON with a base64 image), ``POST /predict/upload`` (a multipart
form with an image file), ``POST /predict/batch`` (JSON), ``POST /explain`` and
``/explain/upload`` (heat maps, see ``bfcl.serving.page``), ``GET /health``, ``GET /info``;
the web page at ``/``; OpenAPI at ``/docs``. For compatibility, a form posted to ``/predict``
or ``/explain`` is answered by its upload route (``FormAliasMiddleware``).

The rooms: ``limits`` (what a request may ask, and the checks), ``schemas`` (bodies),
``bodies`` (reading a body before FastAPI validates it), ``middleware``, ``routes`` (the API
and the model lock), ``page`` (the web page and ``/explain``); this module wires them.

Errors always answer ``{"detail": "<reason>"}`` and never carry a traceback: 413 when the
body, an image's bytes or its pixel count is too large, 415 for an unsupported content
type, 422 when the request is well-formed HTTP but its content is unusable (malformed JSON,
missing or non-string text, text over the character limit, too many batch items, bad
base64, bytes that are not a supported image), 500 ``"internal error"`` for anything
unexpected (the traceback goes to the ``bfcl.serving`` logger).

Concurrency: the model is loaded once, when the app is created. Torch modules and the
feature cache are not safe to drive from several threads at once, so every model call
holds one lock per predictor (shared by all apps serving it: ``routes.model_lock``). The call itself runs in a
worker thread (``run_in_threadpool``), so while one request computes, the event loop keeps
accepting connections, parsing and rejecting requests and answering ``/health``. Decoding
and checking a request's images also happens in that worker thread but outside the lock.
One model call at a time is also what a CPU box wants: torch already uses every core.

Offsets (``start``/``end``) count Unicode code points of the submitted text, as Python
strings do (a JavaScript client indexing UTF-16 must convert for characters beyond the BMP).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from bfcl._version import __version__
from bfcl.inference.predictor import Predictor
from bfcl.serving.bodies import BodyRoute, validation_error
from bfcl.serving.limits import ServeLimits
from bfcl.serving.middleware import BodyLimitMiddleware, CatchAllMiddleware, FormAliasMiddleware, internal_error
from bfcl.serving.page import add_page, train_posts_with_image
from bfcl.serving.routes import add_api_routes, model_lock
from bfcl.serving.schemas import InfoOut, LimitsOut

__all__ = ["ServeLimits", "create_app", "model_lock"]


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
    app.router.route_class = BodyRoute  # every route below reads its body through BodyRoute
    app.add_middleware(FormAliasMiddleware)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(  # outermost: runs first
        BodyLimitMiddleware, max_bytes=limits.max_body_bytes, read_timeout=limits.read_timeout_s
    )
    app.add_exception_handler(Exception, internal_error)
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    add_api_routes(app, predictor, limits, lock, info)
    add_page(app, predictor, limits, lock)  # GET / (the web page), POST /explain and /explain/upload
    _document_limits(app, limits)
    return app


def _document_limits(app: FastAPI, limits: ServeLimits) -> None:
    """OpenAPI quotes this server's limits (they are settings, so the models cannot carry them)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = generate()
        if fresh:
            components = schema["components"]["schemas"]
            components["BatchRequest"]["properties"]["items"]["maxItems"] = limits.max_batch_items
            components["PredictRequest"]["properties"]["text"]["maxLength"] = limits.max_text_chars
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

