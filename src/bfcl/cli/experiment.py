"""``bfcl experiment NAME``: one of the paper's tables or figures, as resumable ``bfcl train`` runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

PAPER_DATASETS = ("auto", "twitter2015", "twitter2017", "none")


def experiment_command(
    name: Annotated[str, typer.Argument(help="table2, table3, table4, table5, fig6a or fig6b.", show_default=False)],
    data: Annotated[Path, typer.Option("--data", help="Data folder: train/valid(dev)/test files (UMT or CoNLL); a probe from `bfcl probe`.")],
    images: Annotated[
        Optional[Path], typer.Option("--images", help="Image folder (default: DATA/images when it exists; else no images).")
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds per row: 42, 43, ...")] = 3,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Output folder (default: runs/experiments/<data folder name>).")
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option("--config", "-c", help="Base config YAML (default: the offline MiniLM + EfficientNet-Lite0 BFCL setting)."),
    ] = None,
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Override a setting of every row: train.epochs=3.")] = [],
    quick: Annotated[bool, typer.Option("--quick", help="Smoke run: 1 epoch on the first 100 training posts.")] = False,
    rows: Annotated[Optional[str], typer.Option("--rows", help="Only these rows (names or keys, comma-separated).")] = None,
    text_only: Annotated[
        bool, typer.Option("--text-only", help="table2: only the text-only baselines and BFCL (data without images).")
    ] = False,
    resnet200: Annotated[
        Optional[Path], typer.Option("--resnet200", help="table4: a torchvision-layout ResNet-200 state dict (.safetensors or .pth).")
    ] = None,
    paper_dataset: Annotated[
        str, typer.Option("--paper-dataset", help="Which of the paper's datasets to set beside the results: auto (from the data folder's name), twitter2015, twitter2017, none.")
    ] = "auto",
    in_process: Annotated[
        bool, typer.Option("--in-process", help="Train in this process instead of one `bfcl train` subprocess per run.")
    ] = False,
    keep_checkpoints: Annotated[
        bool, typer.Option("--keep-checkpoints", help="Keep every run's best/ and last/ weights (default: only its log and summary).")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the runs and their commands; train nothing, write nothing.")] = False,
    report_only: Annotated[bool, typer.Option("--report-only", help="Train nothing; write the report from the finished runs.")] = False,
) -> None:
    """Run a table or figure of the paper: every row x seed an ordinary `bfcl train`, finished runs
    skipped (so it resumes), then mean ± std over seeds, a Markdown table and a JSON file beside the
    paper's figures, and for Fig. 6 a PNG plot."""
    from bfcl.experiments.registry import EXPERIMENTS, get_experiment
    from bfcl.experiments.runner import ExperimentRunner, default_out, infer_paper_dataset, write_reports

    try:
        get_experiment(name)
    except KeyError as e:
        raise typer.BadParameter(e.args[0], param_hint="NAME") from None
    if paper_dataset not in PAPER_DATASETS:
        raise typer.BadParameter(f"{paper_dataset!r}: choose one of {', '.join(PAPER_DATASETS)}", param_hint="--paper-dataset")
    if not data.is_dir():
        what = "is not a folder" if data.exists() else "does not exist"
        raise typer.BadParameter(f"{data} {what}", param_hint="--data")
    if text_only and name != "table2":
        raise typer.BadParameter("--text-only selects rows of table2 only", param_hint="--text-only")
    if resnet200 is not None and not resnet200.is_file():
        raise typer.BadParameter(f"{resnet200} is not a file", param_hint="--resnet200")
    if dry_run and report_only:
        raise typer.BadParameter("choose one of --dry-run and --report-only", param_hint="--dry-run")
    params = {"resnet200": str(resnet200.resolve())} if resnet200 is not None else {}
    runner = ExperimentRunner(
        EXPERIMENTS[name], data=data, images=images, out=out or default_out(data), seeds=seeds,
        base_config=config, sets=set_, quick=quick, rows=rows.split(",") if rows else None, text_only=text_only,
        in_process=in_process, keep_checkpoints=keep_checkpoints, params=params, echo=lambda m: typer.echo(m),
    )  # fmt: skip
    typer.echo(f"{name} ({EXPERIMENTS[name].source}): {len(runner.runs())} run(s) in {runner.out}")
    outcomes = [] if report_only else runner.run(dry_run=dry_run)
    if dry_run:
        return
    ds = {"auto": infer_paper_dataset(runner.data), "none": None}.get(paper_dataset, paper_dataset)
    report = write_reports(runner, ds)
    typer.echo("")
    typer.echo(report["markdown"])
    if report.get("plot_skipped"):
        typer.echo(f"no plot: {report['plot_skipped']}")
    typer.echo("wrote " + ", ".join(report["files"]))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        typer.echo(f"{len(failed)} run(s) failed; rerun the same command to retry them (logs in {runner.out / 'logs'})", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Attach ``experiment`` to the main ``bfcl`` app."""
    app.command("experiment")(experiment_command)
