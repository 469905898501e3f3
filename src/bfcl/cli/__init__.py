"""The ``bfcl`` command. Each sub-command lives in its own module and registers itself here."""

from __future__ import annotations

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="bfcl: multimodal named entity recognition with Bottleneck Fusion and Contrastive Learning.",
)


def _register() -> None:
    from bfcl.cli import data, demo, explain, predict, serve, train

    for module in (data, train, demo, predict, serve, explain):
        module.register(app)


_register()


def main() -> None:
    app()
