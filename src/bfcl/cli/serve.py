"""``bfcl serve``: the HTTP API (bfcl.serving.app) under uvicorn.

FastAPI, uvicorn and torch are imported inside the command, so ``bfcl --help`` stays fast
and the other commands work without the ``serve`` extra installed. Option defaults are
None and fall back to :class:`bfcl.serving.app.ServeLimits`; the help texts quote those
defaults (a test keeps them in step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        model: Path = typer.Option(
            ..., "--model", "-m", exists=True, file_okay=False, dir_okay=True, help="Checkpoint directory (config.json, model.safetensors)."
        ),
        host: str = typer.Option("127.0.0.1", help="Interface to listen on. Loopback by default: the API has no authentication."),
        port: int = typer.Option(8000, min=0, max=65535, help="TCP port (0 picks a free one)."),
        max_text_chars: Optional[int] = typer.Option(None, min=1, help="Longest text in characters; longer answers 422. [default: 5000]"),
        max_image_bytes: Optional[int] = typer.Option(None, min=1, help="Largest image file in bytes; larger answers 413. [default: 10485760]"),
        max_body_bytes: Optional[int] = typer.Option(None, min=1, help="Largest request body in bytes; larger answers 413. [default: 33554432]"),
        max_pixels: Optional[int] = typer.Option(None, min=1, help="Most pixels (width x height) in one image; more answers 413. [default: 64000000]"),
        max_batch_items: Optional[int] = typer.Option(None, min=1, help="Most posts in one /predict/batch request; more answers 422. [default: 32]"),
        read_timeout: Optional[float] = typer.Option(
            None, min=0.001, help="Seconds to wait for the next part of a request body; a stalled upload answers 408. [default: 30]"
        ),
        feature_cache: Optional[Path] = typer.Option(
            None, file_okay=False, help="Keep image features here across restarts (default: a temporary directory)."
        ),
        device: Optional[str] = typer.Option(None, help="torch device, e.g. cpu or cuda (default: cuda if available)."),
        log_level: str = typer.Option("info", help="uvicorn log level."),
    ) -> None:
        """Serve a trained model over HTTP: a web page at / (a post and its picture in, entities and
        attention heat maps out), POST /predict, POST /predict/batch, POST /explain (the heat maps as
        JSON), GET /health, GET /info (the model's labels and limits), API docs at /docs."""
        import logging

        import uvicorn

        from bfcl.serving.app import ServeLimits, create_app

        given = {
            "max_text_chars": max_text_chars,
            "max_image_bytes": max_image_bytes,
            "max_body_bytes": max_body_bytes,
            "max_pixels": max_pixels,
            "max_batch_items": max_batch_items,
            "read_timeout_s": read_timeout,
        }
        try:
            limits = ServeLimits(**{k: v for k, v in given.items() if v is not None})
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
        if host not in LOOPBACK:
            typer.echo(f"warning: listening on {host}; the API has no authentication, put it behind a proxy that has.", err=True)
        logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO))
        typer.echo(f"loading {model} ...", err=True)
        application = create_app(model, limits=limits, feature_cache=feature_cache, device=device)
        uvicorn.run(application, host=host, port=port, log_level=log_level)
