"""``bfcl demo``: the README's main command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def demo_command(
    output: Annotated[Optional[Path], typer.Option("--output", help="Keep the trained BFCL checkpoint here (OUTPUT/best).")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the scores as JSON here.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the probe and of training.")] = 0,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs for each model.")] = 4,
) -> None:
    """Train BFCL and a text-only encoder + CRF on the multimodal probe; print P/R/F1 for both."""
    import logging

    from bfcl.demo.run import format_report, run_demo, write_json

    logging.basicConfig(level=logging.WARNING)
    report = run_demo(output, seed=seed, epochs=epochs)
    typer.echo(format_report(report))
    if json_path is not None:
        write_json(report, json_path)


def register(app: typer.Typer) -> None:
    """Attach ``demo`` to the main ``bfcl`` app."""
    app.command("demo")(demo_command)
