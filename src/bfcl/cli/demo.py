"""``bfcl demo``: the README's main command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        output: Optional[Path] = typer.Option(None, help="Keep the trained BFCL checkpoint here (OUTPUT/best)."),
        json_path: Optional[Path] = typer.Option(None, "--json", help="Write the scores as JSON here."),
        seed: int = typer.Option(0, help="Seed of the probe and of training."),
        epochs: int = typer.Option(4, help="Training epochs for each model."),
    ) -> None:
        """Train BFCL and a text-only encoder + CRF on the multimodal probe; print P/R/F1 for both."""
        import logging

        from bfcl.demo.run import format_report, run_demo, write_json

        logging.basicConfig(level=logging.WARNING)
        report = run_demo(output, seed=seed, epochs=epochs)
        typer.echo(format_report(report))
        if json_path is not None:
            write_json(report, json_path)
