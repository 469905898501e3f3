"""The web page of ``bfcl serve``: ``GET /`` and its files, and ``POST /explain`` (heat maps as JSON).

The page is plain HTML, CSS and JavaScript shipped inside the package (``static/``): no CDN,
no build step, nothing fetched from anywhere but this server, so it works with the network
cut. A Content-Security-Policy of ``'self'`` makes the browser hold it to that.

``POST /explain`` takes the same JSON body as ``/predict``, and ``POST /explain/upload`` the
same form as ``/predict/upload`` (the page sends that); both pass the same limits and answer
the same error codes. It needs a
picture and a multimodal model (422 otherwise, naming which) and returns the prediction
plus, per entity, the 7 x 7 co-attention map that ``bfcl explain`` draws
(:func:`bfcl.inference.explain.explain`), so the page can draw it over the picture.
"""

from __future__ import annotations

import threading
from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from bfcl.data.images import ImageLoadError
from bfcl.inference.explain import ExplainError, explain
from bfcl.inference.predictor import Predictor
from bfcl.serving.limits import Item, ServeLimits, prepare, reject
from bfcl.serving.routes import UploadBody, form_post
from bfcl.serving.schemas import EntityOut, PredictRequest, post_route

__all__ = ["ExplainOut", "add_page", "train_posts_with_image"]

STATIC_PACKAGE = ("bfcl.serving", "static")

# Only this server: scripts, styles, fetches; pictures also from blob: (the chosen file).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


class ExplainEntityOut(EntityOut):
    token_start: int = Field(description="Index of the entity's first word in `tokens`.")
    token_end: int = Field(description="Index just past its last word.")
    heatmap: list[list[float]] | None = Field(
        description="grid[0] x grid[1] shares of attention over the image regions (row-major over the "
        "picture resized to 224 x 224), summing to 1; null when it cannot be computed (see `note`)."
    )
    note: str | None = Field(default=None, description="Why there is no map, when there is none.")


class BottleneckOut(BaseModel):
    index: int
    heatmap: list[list[float]]


class ExplainOut(BaseModel):
    text: str
    entities: list[ExplainEntityOut]
    tokens: list[str]
    labels: list[str]
    has_image: bool
    grid: list[int] = Field(description="Rows and columns of every map (7 x 7 for a 224 x 224 CNN grid).")
    bottlenecks: list[BottleneckOut] = Field(description="One map per bottleneck token, last fusion layer.")
    rollout: bool = Field(description="True when bottleneck maps were rolled out through co-attention.")
    notes: list[str] = Field(default_factory=list, description="Why some maps are missing, if any are.")


def train_posts_with_image(predictor: Predictor) -> int | None:
    """How many training posts had a picture, from the checkpoint; None where it does not say.

    0 means the model never learned to read an image: the page says so.
    """
    value = getattr(predictor, "train_posts_with_image", None)
    if value is None:
        info = getattr(predictor.model, "checkpoint_info", None) or {}
        training = info.get("training_data") if isinstance(info, dict) else None
        value = training.get("train_posts_with_image") if isinstance(training, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _explain_item(predictor: Predictor, lock: threading.Lock, item: Item) -> dict[str, Any]:
    with lock:
        try:
            ex = explain(predictor, item.text, item.image)
        except ImageLoadError as e:
            reject(422, f"image could not be decoded: {e}")
        except ExplainError as e:
            reject(422, str(e))
    pred = ex.prediction
    out = ex.to_dict()
    out.update(
        tokens=[t.text for t in pred.tokens] if pred else [],
        labels=list(pred.labels) if pred else [],
        has_image=bool(pred and pred.has_image),
    )
    out.setdefault("notes", [])
    return out


def add_page(app: FastAPI, predictor: Predictor, limits: ServeLimits, lock: threading.Lock) -> None:
    """Register ``GET /``, ``/static/*``, ``POST /explain`` and ``/explain/upload`` on an app made by ``create_app``."""
    index_html = files(STATIC_PACKAGE[0]).joinpath(STATIC_PACKAGE[1], "index.html").read_text(encoding="utf-8")

    class _Static(StaticFiles):
        async def get_response(self, path: str, scope):  # type: ignore[override]
            response = await super().get_response(path, scope)
            response.headers.update(PAGE_HEADERS)
            return response

    app.mount("/static", _Static(packages=[STATIC_PACKAGE]), name="static")

    @app.get("/", response_class=HTMLResponse, summary="The web page", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(index_html, headers=PAGE_HEADERS)

    async def explain_one(text: str, image: str | bytes | None) -> dict[str, Any]:
        if image is None:
            reject(422, "image: missing; /explain needs the post's picture (use /predict for text alone)")
        items = await run_in_threadpool(prepare, [(text, image, "")], limits)
        return await run_in_threadpool(_explain_item, predictor, lock, items[0])

    @app.post(
        "/explain",
        **post_route(
            ExplainOut,
            "Entities in one post, with where the model looked in its picture",
            "Same body as `/predict`; the image is required. Each entity carries the co-attention map over "
            "the picture's regions (the data `bfcl explain` draws). 422 also when the model is text-only, was "
            "trained without images, or there is no image. A form posted here is answered by `/explain/upload`.",
            form_also=True,
        ),
    )
    async def explain_post(body: PredictRequest) -> dict[str, Any]:
        return await explain_one(body.text, body.image)

    form_doc = "Same form as `/predict/upload`; the image is required."

    @app.post("/explain/upload", **post_route(ExplainOut, "Entities and heat maps for one post, sent as a form", form_doc))
    async def explain_upload(form: UploadBody) -> dict[str, Any]:
        text, image, _ = await form_post(form)
        return await explain_one(text, image)
