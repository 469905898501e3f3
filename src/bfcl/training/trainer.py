"""Training loop on accelerate: the same code runs on a CPU, on one GPU with mixed
precision, and on several processes under ``torchrun`` / ``accelerate launch``.

AdamW with linear warm-up and decay, gradient clipping, model selection on dev
F1, optional early stopping (decided on the main rank and broadcast, so every
rank stops together), a JSONL log per epoch, resumable from ``last/``.

``best/`` and ``last/`` are saved atomically with a manifest
(``bfcl.model.checkpoint_files``): a kill at any moment leaves the last complete
epoch to resume from. A fresh run in a used output folder moves the old
``log.jsonl`` to ``log.previous-N.jsonl`` and removes the old ``last/``; a
resumed run rewrites ``log.jsonl`` from the checkpoint's history. Each
checkpoint records what the model was trained on (``training_data``: posts,
posts with an image) and the tokenisation style inferred from the training
tokens (``model.tweet_style``, ``tokenisation``).
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

from bfcl.data.labels import LabelSet
from bfcl.data.splits import check_split_files, read_split
from bfcl.data.types import Sample
from bfcl.errors import ConfigError
from bfcl.model.configuration import BFCLConfig
from bfcl.training.config import TrainConfig

log = logging.getLogger("bfcl.train")


@dataclass
class Split:
    samples: list[Sample]
    images: list[Tensor | None]
    """Frozen-CNN grid per post, or None (no image / no image encoder)."""


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


MOSTLY_MISSING = 0.5
"""Below this fraction of training posts with an image, a set ``images_dir`` is reported loudly."""


def image_coverage(splits: dict[str, "Split"], tc: TrainConfig, cache) -> dict[str, dict[str, int]]:
    """Log, per split, how many posts got an image feature, and warn when most are missing."""
    cover = {name: {"posts": len(sp.samples), "with_image": sum(f is not None for f in sp.images)} for name, sp in splits.items()}
    if cache is None:
        log.info("image coverage: none (the model reads no images)")
        return cover
    for name, c in cover.items():
        log.info("image coverage, %s: %d of %d posts have an image (%.1f%%)",
                 name, c["with_image"], c["posts"], 100.0 * c["with_image"] / max(c["posts"], 1))
    train = cover["train"]
    if tc.images_dir is None:
        log.warning("train.images_dir is not set: no post has an image, so the image side of this multimodal "
                    "model gets no training, and the saved model will ignore images at prediction")
    elif train["with_image"] < MOSTLY_MISSING * train["posts"]:
        log.warning("!!! only %d of %d training posts (%.1f%%) have a usable image in images_dir=%s "
                    "(extensions %s): most images are missing. Check images_dir and image_extensions; "
                    "posts without an image train text-only.", train["with_image"], train["posts"],
                    100.0 * train["with_image"] / max(train["posts"], 1), tc.images_dir, list(tc.image_extensions))
    return cover


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


def choose_tweet_style(model_cfg: BFCLConfig, samples: Sequence[Sample]) -> dict[str, Any]:
    """Infer the raw-text tokenisation style from the training tokens (``tweet_style="auto"``)
    or check a configured one against them; measure how often it gives the training
    sentences back. The style is recorded in the model config, hence in the checkpoint."""
    from bfcl.inference.tokenstyle import agreement_summary, infer_style

    sentences = [s.tokens for s in samples]
    report = infer_style(sentences)
    if model_cfg.tweet_style == "auto":
        model_cfg.tweet_style = report.style
        log.info("tweet_style: %s, inferred from the training tokens (splits %s)", report.style, report.decided)
    elif model_cfg.tweet_style != report.style:
        log.warning("tweet_style=%s is set, but the training tokens look like %s (splits %s; %s handles %s "
                    "the other way); set model.tweet_style=auto to use the inferred style",
                    model_cfg.tweet_style, report.style, report.decided, model_cfg.tweet_style,
                    ", ".join(report.mismatches[model_cfg.tweet_style]) or "nothing")
    return {"style": model_cfg.tweet_style, "inferred": report.style, "splits": report.decided,
            "agreement": agreement_summary(sentences, model_cfg.tweet_style)}


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


def prepare_fresh_output(out_dir: Path) -> None:
    """A fresh run in a used output folder: keep the old log as ``log.previous-N.jsonl`` and
    drop the old ``last/`` (an early kill must not let ``--resume`` continue the old run)."""
    from bfcl.model.checkpoint_files import previous_path, recover_interrupted_save, remove_checkpoint

    log_path = out_dir / "log.jsonl"
    if log_path.exists():
        n = 1
        while (out_dir / f"log.previous-{n}.jsonl").exists():
            n += 1
        log_path.rename(out_dir / f"log.previous-{n}.jsonl")
        log.warning("%s exists from an earlier run: moved to log.previous-%d.jsonl (use --resume to continue a run)",
                    log_path, n)
    last = out_dir / "last"
    recover_interrupted_save(last)  # also clears a killed save's temporary folders
    if last.exists():
        remove_checkpoint(last)
        log.warning("%s from an earlier run was removed: this run starts fresh (use --resume to continue a run)", last)
    recover_interrupted_save(out_dir / "best")
    remove_checkpoint(previous_path(out_dir / "best"))


def _broadcast_flag(flag: bool) -> bool:
    """The main rank's decision, on every rank (so all leave the epoch loop together)."""
    from accelerate.utils import broadcast_object_list

    box = [bool(flag)]
    broadcast_object_list(box, from_process=0)
    return bool(box[0])


def train(model_cfg: BFCLConfig, tc: TrainConfig, *, resume: bool = False, command: str = "") -> dict[str, Any]:
    """Train, select on dev F1, and return a summary (also written to output_dir/summary.json)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from bfcl.data.alignment import WordAligner
    from bfcl.data.batching import collate, make_items
    from bfcl.data.labels import check_bio2
    from bfcl.model.checkpoint_files import atomic_directory, previous_path, remove_checkpoint
    from bfcl.model.modeling import BFCL, build_model, load_checked_state, read_checkpoint_weights
    from bfcl.training.checkpoint import recover_output_dir, resume_point

    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    from accelerate.utils import DistributedDataParallelKwargs

    # a batch without images leaves the contrastive heads unused: DDP must allow that
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, cpu=tc.cpu, kwargs_handlers=[ddp])
    seed_everything(tc.seed)
    out_dir = Path(tc.output_dir)
    if out_dir.exists() and not out_dir.is_dir():  # else mkdir fails late with a bare "File exists"
        raise ConfigError(f"train.output_dir {out_dir} exists and is not a folder")
    if tc.images_dir is not None and not Path(tc.images_dir).is_dir():  # a typo, not "0% of images found"
        what = "is not a folder" if Path(tc.images_dir).exists() else "does not exist"
        raise ConfigError(f"train.images_dir {tc.images_dir} {what}")
    from bfcl.encoders.text import load_tokenizer

    load_tokenizer(model_cfg.text_encoder)  # a wrong text_encoder fails now, not after minutes of image features
    last_dir, best_dir = out_dir / "last", out_dir / "best"
    log_path = out_dir / "log.jsonl"
    # Before any data or model work: resuming needs a complete last/.
    if resume and accelerator.is_main_process:
        recover_output_dir(out_dir)
    accelerator.wait_for_everyone()
    resume_state = resume_point(out_dir) if resume else None

    files = check_split_files(tc.data_dir, tc.train_file, tc.dev_file, tc.test_file, strict=tc.strict_data)
    train_samples = read_split(files["train"], map_other=tc.map_other_to_misc, strict=tc.strict_data, split="train")
    if tc.max_train_samples:
        train_samples = train_samples[: tc.max_train_samples]
    if tc.repair_stray_i:
        stray = sum(len(check_bio2(s.labels)) for s in train_samples if s.labels is not None)
        if stray:
            log.info("repair_stray_i: %d stray I-X label(s) in %s become B-X in the training targets", stray, files["train"])
    labels = LabelSet.from_samples(train_samples)
    model_cfg.labels = list(labels.labels)
    tokenisation = choose_tweet_style(model_cfg, train_samples)
    cache = build_feature_cache(model_cfg, tc)
    t0 = time.perf_counter()
    splits = {"train": Split(train_samples, image_features(train_samples, tc.images_dir, tc.image_extensions, cache, tc.image_on_error))}
    for name in ("dev", "test"):
        if files[name] is not None:
            s = read_split(files[name], map_other=tc.map_other_to_misc, strict=tc.strict_data, split=name)
            splits[name] = Split(s, image_features(s, tc.images_dir, tc.image_extensions, cache, tc.image_on_error))
    feature_seconds = time.perf_counter() - t0
    coverage = image_coverage(splits, tc, cache)
    training_data = {"train_posts": len(train_samples), "train_posts_with_image": coverage["train"]["with_image"]}
    if cache is not None and training_data["train_posts_with_image"] == 0:
        # the saved model will ignore images (its image weights never trained): score it that way
        for sp in splits.values():
            sp.images = [None] * len(sp.samples)

    if accelerator.is_main_process:  # the data is good: now the folder may be prepared
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            prepare_fresh_output(out_dir)
    accelerator.wait_for_everyone()

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
    if resume_state is not None:
        from bfcl.training.checkpoint import load_training_state

        load_checked_state(accelerator.unwrap_model(model), read_checkpoint_weights(last_dir), last_dir / "model.safetensors")
        st = load_training_state(last_dir, optimizer, scheduler)
        start_epoch, best_f1, best_epoch = st["epoch"] + 1, st["best_f1"], st["best_epoch"]
        history, train_seconds = st["history"], st["train_seconds"]
        if accelerator.is_main_process:  # the log is the checkpoint's history: no epoch twice
            log_path.write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
        log.info("resumed from %s at epoch %d", last_dir, start_epoch + 1)

    extra = {"train": tc.to_dict(), "training_data": training_data, "tokenisation": tokenisation}
    patience = 0
    for k in range(len(history) - 1, -1, -1):  # epochs since the best, as the killed run counted them
        if history[k].get("epoch") == best_epoch:
            break
        patience += 1
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
            if not tc.progress and tc.log_every_steps and count % tc.log_every_steps == 0 and accelerator.is_main_process:
                log.info("epoch %d/%d step %d/%d: loss %.4f (%.1f windows/s)", epoch + 1, tc.epochs, count, len(loader),
                         total / count, count * tc.batch_size / max(time.perf_counter() - t_epoch, 1e-9))
        epoch_seconds = time.perf_counter() - t_epoch
        train_seconds += epoch_seconds
        record: dict[str, Any] = {
            "epoch": epoch + 1, "loss": total / max(count, 1),
            **{f"loss_{k}": v / max(count, 1) for k, v in parts.items()},
            "seconds": round(epoch_seconds, 2), "samples_per_second": round(len(items) / epoch_seconds, 2),
        }
        stop = False
        if accelerator.is_main_process:
            raw = accelerator.unwrap_model(model)
            improved = True
            if "dev" in splits:
                dev = evaluate_posts(raw, splits["dev"], tc.eval_batch_size, accelerator.device)
                record["dev"] = {k: dev[k] for k in ("precision", "recall", "f1", "per_type")}
                improved = dev["f1"] > best_f1
            saved = {**extra, "epoch": epoch + 1}
            if improved:
                best_f1, best_epoch = record.get("dev", {}).get("f1", 0.0), epoch + 1
                # the previous best stays beside best/ until last/ records this epoch
                with atomic_directory(best_dir, keep_previous=True) as tmp:
                    raw.write_checkpoint_files(tmp, saved)
            record["best_epoch"] = best_epoch
            history.append(record)
            patience = 0 if improved else patience + 1
            from bfcl.training.checkpoint import save_training_state

            with atomic_directory(last_dir) as tmp:
                raw.write_checkpoint_files(tmp, saved)
                save_training_state(
                    tmp, optimizer, scheduler,
                    {"epoch": epoch, "best_f1": best_f1, "best_epoch": best_epoch, "history": history, "train_seconds": train_seconds},
                )
            remove_checkpoint(previous_path(best_dir))
            with log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            _print_epoch(record)
            stop = bool(tc.early_stopping_patience) and patience >= tc.early_stopping_patience
            if stop:
                log.info("early stopping after %d epochs without a better dev F1", patience)
        # decided on the main rank only, obeyed by all: a rank that kept going would hang in DDP
        if _broadcast_flag(stop):
            break

    summary: dict[str, Any] = {
        "best_epoch": best_epoch, "epochs": len(history), "train_seconds": round(train_seconds, 1),
        "feature_seconds": round(feature_seconds, 1), "machine": machine_description(), "command": command,
        "config": {"model": model_cfg.to_dict(), "train": tc.to_dict()}, "seed": tc.seed,
        "training_data": training_data, "image_coverage": coverage, "tokenisation": tokenisation,
    }
    if accelerator.is_main_process:
        agree = tokenisation["agreement"]
        log.info("tokenisation: style %s (inferred %s) gives back %.2f%% of the %d training sentences joined, "
                 "%.2f%% raw-like", tokenisation["style"], tokenisation["inferred"], 100 * agree["joined"],
                 agree["sentences"], 100 * agree["raw_like"])
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
