"""Reading request bodies: the checks FastAPI leaves out, before FastAPI validates the body.

FastAPI parses a route's body itself (a pydantic model from JSON, a form model from a
multipart form), but on its own it answers 400 "There was an error parsing the body" for
a body it cannot read, 422 with no reason for JSON it cannot decode, parses 32 MB of JSON
on the event loop, and keeps the last of a repeated form field. :class:`BodyRoute` reads
the body first, so that:

- a content type the route does not take answers 415;
- unreadable JSON answers 422 saying why (not UTF-8, where the syntax breaks, nested too
  deeply, not an object), parsed in a worker thread;
- a multipart upload cut before its closing boundary answers 422 (the parser would drop
  the cut-off part, an image say, without a word), as do a malformed form and repeated fields.

FastAPI then validates the parsed body against the route's model, and
:func:`validation_error` words its complaints without echoing the input back.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.params import Form
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from bfcl.serving.limits import MAX_DETAIL_CHARS, ServeLimits, clip, reject

__all__ = ["FORM_ALIASES", "BodyRoute", "content_type", "is_form", "parse_json_object", "validation_error"]

FORM_ALIASES = {"/predict": "/predict/upload", "/explain": "/explain/upload"}
"""JSON routes that also take a form body, for compatibility, by handing it to their upload route."""

MAX_FORM_FIELDS = 10
MAX_FORM_FILES = 2


def content_type(request: Request) -> str:
    """The media type of the request body, lower-cased, without parameters ("" when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_form(ctype: str) -> bool:
    return ctype in ("multipart/form-data", "application/x-www-form-urlencoded")


def _is_json(ctype: str) -> bool:
    return ctype == "application/json" or ctype.endswith("+json")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The JSON object in ``body``; 422 naming what is wrong with it otherwise."""
    if not body:
        reject(422, "empty body: expected a JSON object")
    try:
        obj = json.loads(body)
    except UnicodeDecodeError:
        reject(422, "malformed JSON: body is not UTF-8 text")
    except json.JSONDecodeError as e:
        reject(422, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}")
    except RecursionError:
        reject(422, "malformed JSON: nested too deeply")
    if not isinstance(obj, dict):
        reject(422, f"body must be a JSON object, not {type(obj).__name__}")
    return obj


def _multipart_boundary(header: str) -> bytes | None:
    """The ``boundary`` parameter of a multipart Content-Type (quotes removed), or None."""
    for param in header.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary" and value.strip():
            return value.strip().strip('"').encode("latin-1", "replace")
    return None


async def read_form(request: Request, limits: ServeLimits) -> FormData:
    """Parse the form once, with our limits; FastAPI then reads the cached result."""
    body = await request.body()
    header = request.headers.get("content-type", "")
    if header.lower().startswith("multipart/"):
        boundary = _multipart_boundary(header)
        if boundary and b"--" + boundary + b"--" not in body:
            reject(422, "malformed multipart body: no closing boundary (the upload is incomplete)")
    try:
        form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS, max_part_size=limits.max_body_bytes)
    except StarletteHTTPException as e:  # Starlette's parse errors are 400s; a body-limit 413 passes through
        if e.status_code != 400:
            raise
        reject(422, f"malformed form body: {e.detail}")
    repeated = sorted(name for name, n in Counter(k for k, _ in form.multi_items()).items() if n > 1)
    if repeated:
        await form.close()
        reject(422, f"send each form field at most once (repeated: {', '.join(repeated)})")
    return form


class BodyRoute(APIRoute):
    """A route that reads and checks its body (JSON or form, by its body model) before FastAPI validates it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        takes_form = isinstance(self.body_field.field_info, Form)

        async def checked(request: Request) -> Response:
            ctype = content_type(request)
            limits: ServeLimits = request.app.state.limits
            if takes_form:
                if not is_form(ctype):
                    reject(415, f"unsupported content type {ctype or '(none)'}: send multipart/form-data")
                await read_form(request, limits)  # FastAPI closes it after the response
            else:
                if not _is_json(ctype):
                    also = " or multipart/form-data" if self.path in FORM_ALIASES else ""
                    reject(415, f"unsupported content type {ctype or '(none)'}: send application/json{also}")
                body = await request.body()
                # Starlette's cache for request.json(), which FastAPI reads next.
                request._json = await run_in_threadpool(parse_json_object, body)
            return await handler(request)

        return checked


def _describe(err: dict[str, Any]) -> str:
    path = list(err.get("loc", ()))
    if path[:1] == ["body"]:
        path = path[1:]
    loc = ""
    for p in path:
        # a key is the client's text: an unknown 200 kB field name must not come back whole
        loc += f"[{p}]" if isinstance(p, int) else (f".{clip(str(p))}" if loc else clip(str(p)))
    if isinstance(err.get("input"), UploadFile) and err.get("type") == "string_type":
        msg = "must be a plain form field, not a file"
    elif err.get("type") == "missing":
        msg = "required field missing"
    else:
        msg = err.get("msg", "invalid")
    return f"{loc or 'body'}: {msg}"


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the fields (FastAPI's default echoes the input back: megabytes of base64, maybe)."""
    errors = list(exc.errors())
    parts = [_describe(e) for e in errors[:5]]
    more = len(errors) - len(parts)
    detail = "; ".join(parts) + (f" (and {more} more)" if more > 0 else "") or "invalid request"
    return JSONResponse({"detail": clip(detail, MAX_DETAIL_CHARS)}, status_code=422)
