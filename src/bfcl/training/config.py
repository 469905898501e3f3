"""Run configuration: one YAML/JSON file with a ``model`` section (``BFCLConfig``)
and a ``train`` section (``TrainConfig``), overridable with ``--set key=value``."""

from __future__ import annotations

import copy
import difflib
import json
import logging
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field

from bfcl.errors import ConfigError
from bfcl.model.configuration import BFCLConfig
from bfcl.validation import (
    Float, Int, NonNegFloat, NonNegInt, PathStr, PosFloat, PosInt, accepts_str, check_fields, field_default,
    is_list, validate_value,
)

log = logging.getLogger(__name__)


def _extension(value: str) -> str:
    if not value.startswith(".") or len(value) < 2 or any(c in value for c in "/\\ \t"):
        raise ValueError("an image extension is a dot and a suffix, e.g. '.png'")
    return value


Extension = Annotated[str, AfterValidator(_extension)]


@dataclass
class TrainConfig:
    data_dir: PathStr | None = None
    """Folder with train/valid(dev)/test files in UMT or CoNLL format."""
    train_file: PathStr | None = None
    dev_file: PathStr | None = None
    test_file: PathStr | None = None
    """Explicit files override those found in ``data_dir``."""
    images_dir: PathStr | None = None
    """Folder of ``<IMGID><ext>`` images; a post whose image is absent gets an image mask."""
    image_extensions: Annotated[list[Extension], Field(min_length=1)] = field(default_factory=lambda: [".jpg"])
    """Tried in order for each image id (``--set train.image_extensions=.png,.jpg``)."""
    image_on_error: Literal["none", "error"] = "none"
    """A missing/broken image: "none" (logged, the post is treated as having no image) or "error"."""
    map_other_to_misc: bool = True
    """Twitter-2015 calls MISC "OTHER"; map it so reports line up with the paper."""
    repair_stray_i: bool = True
    """Training only: turn a stray I-X (no B-X before it) into B-X. Gold data for evaluation keeps them."""
    epochs: PosInt = 30
    batch_size: PosInt = 16
    eval_batch_size: PosInt = 64
    lr: NonNegFloat = 5e-5
    """Learning rate of the text encoder (the paper's single rate); 0 freezes it."""
    head_lr: NonNegFloat = 5e-5
    """Learning rate of the new layers and the CRF (the paper uses lr for everything)."""
    weight_decay: NonNegFloat = 0.01
    warmup_ratio: Annotated[Float, Field(ge=0.0, le=1.0)] = 0.1
    max_grad_norm: NonNegFloat = 1.0
    """0 disables clipping."""
    seed: Annotated[Int, Field(ge=0, lt=2**32)] = 42
    early_stopping_patience: NonNegInt = 0
    """Stop after this many epochs without a better dev F1 (0: never)."""
    output_dir: PathStr = "runs/bfcl"
    feature_cache: PathStr | None = ".cache/bfcl-features"
    """On-disk cache of frozen image features (None: keep them in memory only)."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """"no", "fp16" or "bf16" (GPU)."""
    cpu: bool = False
    """Force the CPU even where a GPU is present."""
    max_train_samples: NonNegInt = 0
    """Train on the first N samples only (0: all); for quick experiments."""
    num_threads: NonNegInt = 0
    """torch CPU threads. 0 (auto): one per free core, at most torch's default, re-checked during
    training so that other jobs arriving on the machine do not stall it (``bfcl.threads``)."""
    progress: bool = True
    log_every_steps: int = 200
    """With progress=false, log the running loss every this many training steps (0: per epoch only)."""
    evaluate_test: bool = True
    """Score the selected model on the test split at the end."""
    strict_data: bool = False
    """Refuse a data file with lines the reader otherwise skips with a warning
    (an empty token, a line holding a single space)."""

    def __post_init__(self) -> None:
        check_fields(self, "train")

    def ignored_changes(self, keys: Any, model: BFCLConfig) -> list[tuple[str, str]]:
        """``(name, reason)`` for each setting in ``keys`` that differs from its default but is never read."""
        inactive: dict[str, str] = {}
        # feature_cache is not checked: it only says where frozen image features are kept, never
        # changes a result, and a shared YAML (or the harness's text-only config) may set it for
        # every run. A model without images simply has nothing to cache.
        if not model.uses_image:
            why = "multimodal=false" if not model.multimodal else "image_encoder='none'"
            for name in ("images_dir", "image_extensions", "image_on_error"):
                inactive[name] = f"the model reads no images ({why})"
        elif self.images_dir is None:
            for name in ("image_extensions", "image_on_error"):
                inactive[name] = "train.images_dir is not set"
        by_name = {f.name: f for f in fields(self)}
        return [
            (name, inactive[name])
            for name in keys
            if name in inactive and getattr(self, name) != field_default(by_name[name])
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SECTIONS: dict[str, type] = {"model": BFCLConfig, "train": TrainConfig}


class _Yaml12Loader(yaml.SafeLoader):
    """YAML with only ``true``/``false`` as booleans (YAML 1.2).

    YAML 1.1 reads ``no``, ``yes``, ``on`` and ``off`` as booleans, which turns
    ``mixed_precision: no`` into ``False``; here they stay strings, and the
    boolean settings still accept them (pydantic reads "yes"/"no" as bools).
    """


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _unknown(section: str, name: str) -> str:
    known = [f.name for f in fields(SECTIONS[section])]
    close = difflib.get_close_matches(name, known, n=1)
    return f"unknown setting {section}.{name}" + (f" (did you mean {section}.{close[0]}?)" if close else "")


def _override_value(cls: type, name: str, text: str) -> Any:
    """The value of ``--set key=TEXT``: YAML syntax, except that a text setting keeps TEXT as typed."""
    try:
        value = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError:
        return text
    if accepts_str(cls, name) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return text.strip()  # output_dir=2024 or text_encoder=1e-4 are names, not numbers
    return value


def _normalise(cls: type, name: str, value: Any) -> Any:
    """A list setting given one string: ``.png`` is ``['.png']``, ``.png,.jpg`` two items;
    a text setting given a number (``output_dir: 2024``) keeps it as text."""
    if is_list(cls, name) and isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if accepts_str(cls, name) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def apply_overrides(raw: dict[str, dict[str, Any]], overrides: list[str], origins: dict | None = None) -> None:
    """``model.d_model=384`` or ``train.epochs=3``; a bare key is looked up in both sections."""
    model_keys = {f.name for f in fields(BFCLConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if "." in key:
            section, name = key.split(".", 1)
        elif key in model_keys and key not in train_keys:
            section, name = "model", key
        elif key in train_keys and key not in model_keys:
            section, name = "train", key
        else:
            raise ConfigError(f"--set {key}: unknown setting (use model.<name> or train.<name>)")
        if section not in SECTIONS:
            raise ConfigError(f"--set {key}: unknown section {section!r} (use model.<name> or train.<name>)")
        if name not in {f.name for f in fields(SECTIONS[section])}:
            raise ConfigError(f"--set {key}: {_unknown(section, name)}")
        raw.setdefault(section, {})[name] = _override_value(SECTIONS[section], name, value)
        if origins is not None:
            origins[(section, name)] = "--set"


def _read_file(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if p.suffix == ".json" else yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping with 'model' and 'train' sections, got {type(raw).__name__}")
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"{p}: unknown section(s) {sorted(map(str, unknown))}; expected 'model' and 'train'")
    for section, body in raw.items():
        if body is not None and not isinstance(body, dict):
            raise ConfigError(f"{p}: section '{section}' must be a mapping of settings, got {type(body).__name__}")
        for name in body or {}:
            if name not in {f.name for f in fields(SECTIONS[section])}:
                raise ConfigError(f"{p}: {_unknown(section, name)}")
    return {section: dict(body or {}) for section, body in raw.items()}


def _build(section: str, values: dict[str, Any], origins: dict, where: str):
    cls = SECTIONS[section]
    checked = {}
    for name, value in values.items():
        origin = origins.get((section, name), where)
        checked[name] = validate_value(cls, name, _normalise(cls, name, value), f"{origin}: {section}.{name}")
    try:
        return cls(**checked)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> tuple[BFCLConfig, TrainConfig]:
    """Both sections, every value checked against its field's type before anything runs.

    Raises ``ConfigError`` naming the file or ``--set``, the key, the value and
    what was expected; a setting the chosen architecture would ignore is refused too.

    One exception, so that an ablation is a ``--set`` on a shipped config
    (``-c configs/offline-twitter2017.yaml --set model.fusion=none``): a file's setting that
    the file itself uses, and that only a ``--set`` made inert (num_layers once fusion is
    "none"), is kept, unused, with a warning naming it. A file whose own settings contradict
    each other, and an inert ``--set``, are still refused.
    """
    raw: dict[str, dict[str, Any]] = {}
    origins: dict[tuple[str, str], str] = {}
    if path is not None:
        raw = _read_file(Path(path))
        origins = {(section, name): str(path) for section, body in raw.items() for name in body}
    file_raw = copy.deepcopy(raw)
    apply_overrides(raw, overrides or [], origins)
    where = str(path) if path is not None else "--set"
    if path is not None and overrides:
        where = f"{path} with --set"
    model, train, ignored = _build_both(raw, origins, where)
    made_inert = _made_inert_by_overrides(ignored, file_raw, origins, path) if ignored and overrides else []
    for item in made_inert:
        section, name, why = item
        log.warning("%s: %s.%s=%r has no effect in this run: %s (changed by --set)",
                    path, section, name, raw[section][name], why)
        ignored.remove(item)
    if ignored:
        raise ConfigError(_ignored_message(ignored, {"model": model, "train": train}, origins, where))
    return model, train


def _build_both(raw: dict, origins: dict, where: str) -> tuple[BFCLConfig, TrainConfig, list[tuple[str, str, str]]]:
    """Both sections, and ``(section, name, why)`` for each set value the result never reads."""
    model = _build("model", raw.get("model", {}), origins, where)
    train = _build("train", raw.get("train", {}), origins, where)
    ignored = [("model", n, why) for n, why in model.ignored_changes(raw.get("model", {}))]
    ignored += [("train", n, why) for n, why in train.ignored_changes(raw.get("train", {}), model)]
    return model, train, ignored


def _made_inert_by_overrides(ignored: list, file_raw: dict, origins: dict, path) -> list[tuple[str, str, str]]:
    """The ignored settings that come from the file and that the file's own configuration reads.
    Empty when the file alone does not make a valid configuration (nothing to compare with)."""
    try:
        _, _, file_ignored = _build_both(file_raw, {}, str(path))
    except ConfigError:
        return []
    inert_in_file = {(section, name) for section, name, _ in file_ignored}
    return [
        (section, name, why) for section, name, why in ignored
        if origins.get((section, name)) == str(path) and (section, name) not in inert_in_file
    ]


def _ignored_message(ignored: list[tuple[str, str, str]], cfgs: dict, origins: dict, where: str) -> str:
    """One line: the settings that would be ignored, grouped by why, and where they were set."""
    by_reason: dict[str, list[str]] = {}
    sources: dict[str, None] = {}
    for section, name, why in ignored:
        by_reason.setdefault(why, []).append(f"{section}.{name}={getattr(cfgs[section], name)!r}")
        sources[origins.get((section, name), where)] = None
    parts = [
        f"{', '.join(keys)} ha{'s' if len(keys) == 1 else 've'} no effect: {why}" for why, keys in by_reason.items()
    ]
    return f"{' and '.join(sources)}: " + "; ".join(parts) + ". Remove the setting or change the one that disables it."
