"""What an encoder's NAME says about its output sizes, without building it.

A config is complete when it is built: ``BFCLConfig`` asks here for ``image_dim`` /
``num_regions`` (from the image encoder's name) and ``text_dim`` (from the text
encoder's transformers config, read offline). Nothing is loaded but small JSON
files, so a config stays cheap to build; where a size cannot be known offline
the answer is 0 and ``build_model`` refuses a multimodal config that needs it.
"""

from __future__ import annotations

import functools
import re

from transformers import AutoConfig

from bfcl.encoders.text import resolve_text_encoder

GRID_REGIONS = 49
"""7 x 7 regions: the last feature map of a 224 x 224 input at stride 32."""

FIXED_IMAGE_DIMS: dict[str, tuple[int, int]] = {
    "none": (0, GRID_REGIONS),
    "efficientnet-lite0": (1280, GRID_REGIONS),
    "resnet152-resmem": (2048, GRID_REGIONS),
}
"""Image encoders whose sizes are fixed by their name: (channels, regions)."""

FIXED_TEXT_DIMS: dict[str, int] = {"mpnet-base": 768, "all-mpnet-base-v2": 768}
"""Text encoders whose folder is only assembled on first use (a 400 MB unzip): their size, known."""

_RESNET_FILE = re.compile(r"resnet(\d+):.+", flags=re.IGNORECASE)


def image_dims(name: str) -> tuple[int, int]:
    """``(image_dim, num_regions)`` of the image encoder called ``name``; image_dim is 0 when the
    name says no image ("none") or its size cannot be read offline (an unknown name, or an
    ``hf:`` model whose config is not on this machine)."""
    key = name.strip().lower()
    if key in FIXED_IMAGE_DIMS:
        return FIXED_IMAGE_DIMS[key]
    if _RESNET_FILE.fullmatch(key):  # bottleneck ResNets (50/101/152/200) end in 2048 channels
        return 2048, GRID_REGIONS
    if key.startswith("hf:"):
        return _hf_image_dims(name.strip()[3:].strip())
    return 0, GRID_REGIONS


@functools.lru_cache(maxsize=32)
def _hf_image_dims(name_or_path: str) -> tuple[int, int]:
    """A transformers ResNet's last stage width, from its config.json (read lazily: only for hf: names)."""
    config = _auto_config(name_or_path)
    sizes = getattr(config, "hidden_sizes", None) if config is not None else None
    return (int(sizes[-1]), GRID_REGIONS) if sizes else (0, GRID_REGIONS)


@functools.lru_cache(maxsize=32)
def text_dim(name: str) -> int:
    """Hidden size of the text encoder called ``name`` (an alias, a folder or a hub name in the
    local cache); 0 when its config cannot be read offline."""
    if name.strip().lower() in FIXED_TEXT_DIMS:
        return FIXED_TEXT_DIMS[name.strip().lower()]
    try:
        resolved = resolve_text_encoder(name)
    except Exception:  # an alias whose optional package is missing (mpnet): unknown here
        return 0
    config = _auto_config(resolved)
    return int(getattr(config, "hidden_size", 0) or 0) if config is not None else 0


def _auto_config(name_or_path: str):
    try:
        return AutoConfig.from_pretrained(name_or_path, local_files_only=True)
    except Exception:  # not on this machine, or not a transformers model: the size stays unknown
        return None
