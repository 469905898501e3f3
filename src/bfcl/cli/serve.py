"""``bfcl serve``: the HTTP API (bfcl.serving.app) under uvicorn.

FastAPI, uvicorn and torch are imported inside the command, so ``bfcl --help`` stays fast
and the other commands work without the ``serve`` extra installed. Option defaults are
None and fall back to :class:`bfcl.serving.app.ServeLimits`; the help texts quote those
defaults (a test keeps them in step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bfcl.threads import THREADS_HELP, apply_threads, follow_load

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _limit(flag: str, help_text: str) -> typer.models.OptionInfo:
    """A ServeLimits option: a positive int, None (the ServeLimits default) when not given."""
    return typer.Option(flag, min=1, help=help_text)


def serve_command(
    model: Annotated[
        Path,
        typer.Option(
            "--model", "-m", exists=True, file_okay=False, dir_okay=True, help="Trained model directory (config.json, model.safetensors)."
        ),
    ],
    host: Annotated[str, typer.Option("--host", help="Interface to listen on. Loopback by default: the API has no authentication.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0 picks a free one).")] = 8000,
    max_text_chars: Annotated[Optional[int], _limit("--max-text-chars", "Longest text in characters; longer answers 422. [default: 5000]")] = None,
    max_image_bytes: Annotated[Optional[int], _limit("--max-image-bytes", "Largest image file in bytes; larger answers 413. [default: 10485760]")] = None,
    max_body_bytes: Annotated[Optional[int], _limit("--max-body-bytes", "Largest request body in bytes; larger answers 413. [default: 33554432]")] = None,
    max_pixels: Annotated[Optional[int], _limit("--max-pixels", "Most pixels (width x height) in one image; more answers 413. [default: 64000000]")] = None,
    max_batch_items: Annotated[Optional[int], _limit("--max-batch-items", "Most posts in one /predict/batch request; more answers 422. [default: 32]")] = None,
    read_timeout: Annotated[
        Optional[float],
        typer.Option(
            "--read-timeout",
            min=0.001,
            help="Seconds to wait for the next part of a request body; a stalled upload answers 408. [default: 30]",
        ),
    ] = None,
    feature_cache: Annotated[
        Optional[Path],
        typer.Option("--feature-cache", file_okay=False, help="Keep image features here across restarts (default: a temporary directory)."),
    ] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="torch device (default: cuda if available, else cpu).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help=THREADS_HELP)] = None,
) -> None:
    """Serve a trained model over HTTP: a web page at / (a post and its picture in, entities and
    attention heat maps out), POST /predict (JSON), POST /predict/upload (a form), POST /predict/batch,
    POST /explain (the heat maps as JSON), GET /health, GET /info (the model's labels and limits), API docs at /docs."""
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
    n_threads = apply_threads(threads)
    typer.echo(f"loading {model} ({n_threads} torch thread{'s' if n_threads > 1 else ''}) ...", err=True)
    application = create_app(model, limits=limits, feature_cache=feature_cache, device=device)
    model_module = getattr(getattr(getattr(application, "state", None), "predictor", None), "model", None)
    if threads is None and model_module is not None:  # auto: keep the threads at the free cores while serving
        follow_load(model_module)
    uvicorn.run(application, host=host, port=port, log_level=log_level)


def register(app: typer.Typer) -> None:
    """Attach ``serve`` to the main ``bfcl`` app."""
    app.command("serve")(serve_command)
