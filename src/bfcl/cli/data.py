"""``bfcl data ...`` and ``bfcl evaluate``.

Library imports happen inside the commands so that ``bfcl --help`` does not
pay for torch or seqeval. Errors in the data are reported by the ``bfcl``
app's one handler (bfcl.cli): one line naming the file and line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from bfcl.data.labels import OTHER_TO_MISC

data_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Inspect MNER data sets.")

STRICT_DATA_HELP = (
    "Refuse lines the reader otherwise skips with a warning (an empty token, a line holding a single space)."
)


def _show_reader_warnings() -> None:
    """Lines the reader skipped are logged as warnings; print them on stderr."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


@data_app.command("stats")
def stats_command(
    directory: Annotated[Path, typer.Argument(help="Directory holding train/valid(dev)/test files, or one file.")],
    images: Annotated[
        Optional[Path], typer.Option("--images", help="Image directory: count samples with and without <IMGID>.jpg.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
    no_map_other: Annotated[
        bool, typer.Option("--no-map-other", help="Keep OTHER as its own type instead of counting it as MISC.")
    ] = False,
    strict_data: Annotated[bool, typer.Option("--strict-data", help=STRICT_DATA_HELP)] = False,
) -> None:
    """Samples and entities per type for each split (conlleval and strict B- counts)."""
    from bfcl.data.stats import dataset_stats

    _show_reader_warnings()
    stats = dataset_stats(directory, map_other_to_misc=not no_map_other, images_dir=images, strict=strict_data)
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console()
    for split, s in stats.items():
        title = f"{split}: {s['samples']} samples"
        if "images_found" in s:
            title += f", images {s['images_found']} found / {s['images_missing']} missing"
        table = Table(title=title, title_justify="left")
        table.add_column("type")
        table.add_column("entities (conlleval)", justify="right")
        table.add_column("entities (strict B-)", justify="right")
        for t in s["entities"]:
            table.add_row(t, str(s["entities"][t]), str(s["entities_strict"][t]))
        table.add_row(
            "total", str(sum(s["entities"].values())), str(sum(s["entities_strict"].values())), style="bold"
        )
        console.print(table)


def _print_scores(scores: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("type", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "type" else "right")
    for t, row in scores["per_type"].items():
        table.add_row(t, *(f"{100 * row[k]:.2f}" for k in ("precision", "recall", "f1")), str(row["support"]))
    support = sum(row["support"] for row in scores["per_type"].values())
    table.add_row(
        "overall (micro)",
        *(f"{100 * scores[k]:.2f}" for k in ("precision", "recall", "f1")),
        str(support),
        style="bold",
    )
    Console().print(table)


def evaluate_command(
    gold: Annotated[Optional[Path], typer.Option("--gold", help="Gold file (UMT or CoNLL).")] = None,
    pred: Annotated[Optional[Path], typer.Option("--pred", help="Prediction file in the same format.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Trained model directory to evaluate.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Data file to run --model on.")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Image directory (with --model).")] = None,
    output: Annotated[
        Optional[Path],
        typer.Option("--output", help="Where to write predictions (with --model), in the format of --data (UMT or CoNLL)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print scores as JSON.")] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Strict IOB2 entities (stray I- tags are no entity) instead of conlleval.")
    ] = False,
    no_map_other: Annotated[
        bool, typer.Option("--no-map-other", help="Score OTHER as its own type instead of MISC.")
    ] = False,
    strict_data: Annotated[bool, typer.Option("--strict-data", help=STRICT_DATA_HELP)] = False,
    confusion: Annotated[
        bool,
        typer.Option("--confusion", help="Also print a span confusion table: gold type x predicted type, boundary errors, missed and spurious spans."),
    ] = False,
) -> None:
    """Entity-level P/R/F1: a prediction file against gold (--gold/--pred), or a model on data (--model/--data)."""
    mode = "strict" if strict else "conlleval"
    mapping = None if no_map_other else OTHER_TO_MISC
    _show_reader_warnings()

    if model is not None:
        if gold is not None or pred is not None:
            raise _fail("use either --model/--data or --gold/--pred, not both", 2)
        if data is None:
            raise _fail("--model needs --data FILE", 2)
        try:
            from bfcl.inference.evaluate import evaluate_model_cli
        except ImportError as e:
            missing = getattr(e, "name", None)
            if missing in ("bfcl.inference.evaluate", "bfcl.inference") or "evaluate_model_cli" in str(e):
                raise _fail("model evaluation (bfcl.inference.evaluate) is not available in this installation") from None
            raise
        scores = evaluate_model_cli(
            model, data, images, output, map_other_to_misc=not no_map_other, strict=strict, strict_data=strict_data,
            confusion=confusion,
        )
        if scores is not None:
            _report(scores, f"{model} on {data} ({mode})", as_json)
        return

    if data is not None or images is not None or output is not None:
        raise _fail("--data, --images and --output only apply with --model", 2)
    if gold is None or pred is None:
        raise _fail("give --gold FILE and --pred FILE (or --model DIR --data FILE)", 2)

    from bfcl.data.splits import read_split
    from bfcl.metrics import score_samples

    gold_samples = read_split(gold, map_other=False, strict=strict_data, split="gold")
    pred_samples = read_split(pred, map_other=False, strict=strict_data, split="prediction")
    scores = score_samples(gold_samples, pred_samples, mode, mapping=mapping)
    if confusion:
        from bfcl.confusion import span_confusion
        from bfcl.data.labels import map_types

        fix = (lambda labels: map_types(labels, mapping)) if mapping else (lambda labels: list(labels))  # noqa: E731
        table = span_confusion(
            [fix(s.labels) for s in gold_samples], [fix(s.labels) for s in pred_samples],
            [s.tokens for s in gold_samples], mode=mode,
        )
        scores["confusion"] = {**table.to_dict(), "table": table.table()}
    _report(scores, f"{pred} vs {gold} ({mode})", as_json)


def _report(scores: dict, title: str, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(scores, indent=2))
        return
    _print_scores(scores, title)
    if "confusion" in scores:
        typer.echo("\nspan confusion (rows: gold type; columns: predicted type with the same boundaries)")
        typer.echo(scores["confusion"]["table"])


def register(app: typer.Typer) -> None:
    """Attach ``data`` and ``evaluate`` to the main ``bfcl`` app."""
    app.add_typer(data_app, name="data")
    app.command("evaluate")(evaluate_command)
