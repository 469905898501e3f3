"""ASGI middleware of the HTTP API: body size and read timeout, the last-resort 500, and the
compatibility path that sends a form posted to ``/predict`` or ``/explain`` to its upload route."""

from __future__ import annotations

import asyncio
import logging

from fastapi import Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bfcl.serving.bodies import FORM_ALIASES, is_form
from bfcl.serving.limits import ServeLimits

__all__ = ["BodyLimitMiddleware", "BodyTooLarge", "CatchAllMiddleware", "FormAliasMiddleware", "ReadTimeout", "internal_error"]

log = logging.getLogger("bfcl.serving")


class BodyTooLarge(HTTPException):
    """413 for a body over ``max_body_bytes``, raised while it streams in."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body over the limit of {limit} bytes")


class ReadTimeout(HTTPException):
    """408 for a body that stopped arriving."""

    def __init__(self, seconds: float) -> None:
        # Connection: close, or uvicorn would keep the half-sent connection until its keep-alive timeout.
        super().__init__(
            status_code=408,
            detail=f"request body not received: no data for {seconds:g} s",
            headers={"Connection": "close"},
        )


class BodyLimitMiddleware:
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
                await JSONResponse({"detail": BodyTooLarge(self.max_bytes).detail}, status_code=413)(scope, receive, send)
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
                raise ReadTimeout(self.read_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        await self.app(scope, limited_receive, send)


class CatchAllMiddleware:
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


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Last resort for errors outside the catch-all middleware (e.g. in another middleware).
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)


class FormAliasMiddleware:
    """A form posted to ``/predict`` or ``/explain`` is answered by ``/predict/upload`` or
    ``/explain/upload``: those routes took both bodies before the upload routes existed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = FORM_ALIASES.get(scope.get("path", "")) if scope["type"] == "http" else None
        if target is not None:
            header = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
            if is_form(header.split(";")[0].strip().lower()):
                scope = {**scope, "path": target, "raw_path": target.encode()}
        await self.app(scope, receive, send)
