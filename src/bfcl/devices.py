"""Which torch device a run uses: one parser, so a bad ``--device`` is named the same way everywhere."""

from __future__ import annotations

import torch

from bfcl.errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or cuda when available else cpu; a ConfigError naming it when torch cannot
    parse it or it is not present (rather than torch's error from deep inside ``.to()``)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {str(device)!r}: not a torch device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r}: no CUDA GPU is available here (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {str(device)!r}: MPS is not available here (use cpu)")
    return dev
