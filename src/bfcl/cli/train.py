"""``bfcl train``: train any setting of the framework from a config file."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer


def train_command(
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML/JSON file with 'model' and 'train' sections.")
    ] = None,
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Override a setting: model.d_model=384, train.epochs=3.")] = [],
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from OUTPUT_DIR/last.")] = False,
    results: Annotated[
        Optional[Path], typer.Option("--results", help="Also write a results JSON (dataset, model, dev/test scores) here.")
    ] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Model name recorded in --results.")] = None,
) -> None:
    """Train BFCL (or a baseline setting), select on dev F1, score the test split."""
    import json
    import logging

    from bfcl.data.splits import check_split_files
    from bfcl.training.config import load_run_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Settings and data files are checked before torch and the model load; an error here is
    # one line from the bfcl app's handler (exit 2 for settings, 1 for data).
    model_cfg, train_cfg = load_run_config(config, set_)
    check_split_files(
        train_cfg.data_dir, train_cfg.train_file, train_cfg.dev_file, train_cfg.test_file,
        strict=train_cfg.strict_data,
    )
    from bfcl.training.trainer import train as run

    args = ["bfcl", "train"] + (["-c", str(config)] if config else []) + [x for kv in set_ for x in ("--set", kv)]
    args += ["--resume"] if resume else []
    command = " ".join(shlex.quote(a) for a in args)
    summary = run(model_cfg, train_cfg, resume=resume, command=command)
    for split in ("dev", "test"):
        if split in summary:
            s = summary[split]
            typer.echo(f"{split}: P {s['precision']:.4f}  R {s['recall']:.4f}  F1 {s['f1']:.4f}")
    if results is not None:
        record = {
            "dataset": Path(train_cfg.data_dir or train_cfg.train_file or "").name,
            "model": name or Path(train_cfg.output_dir).name,
            "config": summary["config"], "seed": summary["seed"], "epochs": summary["epochs"],
            "best_epoch": summary["best_epoch"], "train_seconds": summary["train_seconds"],
            "machine": summary["machine"], "command": command,
            # what the model was trained on and how it splits raw text: a result is read with them
            "training_data": summary["training_data"], "tokenisation": summary["tokenisation"],
            "dev": summary.get("dev"), "test": summary.get("test"),
            "curve": summary["curve"],  # per epoch: training loss, dev F1 as scored then, seconds
        }
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def register(app: typer.Typer) -> None:
    """Attach ``train`` to the main ``bfcl`` app."""
    app.command("train")(train_command)
