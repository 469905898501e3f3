"""``bfcl features``: fill the on-disk image-feature cache for a folder, in parallel processes.

Run it once before training or predicting on a large image set: later runs then read the
frozen CNN's features from the cache instead of computing them. Each worker is its own
process with one torch thread (see ``bfcl.encoders.parallel``). Killed or interrupted, it
resumes by running again: images already in the cache are not encoded twice.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from bfcl.cli.predict import DEFAULT_FEATURE_CACHE

MAX_LISTED_FAILURES = 20


def features_command(
    images: Annotated[Path, typer.Option("--images", help="Folder of images (searched recursively for .jpg/.jpeg/.png/.gif/.bmp/.webp/.tif/.tiff; hidden files skipped).")],
    encoder: Annotated[
        str, typer.Option("--encoder", help="Image encoder, as in a model config's image_encoder (e.g. efficientnet-lite0, hf:microsoft/resnet-152).")
    ] = "efficientnet-lite0",
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Worker processes, each with its own encoder and one torch thread.")] = 1,
    cache: Annotated[
        Path, typer.Option("--cache", file_okay=False, help="Feature cache folder (bfcl predict's --feature-cache).")
    ] = DEFAULT_FEATURE_CACHE,
    progress: Annotated[
        Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar on stderr (default: on a terminal).")
    ] = None,
) -> None:
    """Compute and cache the image features of every image in a folder; resumable, bad images skipped and named."""
    from functools import partial

    from bfcl.encoders.image import build_image_encoder
    from bfcl.encoders.parallel import fill_cache, list_images
    from bfcl.errors import ConfigError

    if encoder.strip().lower() == "none":
        raise ConfigError("--encoder none reads no images: there are no features to cache")
    if not images.is_dir():
        typer.echo(f"Error: image folder not found: {images}", err=True)
        raise typer.Exit(2)
    found, others = list_images(images)
    if others:
        typer.echo(f"note: {len(others)} file(s) without an image suffix were not read, e.g. {others[0]}", err=True)
    if not found:
        typer.echo(f"Error: no image files in {images}", err=True)
        raise typer.Exit(1)
    show = progress if progress is not None else sys.stderr.isatty()
    report = fill_cache(found, cache, partial(build_image_encoder, encoder), workers=workers, progress=show)
    for path, reason in report.failed[:MAX_LISTED_FAILURES]:
        typer.echo(f"warning: skipped {path}: {reason}", err=True)
    if len(report.failed) > MAX_LISTED_FAILURES:
        typer.echo(f"warning: {len(report.failed) - MAX_LISTED_FAILURES} more image(s) skipped", err=True)
    typer.echo(report.summary(), err=True)


def register(app: typer.Typer) -> None:
    """Attach ``features`` to the main ``bfcl`` app."""
    app.command("features")(features_command)
