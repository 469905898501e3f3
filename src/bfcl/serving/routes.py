"""The API routes: ``POST /predict`` (JSON), ``POST /predict/upload`` (a form), ``POST /predict/batch``,
``GET /health``, ``GET /info``; and the one lock every model call holds.

Torch modules and the feature cache are not safe to drive from several threads at once, so
every model call holds one lock per predictor (shared by all apps serving it), in a worker
thread, so the event loop keeps answering meanwhile.
"""

from __future__ import annotations

import threading
import weakref
from typing import Annotated, Any

from fastapi import FastAPI, Form
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from bfcl.data.images import ImageLoadError
from bfcl.inference.predictor import Predictor
from bfcl.serving.limits import Item, ServeLimits, prepare, reject
from bfcl.serving.schemas import (
    BatchRequest,
    BatchResponse,
    HealthOut,
    InfoOut,
    PredictionOut,
    PredictRequest,
    UploadForm,
    post_route,
)

__all__ = ["add_api_routes", "form_post", "model_lock", "run_model"]

_LOCKS: "weakref.WeakKeyDictionary[Predictor, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()

UploadBody = Annotated[UploadForm, Form(media_type="multipart/form-data")]
"""The upload routes' body: FastAPI parses the form into :class:`UploadForm`."""


def model_lock(predictor: Predictor) -> threading.Lock:
    """The one lock serialising calls into ``predictor``, shared by every app that serves it."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(predictor)
        if lock is None:
            lock = _LOCKS[predictor] = threading.Lock()
        return lock


def run_model(predictor: Predictor, lock: threading.Lock, items: list[Item]) -> list[dict[str, Any]]:
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
                    reject(422, f"{it.where}image could not be decoded: {item_error}")
            reject(422, f"image could not be decoded: {e}")
    return [p.to_dict() for p in preds]


async def form_post(form: UploadForm) -> tuple[str, str | bytes | None, str]:
    """(text, image, "") from an upload form; a file's bytes, or a base64 string as in JSON."""
    image = form.image
    if isinstance(image, UploadFile):
        image = await image.read()
    return form.text, image, ""


def add_api_routes(app: FastAPI, predictor: Predictor, limits: ServeLimits, lock: threading.Lock, info: InfoOut) -> None:
    """Register the API routes on ``app`` (whose route class is :class:`~bfcl.serving.bodies.BodyRoute`)."""

    async def predict_items(raw: list[tuple[str, str | bytes | None, str]]) -> list[dict[str, Any]]:
        items = await run_in_threadpool(prepare, raw, limits)
        return await run_in_threadpool(run_model, predictor, lock, items)

    @app.post(
        "/predict",
        **post_route(
            PredictionOut,
            "Entities in one post",
            "JSON `{\"text\", \"image\"?: base64}`. A multipart form is also taken here, as before "
            "`/predict/upload` existed, and answered by that route.",
            form_also=True,
        ),
    )
    async def predict(body: PredictRequest) -> dict[str, Any]:
        return (await predict_items([(body.text, body.image, "")]))[0]

    upload_doc = "A multipart form with a `text` field and an optional `image` file (what a browser form sends)."

    @app.post("/predict/upload", **post_route(PredictionOut, "Entities in one post, sent as a form", upload_doc))
    async def predict_upload(form: UploadBody) -> dict[str, Any]:
        return (await predict_items([await form_post(form)]))[0]

    batch_doc = f"At most `max_batch_items` posts (default {ServeLimits.max_batch_items}); answers come in the order of `items`."

    @app.post("/predict/batch", **post_route(BatchResponse, "Entities in several posts", batch_doc))
    async def predict_batch(body: BatchRequest) -> dict[str, Any]:
        if len(body.items) > limits.max_batch_items:
            reject(422, f"items: {len(body.items)} posts; the limit is {limits.max_batch_items} per request")
        raw = [(it.text, it.image, f"items[{k}].") for k, it in enumerate(body.items)]
        return {"predictions": await predict_items(raw) if raw else []}

    @app.get("/health", response_model=HealthOut, summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info", response_model=InfoOut, summary="Model and server settings")
    async def get_info() -> InfoOut:
        return info
