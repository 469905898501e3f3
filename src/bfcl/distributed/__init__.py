"""Prediction beyond one process: a JSONL file of posts predicted by the workers of a cluster.

The engine is Ray (``pip install "bfcl[ray]"``): ``bfcl predict --engine ray`` or
:func:`predict_ray`. Ray is imported only when an engine is used, so ``import bfcl`` and
the local ``bfcl predict`` never need it. See docs/DISTRIBUTED.md.
"""

from __future__ import annotations

__all__ = ["EngineError", "RayPool", "RayRunReport", "predict_ray", "start_local_cluster"]


def __getattr__(name: str):
    # lazy: importing this package does not import Ray (or torch)
    if name in __all__:
        from bfcl.distributed import ray_engine

        return getattr(ray_engine, name)
    raise AttributeError(f"module 'bfcl.distributed' has no attribute {name!r}")
