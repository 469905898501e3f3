"""Run an experiment's rows x seeds as ordinary ``bfcl train`` runs, resumably.

Each row's config is the base config plus the row's overrides, written to
``OUT/configs/<row>.yaml``; each (row, seed) is one ``bfcl train -c OUT/configs/<row>.yaml
--set train.seed=S --set train.output_dir=OUT/checkpoints/<row>-seed<S> --results ...``, whose
results JSON lands in ``OUT/runs/<row>-seed<S>.json`` only once the run is complete.

Why a subprocess per run (the default): every run starts with a clean process, so GPU and
CPU memory are returned between runs, no global state (torch threads, seeds, cached encoders,
logging) leaks from one row into the next, a crash or out-of-memory kill of one run is recorded
and the runner goes on, and each run's exact command is on disk to rerun alone. Its price, the
start-up of a fresh Python (a few seconds), is small beside a training run. ``in_process=True``
calls the same ``bfcl train`` function in this process instead: for smoke runs and tests.

Resuming: a run whose results JSON exists is skipped (its settings fingerprint must match the
current row's, else the runner refuses to mix them); a run killed midway continues from its
``last/`` checkpoint; a finished run of identical settings and seed under another row (the full
BFCL row of Table 3 is Table 5's BF row) is reused rather than trained twice.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bfcl.data.atomic import atomic_write
from bfcl.errors import ConfigError
from bfcl.experiments.registry import DATASETS, DEFAULT_BASE, PARAMS, Experiment, Row

FIRST_SEED = 42
QUICK_OVERRIDES: tuple[str, ...] = ("train.epochs=1", "train.max_train_samples=100")
"""``--quick``: one epoch on the first 100 training posts (dev and test stay whole)."""
RUNNER_SETTINGS: dict[str, str] = {
    "data_dir": "--data", "train_file": "--data", "dev_file": "--data", "test_file": "--data",
    "images_dir": "--images", "output_dir": "--out", "seed": "--seeds",
}  # fmt: skip
"""Train settings the runner sets itself, with the option that sets them."""
PER_RUN = frozenset({"output_dir", "seed", "progress", "log_every_steps", "feature_cache", "num_threads"})
"""Train settings left out of the settings fingerprint: where a run writes, how it logs, and the
CPU thread count (an execution detail: a run resumed with other threads is the same experiment)."""
NOT_AVAILABLE = "not available in this build"


class ExperimentError(ConfigError):
    """The experiment cannot run as asked (a bad option, or results made with other settings)."""


@dataclass
class PlannedRow:
    """A row made concrete: its config text and fingerprint, or why it cannot run here."""

    row: Row
    selected: bool
    config_text: str | None = None
    settings_sha256: str | None = None
    skip_reason: str | None = None
    uses_image: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    row: Row
    seed: int
    status: str
    """"trained", "done earlier", "reused", "failed" or "skipped"."""
    reason: str = ""
    seconds: float = 0.0


def infer_paper_dataset(data: Path) -> str | None:
    """Which of the paper's datasets a data folder is, from its name (twitter2015 / twitter2017)."""
    name = data.resolve().name.lower().replace("-", "").replace("_", "")
    for ds in DATASETS:
        if ds[-4:] in name:
            return ds
    return None


def default_out(data: Path) -> Path:
    """``runs/experiments/<data folder name>``: one folder per data set, shared by its experiments."""
    return Path("runs") / "experiments" / (data.resolve().name or "data")


class ExperimentRunner:
    """Plans, runs and resumes one experiment; ``run()`` returns the outcomes of the selected runs."""

    def __init__(
        self,
        experiment: Experiment,
        *,
        data: str | Path,
        out: str | Path,
        images: str | Path | None = None,
        seeds: int = 3,
        base_config: str | Path | None = None,
        sets: Sequence[str] = (),
        quick: bool = False,
        rows: Sequence[str] | None = None,
        text_only: bool = False,
        in_process: bool = False,
        keep_checkpoints: bool = False,
        params: dict[str, str] | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.experiment = experiment
        self.data = Path(data).resolve()
        if not self.data.is_dir():
            what = "is not a folder" if self.data.exists() else "does not exist"
            raise ExperimentError(f"--data {data} {what} (expected a folder with train/valid(dev)/test files)")
        from bfcl.data.splits import check_split_files

        check_split_files(str(self.data), None, None, None)
        if images is None and (self.data / "images").is_dir():
            images = self.data / "images"  # the probe's layout, and a common one
        self.images = Path(images).resolve() if images is not None else None
        if self.images is not None and not self.images.is_dir():
            raise ExperimentError(f"--images {images} is not a folder")
        self.out = Path(out).resolve()
        if self.out.exists() and not self.out.is_dir():
            raise ExperimentError(f"--out {out} exists and is not a folder")
        if seeds < 1:
            raise ExperimentError(f"--seeds must be at least 1, got {seeds}")
        self.seeds = [FIRST_SEED + i for i in range(seeds)]
        self.base_config = Path(base_config) if base_config is not None else None
        self.sets = list(sets)
        self.quick = quick
        self.in_process = in_process
        self.keep_checkpoints = keep_checkpoints
        self.params = dict(params or {})
        self.echo = echo
        self.selected = self._select(rows, text_only)
        self._check_sets()
        self.base = self._load_base()
        self.plan = [self._compose(r) for r in experiment.rows]

    # ----------------------------------------------------------------- paths

    def config_path(self, row: Row) -> Path:
        return self.out / "configs" / f"{row.key}.yaml"

    def result_path(self, row: Row, seed: int) -> Path:
        return self.out / "runs" / f"{row.key}-seed{seed}.json"

    def failure_path(self, row: Row, seed: int) -> Path:
        return self.out / "runs" / f"{row.key}-seed{seed}.failed.json"

    def checkpoint_dir(self, row: Row, seed: int) -> Path:
        return self.out / "checkpoints" / f"{row.key}-seed{seed}"

    def log_path(self, row: Row, seed: int) -> Path:
        return self.out / "logs" / f"{row.key}-seed{seed}.log"

    # ----------------------------------------------------------------- planning

    def _select(self, rows: Sequence[str] | None, text_only: bool) -> set[str]:
        keys = {r.key for r in self.experiment.rows}
        if rows:
            try:
                keys = {self.experiment.row(name.strip()).key for name in rows if name.strip()}
            except KeyError as e:
                raise ExperimentError(f"--rows: {e.args[0]}") from None
        if text_only:  # the text-only rows and the base row itself (BFCL, no overrides)
            keys = {r.key for r in self.experiment.rows if r.key in keys and (r.text_only or not r.overrides)}
        return keys

    def _check_sets(self) -> None:
        for item in self.sets:
            key = item.split("=", 1)[0].strip()
            name = key.split(".", 1)[1] if key.startswith("train.") else key
            if name in RUNNER_SETTINGS:
                raise ExperimentError(
                    f"--set {key}: the experiment runner sets this itself; use {RUNNER_SETTINGS[name]} instead"
                )

    def _load_base(self) -> dict[str, dict[str, Any]]:
        from bfcl.training.config import _read_file

        raw = _read_file(self.base_config) if self.base_config is not None else copy.deepcopy(DEFAULT_BASE)
        raw.setdefault("model", {})
        train = raw.setdefault("train", {})
        for name in RUNNER_SETTINGS:  # the runner's own: a base config's data paths give way to --data
            train.pop(name, None)
        # the base with --set must be a valid run on its own: a typo fails here, once, not per row
        from bfcl.training.config import apply_overrides

        checked = copy.deepcopy(raw)
        apply_overrides(checked, self.sets)
        self._validate(checked, "the base config with --set")
        return raw

    def _validate(self, raw: dict[str, dict[str, Any]], what: str):
        """``load_run_config`` on ``raw`` (through a file, as ``bfcl train`` reads it)."""
        from bfcl.training.config import load_run_config

        with tempfile.TemporaryDirectory(prefix="bfcl-experiment-") as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
            try:
                return load_run_config(path, [])
            except ConfigError as e:
                raise ConfigError(str(e).replace(str(path), what)) from None

    def _compose(self, row: Row) -> PlannedRow:
        """Base < runner defaults < the row's defaults < --quick < --set < the row's overrides, then the settings the
        row's architecture never reads are dropped (unless the row itself sets them), and the
        result is checked exactly as ``bfcl train`` checks a config."""
        from bfcl.model.configuration import BFCLConfig
        from bfcl.training.config import apply_overrides

        planned = PlannedRow(row, selected=row.key in self.selected)
        raw = copy.deepcopy(self.base)
        train = raw["train"]
        train["data_dir"] = str(self.data)
        train.setdefault("progress", False)
        train.setdefault("feature_cache", str(self.out / "features"))
        apply_overrides(raw, list(row.defaults))
        apply_overrides(raw, list(QUICK_OVERRIDES) if self.quick else [])
        user: dict[tuple[str, str], str] = {}
        apply_overrides(raw, self.sets, user)
        try:
            overrides = [o.format(**self.params) for o in row.overrides]
        except KeyError as e:
            planned.skip_reason = f"needs --{e.args[0]} PATH: {PARAMS.get(e.args[0], 'a file')}"
            return planned
        before = copy.deepcopy(raw)
        row_origins: dict[tuple[str, str], str] = {}
        try:
            apply_overrides(raw, overrides, row_origins)
        except ConfigError as e:
            planned.skip_reason = f"{NOT_AVAILABLE}: {e}"
            return planned
        for key in user:
            if key in row_origins and before[key[0]].get(key[1]) != raw[key[0]].get(key[1]):
                planned.notes.append(f"--set {key[0]}.{key[1]} is replaced by the row's own value")
        try:
            model = BFCLConfig.from_dict(raw["model"])
        except (ConfigError, TypeError, ValueError) as e:
            planned.skip_reason = f"{NOT_AVAILABLE}: {e}"
            return planned
        # a base or --set value this row's architecture never reads is dropped (bfcl train would
        # refuse it); one the row sets itself is kept, and refused below if it has no effect
        inactive = model.inactive_settings()
        for name in list(raw["model"]):
            if name in inactive and ("model", name) not in row_origins:
                del raw["model"][name]
        if self.images is not None and model.uses_image:
            train["images_dir"] = str(self.images)
            train.setdefault("image_extensions", [".jpg", ".png"])
        elif not model.uses_image:
            for name in ("image_extensions", "image_on_error"):
                if ("train", name) not in row_origins:
                    train.pop(name, None)
        try:
            model, tc = self._validate(raw, f"row {row.name}")
        except ConfigError as e:
            planned.skip_reason = f"{NOT_AVAILABLE}: {e}"
            return planned
        planned.skip_reason = self._unavailable(model)
        planned.uses_image = model.uses_image
        header = (
            f"# {self.experiment.name} ({self.experiment.source}), row {row.name}: "
            f"{self.base_config or 'the default base (bfcl.experiments.registry.DEFAULT_BASE)'}"
            f"{' + ' + ' '.join(row.defaults) if row.defaults else ''}"
            f"{' + --quick' if self.quick else ''}{' + --set ' + ' '.join(self.sets) if self.sets else ''}"
            f"{' + ' + ' '.join(overrides) if overrides else ''}\n"
        )
        planned.config_text = header + yaml.safe_dump(raw, sort_keys=False)
        fingerprint = {
            "model": model.to_dict(), "train": {k: v for k, v in tc.to_dict().items() if k not in PER_RUN},
        }
        planned.settings_sha256 = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
        return planned

    @staticmethod
    def _unavailable(model) -> str | None:
        """Why a valid config still cannot train here: image weights that are not on this machine."""
        if not model.uses_image:
            return None
        from bfcl.encoders.image import RESMEM_PIP

        if model.image_encoder == "resnet152-resmem" and importlib.util.find_spec("resmem") is None:
            return f"image encoder resnet152-resmem needs the resmem package: {RESMEM_PIP} (non-commercial licence)"
        if model.image_encoder.lower().startswith("resnet") and ":" in model.image_encoder:
            path = Path(model.image_encoder.split(":", 1)[1]).expanduser()
            if not path.is_file():
                return f"image encoder {model.image_encoder}: no such state dict file"
        if not model.takes_images:
            name = model.image_encoder[3:] if model.image_encoder.startswith("hf:") else model.image_encoder
            return (
                f"image encoder {model.image_encoder}: its weights are not on this machine "
                f"(with a hub: huggingface-cli download {name})"
            )
        return None

    # ----------------------------------------------------------------- running

    def runs(self) -> list[tuple[PlannedRow, int]]:
        """The selected (row, seed) pairs, in order."""
        return [(p, s) for p in self.plan if p.selected for s in self.seeds]

    def check_existing(self) -> None:
        """Refuse to mix: a finished run on disk must have been made with this row's settings."""
        for planned, seed in self.runs():
            path = self.result_path(planned.row, seed)
            if planned.settings_sha256 is None or not path.is_file():
                continue
            record = _read_json(path)
            if record is not None and record.get("settings_sha256") != planned.settings_sha256:
                raise ExperimentError(
                    f"{path} holds a run of {planned.row.name} made with other settings (another config, --set, "
                    f"--quick or data): choose another --out, or delete that file to rerun it"
                )

    def run(self, dry_run: bool = False) -> list[Outcome]:
        """Train every selected run that has no result yet; returns one outcome per selected run."""
        self.check_existing()
        runs = self.runs()
        if self.images is None and any(p.uses_image for p, _ in runs):
            self.echo("note: no image folder (--images): multimodal rows train with every image masked")
        for planned in self.plan:
            for note in planned.notes if planned.selected else ():
                self.echo(f"note: {planned.row.name}: {note}")
        index = None if dry_run else self._finished_index()
        outcomes = []
        for i, (planned, seed) in enumerate(runs, start=1):
            row = planned.row
            head = f"[{i}/{len(runs)}] {self.experiment.name} {row.name} seed {seed}"
            if planned.skip_reason:
                self.echo(f"{head}: skipped: {planned.skip_reason}")
                outcomes.append(Outcome(row, seed, "skipped", planned.skip_reason))
                continue
            result = self.result_path(row, seed)
            if result.is_file() and _read_json(result) is not None:
                self.echo(f"{head}: done earlier ({result.relative_to(self.out)})")
                outcomes.append(Outcome(row, seed, "done earlier"))
                continue
            if dry_run:
                self.echo(f"{head}: to run: bfcl {shlex.join(self._command(planned, seed)[3:])}")
                outcomes.append(Outcome(row, seed, "to run"))
                continue
            source = index.get((planned.settings_sha256, seed))
            if source is not None:
                self._reuse(planned, seed, source)
                self.echo(f"{head}: same settings and seed as {source.name}: reused")
                outcomes.append(Outcome(row, seed, "reused", str(source)))
                continue
            self.echo(f"{head} ...")
            outcome = self._train(planned, seed)
            if outcome.status == "trained":
                record = _read_json(result) or {}
                index[(planned.settings_sha256, seed)] = result
                dev, test = (record.get(s) or {} for s in ("dev", "test"))
                scores = ", ".join(f"{s} F1 {100 * d['f1']:.2f}" for s, d in (("dev", dev), ("test", test)) if d)
                self.echo(f"    done in {outcome.seconds:.0f} s: {scores}")
            else:
                self.echo(f"    failed after {outcome.seconds:.0f} s: {outcome.reason} (log: {self.log_path(row, seed)})")
            outcomes.append(outcome)
        return outcomes

    def _finished_index(self) -> dict[tuple[str | None, int], Path]:
        """Finished runs in OUT (any experiment), by settings fingerprint and seed."""
        index: dict[tuple[str | None, int], Path] = {}
        for path in sorted((self.out / "runs").glob("*-seed*.json")) if (self.out / "runs").is_dir() else []:
            record = _read_json(path)
            if record and record.get("settings_sha256") and "seed" in record:
                index.setdefault((record["settings_sha256"], int(record["seed"])), path)
        return index

    def _reuse(self, planned: PlannedRow, seed: int, source: Path) -> None:
        record = _read_json(source) or {}
        record.update(self._identity(planned, seed), reused_from=source.name)
        self._write_config(planned)
        _write_json(self.result_path(planned.row, seed), record)

    def _identity(self, planned: PlannedRow, seed: int) -> dict[str, Any]:
        row = planned.row
        return {
            "experiment": self.experiment.name, "row": row.name, "row_key": row.key, "overrides": list(row.overrides),
            "seed": seed, "settings_sha256": planned.settings_sha256,
            "config_file": str(self.config_path(row)), "log": str(self.log_path(row, seed)),
        }

    def _write_config(self, planned: PlannedRow) -> Path:
        path = self.config_path(planned.row)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != planned.config_text:
            _write_text(path, planned.config_text or "")
        return path

    def _command(self, planned: PlannedRow, seed: int, resume: bool = False) -> list[str]:
        row = planned.row
        return [
            sys.executable, "-m", "bfcl.cli", "train", "-c", str(self.config_path(row)),
            "--set", f"train.seed={seed}", "--set", f"train.output_dir={self.checkpoint_dir(row, seed)}",
            "--results", str(self._partial_path(row, seed)), "--name", row.name,
        ] + (["--resume"] if resume else [])

    def _partial_path(self, row: Row, seed: int) -> Path:
        return self.out / "runs" / f".{row.key}-seed{seed}.partial.json"

    def _prepare_checkpoint_dir(self, planned: PlannedRow, seed: int) -> bool:
        """Whether to resume: a ``last/`` left by a killed run of the same settings. A folder left by
        other settings is cleared (resuming it would mix two configs)."""
        ckpt = self.checkpoint_dir(planned.row, seed)
        stamp = ckpt / "experiment-settings.sha256"
        if ckpt.is_dir():
            same = stamp.is_file() and stamp.read_text().strip() == planned.settings_sha256
            if not same:
                shutil.rmtree(ckpt)
            elif (ckpt / "last").is_dir():
                return True
        ckpt.mkdir(parents=True, exist_ok=True)
        stamp.write_text(f"{planned.settings_sha256}\n")
        return False

    def _train(self, planned: PlannedRow, seed: int) -> Outcome:
        row = planned.row
        for folder in ("runs", "logs"):
            (self.out / folder).mkdir(parents=True, exist_ok=True)
        self._write_config(planned)
        resume = self._prepare_checkpoint_dir(planned, seed)
        partial = self._partial_path(row, seed)
        partial.unlink(missing_ok=True)
        command = self._command(planned, seed, resume)
        log = self.log_path(row, seed)
        t0 = time.perf_counter()
        with log.open("a", encoding="utf-8") as f:
            f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n")
        if self.in_process:
            returncode, reason = self._train_in_process(command[4:])
        else:
            with log.open("a", encoding="utf-8") as f:
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}
                returncode = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode
            reason = _error_line(log) if returncode else ""
        seconds = time.perf_counter() - t0
        record = _read_json(partial) if returncode == 0 else None
        if record is None:
            reason = reason or f"bfcl train exited with {returncode} and wrote no results"
            _write_json(self.failure_path(row, seed), {
                **self._identity(planned, seed), "returncode": returncode, "reason": reason,
                "command": command[1:], "seconds": round(seconds, 1),
            })  # fmt: skip
            return Outcome(row, seed, "failed", reason, seconds)
        record.update(self._identity(planned, seed), wall_seconds=round(seconds, 1))
        _write_json(self.result_path(row, seed), record)
        partial.unlink(missing_ok=True)
        self.failure_path(row, seed).unlink(missing_ok=True)
        if not self.keep_checkpoints:  # weights of every run add up: keep the log and summary only
            for name in ("best", "last"):
                shutil.rmtree(self.checkpoint_dir(row, seed) / name, ignore_errors=True)
        return Outcome(row, seed, "trained", "", seconds)

    @staticmethod
    def _train_in_process(args: list[str]) -> tuple[int, str]:
        """``bfcl train ARGS`` in this process, through the CLI function itself."""
        from bfcl.cli.train import train_command

        opts: dict[str, Any] = {"config": None, "set_": [], "resume": False, "results": None, "name": None}
        it = iter(args)
        for a in it:
            if a == "-c":
                opts["config"] = Path(next(it))
            elif a == "--set":
                opts["set_"].append(next(it))
            elif a == "--results":
                opts["results"] = Path(next(it))
            elif a == "--name":
                opts["name"] = next(it)
            elif a == "--resume":
                opts["resume"] = True
        try:
            train_command(**opts)
        except Exception as e:  # the run failed: record bfcl's one-line message, as the subprocess's log has it
            text = str(e) if str(e).strip() else type(e).__name__
            return 1, "; ".join(line for line in text.splitlines() if line.strip())
        return 0, ""


def _error_line(log: Path) -> str:
    """The last ``Error: ...`` line of a run's log (bfcl's one-line report), else its last line."""
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("Error:"):
            return line.removeprefix("Error:").strip()
    return lines[-1][-300:] if lines else ""


def _read_json(path: Path) -> dict[str, Any] | None:
    """A results file, or None when it is missing or damaged (then the run is redone)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_json(path: Path, record: dict[str, Any]) -> None:
    _write_text(path, json.dumps(record, indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    """Atomically, readable as any file the user writes (the temporary file is private: 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(text)
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def write_reports(runner: ExperimentRunner, paper_dataset: str | None) -> dict[str, Any]:
    """Aggregate the finished runs of ``runner``'s experiment into OUT/<name>.json and OUT/<name>.md
    (and OUT/<name>.png for a figure); returns the report, with ``files`` naming what was written."""
    from bfcl.experiments.aggregate import build_report, collect_results, to_markdown

    exp = runner.experiment
    fingerprints = {p.row.key: p.settings_sha256 for p in runner.plan}
    results = collect_results(runner.out, exp, runner.seeds, fingerprints)
    statuses = {}
    for p in runner.plan:
        failures = []
        for seed in runner.seeds:
            record = _read_json(runner.failure_path(p.row, seed))
            if record is not None and record.get("settings_sha256") == p.settings_sha256:
                failures.append({"seed": seed, "reason": record.get("reason"), "log": record.get("log")})
        statuses[p.row.key] = {"selected": p.selected, "skip_reason": p.skip_reason, "failures": failures}
    meta = {
        "data": str(runner.data), "images": str(runner.images) if runner.images else None, "seeds": runner.seeds,
        "base_config": str(runner.base_config) if runner.base_config else "default (bfcl.experiments.registry.DEFAULT_BASE)",
        "sets": runner.sets, "quick": runner.quick, "out": str(runner.out),
    }  # fmt: skip
    report = build_report(exp, results, statuses=statuses, paper_dataset=paper_dataset, meta=meta)
    runner.out.mkdir(parents=True, exist_ok=True)
    files = [runner.out / f"{exp.name}.json", runner.out / f"{exp.name}.md"]
    report["markdown"] = to_markdown(report)
    _write_json(files[0], {k: v for k, v in report.items() if k != "markdown"})
    _write_text(files[1], report["markdown"])
    if exp.kind == "figure":
        from bfcl.experiments.plots import plot_figure

        try:
            png = plot_figure(report, runner.out / f"{exp.name}.png")
        except ImportError as e:
            report["plot_skipped"] = str(e)
        else:
            if png is None:
                report["plot_skipped"] = "no point has finished yet"
            else:
                files.append(png)
    report["files"] = [str(f) for f in files]
    return report
