"""Run configuration: one YAML/JSON file with a ``model`` section (``BFCLConfig``)
and a ``train`` section (``TrainConfig``), overridable with ``--set key=value``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bfcl.model.configuration import BFCLConfig


@dataclass
class TrainConfig:
    data_dir: str | None = None
    """Folder with train/valid(dev)/test files in UMT or CoNLL format."""
    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    """Explicit files override those found in ``data_dir``."""
    images_dir: str | None = None
    """Folder of ``<IMGID><ext>`` images; a post whose image is absent gets an image mask."""
    image_extensions: list[str] = field(default_factory=lambda: [".jpg"])
    image_on_error: str = "none"
    """A missing/broken image: "none" (logged, the post is treated as having no image) or "error"."""
    map_other_to_misc: bool = True
    """Twitter-2015 calls MISC "OTHER"; map it so reports line up with the paper."""
    repair_stray_i: bool = True
    """Training only: turn a stray I-X (no B-X before it) into B-X. Gold data for evaluation keeps them."""
    epochs: int = 30
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float = 5e-5
    """Learning rate of the text encoder (the paper's single rate)."""
    head_lr: float = 5e-5
    """Learning rate of the new layers and the CRF (the paper uses lr for everything)."""
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    early_stopping_patience: int = 0
    """Stop after this many epochs without a better dev F1 (0: never)."""
    output_dir: str = "runs/bfcl"
    feature_cache: str | None = ".cache/bfcl-features"
    """On-disk cache of frozen image features (None: keep them in memory only)."""
    mixed_precision: str = "no"
    """"no", "fp16" or "bf16" (GPU)."""
    cpu: bool = False
    """Force the CPU even where a GPU is present."""
    max_train_samples: int = 0
    """Train on the first N samples only (0: all); for quick experiments."""
    num_threads: int = 0
    """torch CPU threads (0: torch's default)."""
    progress: bool = True
    log_every_steps: int = 200
    """With progress=false, log the running loss every this many training steps (0: per epoch only)."""
    evaluate_test: bool = True
    """Score the selected model on the test split at the end."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(value: str) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _typed(cls, raw: dict[str, Any], where: str) -> dict[str, Any]:
    """YAML reads "1e-4" as a string; convert values to the type of each field's default."""
    out = dict(raw)
    defaults = {f.name: getattr(cls(), f.name) if f.name != "labels" else None for f in fields(cls)}
    for name, value in raw.items():
        default = defaults.get(name)
        if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                out[name] = type(default)(float(value)) if isinstance(default, int) and float(value).is_integer() else float(value)
            except ValueError:
                raise ValueError(f"{where}: {name}={value!r} is not a number") from None
    return out


def apply_overrides(raw: dict[str, dict[str, Any]], overrides: list[str]) -> None:
    """``model.d_model=384`` or ``train.epochs=3``; a bare key is looked up in both sections."""
    model_keys = {f.name for f in fields(BFCLConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if "." in key:
            section, name = key.split(".", 1)
        elif key in model_keys and key not in train_keys:
            section, name = "model", key
        elif key in train_keys and key not in model_keys:
            section, name = "train", key
        else:
            raise ValueError(f"--set {key}: unknown setting (use model.<name> or train.<name>)")
        valid = model_keys if section == "model" else train_keys if section == "train" else None
        if valid is None or name not in valid:
            raise ValueError(f"--set {key}: unknown setting {name!r} in section {section!r}")
        raw.setdefault(section, {})[name] = _coerce(value)


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> tuple[BFCLConfig, TrainConfig]:
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        text = p.read_text(encoding="utf-8")
        raw = (json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)) or {}
        unknown = set(raw) - {"model", "train"}
        if unknown:
            raise ValueError(f"{p}: unknown section(s) {sorted(unknown)}; expected 'model' and 'train'")
    apply_overrides(raw, overrides or [])
    train_raw = raw.get("train") or {}
    unknown = set(train_raw) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"{path}: unknown train setting(s): {', '.join(sorted(unknown))}")
    model_raw = _typed(BFCLConfig, raw.get("model") or {}, f"{path or '--set'} (model)")
    return BFCLConfig.from_dict(model_raw), TrainConfig(**_typed(TrainConfig, train_raw, f"{path or '--set'} (train)"))
