"""Resumable training state without pickle: optimizer tensors and RNG states in
safetensors, everything else (step counts, scheduler, history) in JSON."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "trainer_state.json"


def save_training_state(path: Path, optimizer: torch.optim.Optimizer, scheduler, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st
    save_file(tensors, str(path / OPTIMIZER_NAME))
    payload = {
        **state,
        "python_random": random.getstate(),
        "optimizer": {"param_groups": sd["param_groups"], "scalars": scalars},
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    (path / STATE_NAME).write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def load_training_state(path: Path, optimizer: torch.optim.Optimizer, scheduler) -> dict[str, Any]:
    from safetensors.torch import load_file

    payload = json.loads((path / STATE_NAME).read_text(encoding="utf-8"))
    tensors = load_file(str(path / OPTIMIZER_NAME))
    torch.set_rng_state(tensors.pop("rng.torch"))
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    for k in cuda:
        tensors.pop(k)
    v, internal, gauss = payload["python_random"]
    random.setstate((v, tuple(internal), gauss))
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for idx, sc in payload["optimizer"]["scalars"].items():
        state.setdefault(int(idx), {}).update(sc)
    optimizer.load_state_dict({"state": state, "param_groups": payload["optimizer"]["param_groups"]})
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    return payload
