"""bfcl: multimodal named entity recognition with Bottleneck Fusion and Contrastive Learning.

    import bfcl
    model = bfcl.load("runs/demo/best")
    model.predict("Kolo is back home", image="photo.jpg").entities
"""

from __future__ import annotations

from bfcl._version import __version__

__all__ = ["load", "BFCL", "BFCLConfig", "Predictor", "__version__"]


def __getattr__(name: str):
    # lazy: `import bfcl` and `bfcl --help` stay fast; torch loads on first use
    if name == "load":
        from bfcl.inference.predictor import load

        return load
    if name == "Predictor":
        from bfcl.inference.predictor import Predictor

        return Predictor
    if name == "BFCL":
        from bfcl.model.modeling import BFCL

        return BFCL
    if name == "BFCLConfig":
        from bfcl.model.configuration import BFCLConfig

        return BFCLConfig
    raise AttributeError(f"module 'bfcl' has no attribute {name!r}")
