"""``bfcl explain``: draw where a trained model looked in the picture for each entity it found."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def explain_command(
    model: Annotated[Path, typer.Option("--model", help="Trained model directory (config.json, model.safetensors).")],
    text: Annotated[str, typer.Option("--text", help="The post's text.")],
    image: Annotated[Path, typer.Option("--image", help="The post's picture.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Write the PNG figure here.")] = Path("explain.png"),
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the maps as JSON here.")] = None,
    dpi: Annotated[int, typer.Option("--dpi", min=30, max=600, help="Figure resolution (each panel is 2.6 inches wide).")] = 100,
    device: Annotated[Optional[str], typer.Option("--device", help="torch device (default: cuda if available, else cpu).")] = None,
) -> None:
    """Entity and bottleneck heat maps over the 7x7 image grid, drawn over the picture."""
    # heavy imports only when the command runs: `bfcl --help` stays fast
    from bfcl.data.images import ImageLoadError
    from bfcl.inference.explain import ExplainError, explain as run_explain, render
    from bfcl.inference.predictor import Predictor

    try:
        predictor = Predictor.load(model, device=device)
        result = run_explain(predictor, text, image)
        out = render(result, image, output, dpi=dpi)
    except (FileNotFoundError, ExplainError, ImageLoadError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    if not result.entities:
        typer.echo("no entities found")
    for em in result.entities:
        e = em.entity
        line = f"{e.type:<5} {e.score:.3f}  [{e.start}:{e.end}]  {e.text}"
        if em.note:
            line += f"  ({em.note})"
        typer.echo(line)
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"figure: {out}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(result.to_json() + "\n", encoding="utf-8")
        typer.echo(f"json: {json_path}")


def register(app: typer.Typer) -> None:
    """Attach ``explain`` to the main ``bfcl`` app."""
    app.command("explain")(explain_command)
