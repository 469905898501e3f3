"""Resumable training state without pickle: optimizer tensors and RNG states in
safetensors, everything else (step counts, scheduler, history) in JSON.

``last/`` holds the model files and this state, written together by
``checkpoint_files.atomic_directory``, so it is always one complete epoch.
Before resuming, :func:`recover_output_dir` finishes or undoes a save that a
kill interrupted, and :func:`resume_point` checks ``last/`` against its
manifest and says clearly when there is nothing to resume.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bfcl.errors import CheckpointError
from bfcl.model.checkpoint_files import (
    previous_path,
    recover_interrupted_save,
    remove_checkpoint,
    verify_checkpoint,
)

OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "trainer_state.json"

log = logging.getLogger("bfcl.train")


def save_training_state(path: Path, optimizer: torch.optim.Optimizer, scheduler, state: dict[str, Any]) -> None:
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


def read_state(path: Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint folder; CheckpointError naming it when unusable."""
    f = path / STATE_NAME
    if not f.is_file():
        raise CheckpointError(f"{f}: missing")
    try:
        payload = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from None
    need = ("epoch", "best_f1", "best_epoch", "history", "train_seconds", "python_random", "optimizer")
    missing = [k for k in need if k not in payload] if isinstance(payload, dict) else list(need)
    if missing:
        raise CheckpointError(f"{f}: missing key(s) {', '.join(missing)}")
    return payload


def load_training_state(path: Path, optimizer: torch.optim.Optimizer, scheduler) -> dict[str, Any]:
    payload = read_state(path)
    try:
        tensors = load_file(str(path / OPTIMIZER_NAME))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path / OPTIMIZER_NAME}: unreadable safetensors file ({e})") from None
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
    try:
        optimizer.load_state_dict({"state": state, "param_groups": payload["optimizer"]["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the optimizer state does not fit this model ({e})") from None
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    return payload


def _config_epoch(path: Path) -> int | None:
    try:
        return int(json.loads((path / "config.json").read_text(encoding="utf-8"))["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recover_output_dir(out_dir: Path) -> None:
    """Main rank, before resuming: finish or undo saves a kill interrupted.

    ``last/`` and ``best/`` are completed from their temporary folders where a kill fell
    between two renames. A ``best/`` newer than ``last/`` (killed after saving a new best
    but before ``last/`` recorded that epoch) is rolled back to the previous best, which
    the trainer keeps until ``last/`` is saved, so the resumed run's history and ``best/``
    agree.
    """
    last, best = out_dir / "last", out_dir / "best"
    recover_interrupted_save(last)
    recover_interrupted_save(best)
    prev = previous_path(best)
    last_epoch = _config_epoch(last) if last.is_dir() else None
    best_epoch = _config_epoch(best) if best.is_dir() else None
    if last_epoch is not None and best_epoch is not None and best_epoch > last_epoch:
        if prev.is_dir():
            remove_checkpoint(best)
            prev.rename(best)
            log.warning("%s: rolled back to the best model of epoch %s (epoch %d was not completed)",
                        best, _config_epoch(best), best_epoch)
        else:
            remove_checkpoint(best)
            log.warning("%s: removed, it came from epoch %d, which was not completed", best, best_epoch)
    remove_checkpoint(prev)


def resume_point(out_dir: Path) -> dict[str, Any]:
    """The verified state of ``out_dir/last`` (its ``trainer_state.json``), or a
    CheckpointError saying why nothing can be resumed. Read-only: every rank may call it."""
    last = out_dir / "last"
    if not (last / STATE_NAME).is_file() and not (last / "config.json").is_file():
        raise CheckpointError(
            f"cannot resume: {last} holds no complete checkpoint (no epoch finished); start without --resume"
        )
    try:
        verified = verify_checkpoint(last)
        state = read_state(last)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume from {last}: {e}") from None
    config_epoch = _config_epoch(last)
    if not verified and config_epoch != int(state["epoch"]) + 1:
        raise CheckpointError(
            f"cannot resume from {last}: config.json is from epoch {config_epoch} but {STATE_NAME} from epoch "
            f"{int(state['epoch']) + 1} (a save was interrupted)"
        )
    return state
