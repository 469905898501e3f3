"""Training loop on accelerate: the same code runs on a CPU, on one GPU with mixed
precision, and on several processes under ``torchrun`` / ``accelerate launch``.

AdamW with linear warm-up and decay, gradient clipping, model selection on dev
F1, optional early stopping, a JSONL log per epoch, resumable from ``last/``.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from bfcl.data.labels import OTHER_TO_MISC, LabelSet, map_types
from bfcl.data.types import Sample
from bfcl.model.configuration import BFCLConfig
from bfcl.training.config import TrainConfig

log = logging.getLogger("bfcl.train")


@dataclass
class Split:
    samples: list[Sample]
    images: list[Tensor | None]
    """Frozen-CNN grid per post, or None (no image / no image encoder)."""


def read_split(path: str | Path, map_other: bool) -> list[Sample]:
    from bfcl.data.umt import read_samples

    samples = read_samples(path)
    if map_other:
        for s in samples:
            if s.labels is not None:
                s.labels = map_types(s.labels, OTHER_TO_MISC)
    return samples


def split_files(tc: TrainConfig) -> dict[str, Path | None]:
    from bfcl.data.umt import find_split

    files: dict[str, Path | None] = {}
    for split, explicit in (("train", tc.train_file), ("dev", tc.dev_file), ("test", tc.test_file)):
        if explicit:
            files[split] = Path(explicit)
        elif tc.data_dir:
            try:
                files[split] = find_split(tc.data_dir, "valid" if split == "dev" else split)
            except FileNotFoundError:
                files[split] = None
        else:
            files[split] = None
    if files["train"] is None:
        raise ValueError("no training data: set train.data_dir or train.train_file")
    return files


def image_features(
    samples: Sequence[Sample], images_dir: str | None, extensions: Sequence[str], cache, on_error: str = "none"
) -> list[Tensor | None]:
    """The frozen encoder's grid per post, through the feature cache; None where there is no image."""
    if cache is None or images_dir is None:
        return [None] * len(samples)
    from bfcl.data.umt import image_paths

    paths = image_paths(samples, images_dir, extensions)
    missing = sum(p is None for p in paths)
    if missing:
        log.info("%d of %d posts have no image file in %s: they get an image mask", missing, len(paths), images_dir)
    return cache.encode_images(paths, on_error=on_error)


def build_feature_cache(model_cfg: BFCLConfig, tc: TrainConfig):
    """The frozen image encoder behind a content-keyed feature cache; None for text-only runs."""
    if not model_cfg.uses_image:
        return None
    from bfcl.encoders.cache import FeatureCache
    from bfcl.encoders.image import build_image_encoder

    encoder = build_image_encoder(model_cfg.image_encoder)
    if encoder is None:
        return None
    model_cfg.image_dim = encoder.feature_dim
    model_cfg.num_regions = encoder.num_regions
    import tempfile

    root = Path(tc.feature_cache) if tc.feature_cache else Path(tempfile.mkdtemp(prefix="bfcl-features-"))
    return FeatureCache(root, encoder)


def evaluate_posts(model, split: Split, batch_size: int, device, progress: bool = False) -> dict[str, Any]:
    from bfcl.inference.runner import predict_labels
    from bfcl.metrics import entity_scores

    preds = predict_labels(model, split.samples, split.images, batch_size=batch_size, device=device)
    gold = [s.labels for s in split.samples]
    return {**entity_scores(gold, preds), "predictions": preds}


def seed_everything(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)
    random.seed(seed)


def train(model_cfg: BFCLConfig, tc: TrainConfig, *, resume: bool = False, command: str = "") -> dict[str, Any]:
    """Train, select on dev F1, and return a summary (also written to output_dir/summary.json)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from bfcl.data.alignment import WordAligner
    from bfcl.data.batching import collate, make_items
    from bfcl.model.modeling import BFCL, build_model

    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    from accelerate.utils import DistributedDataParallelKwargs

    # a batch without images leaves the contrastive heads unused: DDP must allow that
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, cpu=tc.cpu, kwargs_handlers=[ddp])
    seed_everything(tc.seed)
    out_dir = Path(tc.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    files = split_files(tc)
    train_samples = read_split(files["train"], tc.map_other_to_misc)
    if tc.max_train_samples:
        train_samples = train_samples[: tc.max_train_samples]
    labels = LabelSet.from_samples(train_samples)
    model_cfg.labels = list(labels.labels)
    cache = build_feature_cache(model_cfg, tc)
    t0 = time.perf_counter()
    splits = {"train": Split(train_samples, image_features(train_samples, tc.images_dir, tc.image_extensions, cache, tc.image_on_error))}
    for name in ("dev", "test"):
        if files[name] is not None:
            s = read_split(files[name], tc.map_other_to_misc)
            splits[name] = Split(s, image_features(s, tc.images_dir, tc.image_extensions, cache, tc.image_on_error))
    feature_seconds = time.perf_counter() - t0

    model = build_model(model_cfg)
    aligner = WordAligner(model.tokenizer, max_length=model_cfg.max_length)
    items = make_items(splits["train"].samples, aligner, labels, splits["train"].images, repair=tc.repair_stray_i)
    pad = model.tokenizer.pad_token_id or 0
    gen = torch.Generator().manual_seed(tc.seed)
    loader = torch.utils.data.DataLoader(
        items, batch_size=tc.batch_size, shuffle=True, generator=gen, collate_fn=lambda b: collate(b, pad)
    )
    optimizer = torch.optim.AdamW(model.parameter_groups(tc.lr, tc.head_lr, tc.weight_decay))
    steps = tc.epochs * math.ceil(len(loader) / accelerator.num_processes)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(tc.warmup_ratio * steps), steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    history: list[dict[str, Any]] = []
    start_epoch, best_f1, best_epoch, train_seconds = 0, -1.0, -1, 0.0
    last_dir, best_dir = out_dir / "last", out_dir / "best"
    if resume:
        if not (last_dir / "trainer_state.json").is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint in {last_dir}")
        from safetensors.torch import load_file

        from bfcl.training.checkpoint import load_training_state

        accelerator.unwrap_model(model).load_state_dict(load_file(str(last_dir / "model.safetensors")))
        st = load_training_state(last_dir, optimizer, scheduler)
        start_epoch, best_f1, best_epoch = st["epoch"] + 1, st["best_f1"], st["best_epoch"]
        history, train_seconds = st["history"], st["train_seconds"]
        log.info("resumed from %s at epoch %d", last_dir, start_epoch)

    log_path = out_dir / "log.jsonl"
    patience = 0
    for epoch in range(start_epoch, tc.epochs):
        model.train()
        gen.manual_seed(tc.seed + epoch)
        if hasattr(loader, "set_epoch"):  # accelerate may swap in a seedable sampler: pin its epoch too
            loader.set_epoch(epoch)
        t_epoch = time.perf_counter()
        total, count, parts = 0.0, 0, {"ner": 0.0, "vt": 0.0, "tv": 0.0}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not (tc.progress and accelerator.is_local_main_process))
        for batch in bar:
            out = model(**batch)
            accelerator.backward(out.loss)
            if tc.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            total += float(out.loss.detach())
            parts["ner"] += float(out.ner_loss.detach())
            if out.loss_vt is not None:
                parts["vt"] += float(out.loss_vt.detach())
                parts["tv"] += float(out.loss_tv.detach())
            count += 1
            bar.set_postfix(loss=f"{total / count:.4f}")
        epoch_seconds = time.perf_counter() - t_epoch
        train_seconds += epoch_seconds
        record: dict[str, Any] = {
            "epoch": epoch + 1, "loss": total / max(count, 1),
            **{f"loss_{k}": v / max(count, 1) for k, v in parts.items()},
            "seconds": round(epoch_seconds, 2), "samples_per_second": round(len(items) / epoch_seconds, 2),
        }
        if accelerator.is_main_process:
            raw = accelerator.unwrap_model(model)
            improved = True
            if "dev" in splits:
                dev = evaluate_posts(raw, splits["dev"], tc.eval_batch_size, accelerator.device)
                record["dev"] = {k: dev[k] for k in ("precision", "recall", "f1", "per_type")}
                improved = dev["f1"] > best_f1
            if improved:
                best_f1, best_epoch = record.get("dev", {}).get("f1", 0.0), epoch + 1
                raw.save_pretrained(best_dir, extra={"train": tc.to_dict(), "epoch": epoch + 1})
            record["best_epoch"] = best_epoch
            history.append(record)
            with log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            _print_epoch(record)
            from bfcl.training.checkpoint import save_training_state

            raw.save_pretrained(last_dir, extra={"train": tc.to_dict(), "epoch": epoch + 1})
            save_training_state(
                last_dir, optimizer, scheduler,
                {"epoch": epoch, "best_f1": best_f1, "best_epoch": best_epoch, "history": history, "train_seconds": train_seconds},
            )
            patience = 0 if improved else patience + 1
        accelerator.wait_for_everyone()
        if tc.early_stopping_patience and patience >= tc.early_stopping_patience:
            log.info("early stopping after %d epochs without a better dev F1", patience)
            break

    summary: dict[str, Any] = {
        "best_epoch": best_epoch, "epochs": len(history), "train_seconds": round(train_seconds, 1),
        "feature_seconds": round(feature_seconds, 1), "machine": machine_description(), "command": command,
        "config": {"model": model_cfg.to_dict(), "train": tc.to_dict()}, "seed": tc.seed,
    }
    if accelerator.is_main_process:
        best = BFCL.from_pretrained(best_dir, device=accelerator.device)
        for name in ("dev", "test"):
            if name in splits and (name == "dev" or tc.evaluate_test):
                r = evaluate_posts(best, splits[name], tc.eval_batch_size, accelerator.device)
                summary[name] = {k: r[k] for k in ("precision", "recall", "f1", "per_type")}
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _print_epoch(r: dict[str, Any]) -> None:
    dev = r.get("dev")
    msg = f"epoch {r['epoch']}: loss {r['loss']:.4f} ({r['samples_per_second']} windows/s)"
    if dev:
        msg += f"  dev P {dev['precision']:.4f} R {dev['recall']:.4f} F1 {dev['f1']:.4f}"
    print(msg, flush=True)


def machine_description() -> str:
    import os

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {os.cpu_count()} CPU cores, {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads"
