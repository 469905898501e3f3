"""``bfcl demo``: the README's main command; ``bfcl probe``: write the probe it trains on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DIFFICULTY_HELP = (
    "Probe preset: 'easy' (default; one full-frame drawing per picture, 600 training posts) or 'hard' "
    "(a small deciding object among clutter and smaller distractor drawings, stronger grain, 300 training posts)."
)


def demo_command(
    output: Annotated[Optional[Path], typer.Option("--output", help="Keep the trained BFCL checkpoint here (OUTPUT/best).")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the scores as JSON here.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the probe and of training.")] = 0,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs for each model.")] = 4,
    difficulty: Annotated[str, typer.Option("--probe-difficulty", help=DIFFICULTY_HELP)] = "easy",
) -> None:
    """Train BFCL and a text-only encoder + CRF on the multimodal probe; print P/R/F1 for both."""
    import logging

    from bfcl.demo.probe import probe_settings
    from bfcl.demo.run import format_report, run_demo, write_json

    _check_difficulty(difficulty, "--probe-difficulty")
    logging.basicConfig(level=logging.WARNING)
    report = run_demo(output, seed=seed, epochs=epochs, difficulty=probe_settings(difficulty))
    typer.echo(format_report(report))
    if json_path is not None:
        write_json(report, json_path)


def probe_command(
    out: Annotated[Path, typer.Option("--out", help="Folder to write: train.txt, valid.txt, test.txt (UMT) and images/.")],
    difficulty: Annotated[str, typer.Option("--difficulty", help=DIFFICULTY_HELP)] = "easy",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the probe.")] = 0,
    n_train: Annotated[Optional[int], typer.Option("--n-train", min=0, help="Training posts (default: the preset's).")] = None,
    n_dev: Annotated[int, typer.Option("--n-dev", min=0, help="Dev posts.")] = 150,
    n_test: Annotated[int, typer.Option("--n-test", min=0, help="Test posts.")] = 300,
) -> None:
    """Write the demo's multimodal probe as a UMT data folder (for `bfcl train` or `bfcl experiment --data`)."""
    from bfcl.demo.probe import make_probe

    _check_difficulty(difficulty, "--difficulty")
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a folder", param_hint="--out")
    if out.is_dir() and any((out / f).exists() for f in ("train.txt", "valid.txt", "test.txt")):
        raise typer.BadParameter(f"{out} already holds a data set; choose an empty folder", param_hint="--out")
    probe = make_probe(out, seed=seed, n_train=n_train, n_dev=n_dev, n_test=n_test, difficulty=difficulty)
    typer.echo(
        f"wrote the {difficulty} probe (seed {seed}) to {out}: {len(probe.train)} train, {len(probe.dev)} dev, "
        f"{len(probe.test)} test posts; images in {out / 'images'} (.png)"
    )


def _check_difficulty(value: str, option: str) -> None:
    from bfcl.demo.probe import DIFFICULTIES

    if value not in DIFFICULTIES:
        raise typer.BadParameter(f"{value!r}: choose one of {', '.join(DIFFICULTIES)}", param_hint=option)


def register(app: typer.Typer) -> None:
    """Attach ``demo`` and ``probe`` to the main ``bfcl`` app."""
    app.command("demo")(demo_command)
    app.command("probe")(probe_command)
