"""Request and response bodies of the HTTP API (pydantic models FastAPI validates and documents)."""

from __future__ import annotations

from typing import Any

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, StrictStr

__all__ = [
    "FORM_ALSO_ACCEPTED",
    "BatchRequest",
    "BatchResponse",
    "EntityOut",
    "ErrorOut",
    "HealthOut",
    "InfoOut",
    "LimitsOut",
    "PredictRequest",
    "PredictionOut",
    "UploadForm",
    "error_responses",
    "post_route",
]


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


class UploadForm(BaseModel):
    """One post as a multipart form (``POST /predict/upload``): what a browser form sends."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The post, as written; entity offsets index into this string.")
    image: UploadFile | str | None = Field(
        default=None,
        description="The post's image file (JPEG, PNG, GIF, WebP, BMP or TIFF); a base64 string is also "
        "accepted. Omit it, or send an empty file part (a browser form with no file chosen), for a text-only post.",
    )


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


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error codes a route can answer."""
    why = {
        413: "Body, image bytes or image pixels over the limit",
        415: "Unsupported content type",
        422: "Malformed or invalid request; `detail` names the problem",
        500: "Internal error (details are logged, never returned)",
    }
    return {c: {"model": ErrorOut, "description": why[c]} for c in codes}


FORM_ALSO_ACCEPTED = {
    "requestBody": {"content": {"multipart/form-data": {"schema": {"$ref": "#/components/schemas/UploadForm"}}}}
}
"""OpenAPI extra for a JSON route that also takes the upload form (handed on to its upload route)."""


def post_route(response_model: type[BaseModel], summary: str, description: str, *, form_also: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``app.post`` for a model route: its answer, its docs, its error codes."""
    extra = {"openapi_extra": FORM_ALSO_ACCEPTED} if form_also else {}
    return dict(
        response_model=response_model,
        summary=summary,
        description=description,
        responses=error_responses(413, 415, 422, 500),
        **extra,
    )
