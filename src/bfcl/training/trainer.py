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
import os
import platform
import random
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, set_seed
from torch import Tensor
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from bfcl.data.labels import LabelSet, check_bio2
from bfcl.data.splits import check_split_files, read_split
from bfcl.data.types import Sample
from bfcl.data.umt import image_paths
from bfcl.encoders.text import load_tokenizer
from bfcl.encoders.words import build_word_tokenizer, check_word_vectors
from bfcl.errors import ConfigError
from bfcl.threads import LoadFollower, torch_default_threads
from bfcl.model.checkpoint_files import atomic_directory, previous_path, recover_interrupted_save, remove_checkpoint
from bfcl.model.configuration import BFCLConfig
from bfcl.model.modeling import BFCL, build_model, load_checked_state, read_checkpoint_weights
from bfcl.processing import BFCLProcessor, choose_tweet_style, score_posts
from bfcl.training.checkpoint import load_training_state, recover_output_dir, resume_point, save_training_state
from bfcl.training.config import TrainConfig

log = logging.getLogger("bfcl.train")


@dataclass
class Split:
    samples: list[Sample]
    images: list[Tensor | None]
    """Frozen-CNN grid per post, or None (no image / no image encoder)."""


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
    root = Path(tc.feature_cache) if tc.feature_cache else Path(tempfile.mkdtemp(prefix="bfcl-features-"))
    return BFCLProcessor.build_feature_cache(model_cfg, root)


def seed_everything(seed: int) -> None:
    set_seed(seed)
    random.seed(seed)


def prepare_fresh_output(out_dir: Path) -> None:
    """A fresh run in a used output folder: keep the old log as ``log.previous-N.jsonl`` and
    drop the old ``last/`` (an early kill must not let ``--resume`` continue the old run)."""
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
    box = [bool(flag)]
    broadcast_object_list(box, from_process=0)
    return bool(box[0])


@dataclass
class Run:
    """Everything one training run holds between its steps."""

    cfg: BFCLConfig
    tc: TrainConfig
    accelerator: Accelerator
    out_dir: Path
    splits: dict[str, Split]
    processor: BFCLProcessor
    extra: dict[str, Any]
    """Recorded in every checkpoint: the run config, what the model saw, the tokenisation."""
    coverage: dict[str, dict[str, int]]
    feature_seconds: float
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    loader: Any = None
    generator: torch.Generator | None = None
    num_items: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    best_f1: float = -1.0
    best_epoch: int = -1
    train_seconds: float = 0.0
    patience: int = 0
    threads: LoadFollower | None = None
    """train.num_threads=0 (auto): keeps torch's threads at the free cores; None when pinned."""

    @property
    def last_dir(self) -> Path:
        return self.out_dir / "last"

    @property
    def best_dir(self) -> Path:
        return self.out_dir / "best"

    @property
    def log_path(self) -> Path:
        return self.out_dir / "log.jsonl"


def train(model_cfg: BFCLConfig, tc: TrainConfig, *, resume: bool = False, command: str = "") -> dict[str, Any]:
    """Train, select on dev F1, and return a summary (also written to output_dir/summary.json)."""
    run, resume_state = setup(model_cfg, tc, resume)
    build_optimisation(run, resume_state)
    for epoch in range(run.start_epoch, tc.epochs):
        record = train_one_epoch(run, epoch)
        stop = False
        if run.accelerator.is_main_process:
            improved = evaluate_and_select(run, epoch, record)
            save_checkpoints(run, epoch, record, improved)
            stop = bool(tc.early_stopping_patience) and run.patience >= tc.early_stopping_patience
            if stop:
                log.info("early stopping after %d epochs without a better dev F1", run.patience)
        # decided on the main rank only, obeyed by all: a rank that kept going would hang in DDP
        if _broadcast_flag(stop):
            break
    return finish(run, command)


def setup(model_cfg: BFCLConfig, tc: TrainConfig, resume: bool) -> tuple[Run, Any]:
    """Check the settings, read the data, complete the config from it (labels, tweet style),
    encode the images once and prepare the output folder; returns the run and the resume point."""
    threads = None
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    else:  # auto: a thread per free core, at most torch's default, followed while training runs
        threads = LoadFollower.start(most=torch_default_threads())
        log.info("torch threads: %d (auto, at most %d; re-checked while training)", threads.threads, threads.most)
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
    # a wrong text_encoder fails now, not after minutes of image features; text_encoder=words builds
    # its vocabulary from the training split below (its vectors file is checked now)
    if model_cfg.word_level:
        check_word_vectors(model_cfg)
        tokenizer = None
    else:
        tokenizer = load_tokenizer(model_cfg.text_encoder)
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
    cfg = replace(model_cfg, labels=list(LabelSet.from_samples(train_samples).labels))
    style, tokenisation = choose_tweet_style(cfg, train_samples, logger=log)
    cfg = replace(cfg, tweet_style=style)
    if tokenizer is None:  # text_encoder=words
        tokenizer = build_word_tokenizer(cfg, [s.tokens for s in train_samples])
    processor = BFCLProcessor(tokenizer, cfg, feature_cache=build_feature_cache(cfg, tc))
    t0 = time.perf_counter()
    splits = {"train": _read_images(processor, train_samples, tc)}
    for name in ("dev", "test"):
        if files[name] is not None:
            samples = read_split(files[name], map_other=tc.map_other_to_misc, strict=tc.strict_data, split=name)
            splits[name] = _read_images(processor, samples, tc)
    feature_seconds = time.perf_counter() - t0
    coverage = image_coverage(splits, tc, processor.feature_cache)
    training_data = {"train_posts": len(train_samples), "train_posts_with_image": coverage["train"]["with_image"]}
    if processor.feature_cache is not None and training_data["train_posts_with_image"] == 0:
        # the saved model will ignore images (its image weights never trained): score it that way
        for sp in splits.values():
            sp.images = [None] * len(sp.samples)
    # every split's features are in hand: the CNN and the cache's in-memory copies are not needed again
    processor.feature_cache = None

    if accelerator.is_main_process:  # the data is good: now the folder may be prepared
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            prepare_fresh_output(out_dir)
    accelerator.wait_for_everyone()
    extra = {"train": tc.to_dict(), "training_data": training_data, "tokenisation": tokenisation}
    run = Run(cfg, tc, accelerator, out_dir, splits, processor, extra, coverage, feature_seconds)
    run.threads = threads
    return run, resume_state


FEATURE_CHUNK = 256
"""Posts whose image features are read (or encoded) at once while a split is prepared."""


def _read_images(processor: BFCLProcessor, samples: list[Sample], tc: TrainConfig) -> Split:
    """Each post's image features, held in the cache's storage type.

    The cache stores float16 and hands out float32 copies of those same values, so keeping
    them as float16 is exact (collate turns them back into float32) and halves what a split
    holds: Twitter-2015's 8k posts x 49 x 1280 features are 2 GB in float32. Read in chunks,
    so the float32 copies never exist for a whole split at once.
    """
    cache = processor.feature_cache
    if cache is None or tc.images_dir is None:
        return Split(samples, [None] * len(samples))
    paths = image_paths(samples, tc.images_dir, tc.image_extensions)
    missing = sum(p is None for p in paths)
    if missing:
        log.info("%d of %d posts have no image file in %s: they get an image mask", missing, len(paths), tc.images_dir)
    stored = getattr(cache, "dtype", None)  # the values come back rounded through it
    images: list = []
    for k in range(0, len(paths), FEATURE_CHUNK):
        chunk = processor.image_features(paths[k : k + FEATURE_CHUNK], on_error=tc.image_on_error)
        # OCSGA's grids come with object labels (ImageObjects): those stay as the labeler made them
        images.extend(f.to(stored) if isinstance(f, Tensor) and stored is not None else f for f in chunk)
    return Split(samples, images)


def _adamw(groups: list[dict], **kw: Any) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per tensor where torch has that kernel (torch >= 2.4 on CPU and
    CUDA): the same update (equal to the for-loop version within float rounding, ~2e-8 after 50
    steps), several times faster on a CPU, where the for-loop version was a third of a step."""
    try:
        return torch.optim.AdamW(groups, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for these tensors or this torch
        return torch.optim.AdamW(groups, **kw)


def build_optimisation(run: Run, resume_state: Any) -> None:
    """The model, its training batches, AdamW with linear warm-up and decay, all prepared by
    accelerate; on resume, the weights, optimiser, schedule and history of ``last/``."""
    tc, accelerator = run.tc, run.accelerator
    model = build_model(run.cfg, tokenizer=run.processor.tokenizer)
    items = run.processor.windows(
        run.splits["train"].samples, run.splits["train"].images, labels=LabelSet(run.cfg.labels), repair=tc.repair_stray_i
    )
    run.generator = torch.Generator().manual_seed(tc.seed)
    loader = run.processor.train_loader(items, tc.batch_size, run.generator)
    optimizer = _adamw(model.parameter_groups(tc.lr, tc.head_lr, tc.weight_decay))
    steps = tc.epochs * math.ceil(len(loader) / accelerator.num_processes)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(tc.warmup_ratio * steps), steps)
    run.model, run.optimizer, run.loader, run.scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    run.num_items = len(items)
    if resume_state is None:
        return
    load_checked_state(accelerator.unwrap_model(run.model), read_checkpoint_weights(run.last_dir), run.last_dir / "model.safetensors")
    st = load_training_state(run.last_dir, run.optimizer, run.scheduler)
    run.start_epoch, run.best_f1, run.best_epoch = st["epoch"] + 1, st["best_f1"], st["best_epoch"]
    run.history, run.train_seconds = st["history"], st["train_seconds"]
    if accelerator.is_main_process:  # the log is the checkpoint's history: no epoch twice
        run.log_path.write_text("".join(json.dumps(r) + "\n" for r in run.history), encoding="utf-8")
    log.info("resumed from %s at epoch %d", run.last_dir, run.start_epoch + 1)
    for k in range(len(run.history) - 1, -1, -1):  # epochs since the best, as the killed run counted them
        if run.history[k].get("epoch") == run.best_epoch:
            break
        run.patience += 1


def train_one_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """One pass over the shuffled training windows; the epoch's log record (losses, speed)."""
    tc, accelerator, model, loader = run.tc, run.accelerator, run.model, run.loader
    model.train()
    run.generator.manual_seed(tc.seed + epoch)
    if hasattr(loader, "set_epoch"):  # accelerate may swap in a seedable sampler: pin its epoch too
        loader.set_epoch(epoch)
    t_epoch = time.perf_counter()
    total, count, parts = 0.0, 0, {"ner": 0.0, "vt": 0.0, "tv": 0.0}
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not (tc.progress and accelerator.is_local_main_process))
    for batch in bar:
        if run.threads is not None:
            run.threads.check()
        out = model(**batch)
        accelerator.backward(out.loss)
        if tc.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()
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
    run.train_seconds += epoch_seconds
    return {
        "epoch": epoch + 1, "loss": total / max(count, 1),
        **{f"loss_{k}": v / max(count, 1) for k, v in parts.items()},
        "seconds": round(epoch_seconds, 2), "samples_per_second": round(run.num_items / epoch_seconds, 2),
    }


def evaluate_and_select(run: Run, epoch: int, record: dict[str, Any]) -> bool:
    """Score dev (main rank), add it to ``record``, and say whether this epoch is the new best."""
    if "dev" not in run.splits:
        return True
    dev = _score(run, run.accelerator.unwrap_model(run.model), "dev")
    record["dev"] = dev
    return dev["f1"] > run.best_f1


def _score(run: Run, model: BFCL, name: str) -> dict[str, Any]:
    split = run.splits[name]
    r = score_posts(model, split.samples, split.images, processor=run.processor,
                    batch_size=run.tc.eval_batch_size, device=run.accelerator.device)
    return {k: r[k] for k in ("precision", "recall", "f1", "per_type")}


def save_checkpoints(run: Run, epoch: int, record: dict[str, Any], improved: bool) -> None:
    """``best/`` when improved, then ``last/`` with the training state, both atomic; the log line."""
    raw = run.accelerator.unwrap_model(run.model)
    saved = {**run.extra, "epoch": epoch + 1}
    if improved:
        run.best_f1, run.best_epoch = record.get("dev", {}).get("f1", 0.0), epoch + 1
        # the previous best stays beside best/ until last/ records this epoch
        with atomic_directory(run.best_dir, keep_previous=True) as tmp:
            raw.write_checkpoint_files(tmp, saved)
    record["best_epoch"] = run.best_epoch
    run.history.append(record)
    run.patience = 0 if improved else run.patience + 1
    with atomic_directory(run.last_dir) as tmp:
        raw.write_checkpoint_files(tmp, saved)
        save_training_state(
            tmp, run.optimizer, run.scheduler,
            {"epoch": epoch, "best_f1": run.best_f1, "best_epoch": run.best_epoch, "history": run.history,
             "train_seconds": run.train_seconds},
        )
    remove_checkpoint(previous_path(run.best_dir))
    with run.log_path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    _print_epoch(record)


def finish(run: Run, command: str) -> dict[str, Any]:
    """The summary: the selected model re-scored on dev (and test), written to summary.json."""
    tc, tokenisation = run.tc, run.extra["tokenisation"]
    summary: dict[str, Any] = {
        "best_epoch": run.best_epoch, "epochs": len(run.history), "train_seconds": round(run.train_seconds, 1),
        "feature_seconds": round(run.feature_seconds, 1), "machine": machine_description(), "command": command,
        "config": {"model": run.cfg.to_dict(), "train": tc.to_dict()}, "seed": tc.seed,
        "training_data": run.extra["training_data"], "image_coverage": run.coverage, "tokenisation": tokenisation,
        "curve": epoch_curve(run.history),
    }
    if run.accelerator.is_main_process:
        agree = tokenisation["agreement"]
        log.info("tokenisation: style %s (inferred %s) gives back %.2f%% of the %d training sentences joined, "
                 "%.2f%% raw-like", tokenisation["style"], tokenisation["inferred"], 100 * agree["joined"],
                 agree["sentences"], 100 * agree["raw_like"])
        best = BFCL.from_pretrained(run.best_dir, device=run.accelerator.device)
        for name in ("dev", "test"):
            if name in run.splits and (name == "dev" or tc.evaluate_test):
                summary[name] = _score(run, best, name)
        (run.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def epoch_curve(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per epoch: the training loss (in training mode, so with dropout) and the dev F1 as scored then.

    Kept with a result so that a claim about how a run learned (a head still climbing, a loss under
    the baseline's) can be checked from the result file alone, not from a log left on one machine."""
    return [
        {"epoch": r["epoch"], "loss": r["loss"], "dev_f1": (r.get("dev") or {}).get("f1"), "seconds": r["seconds"]}
        for r in history
    ]


def _print_epoch(r: dict[str, Any]) -> None:
    dev = r.get("dev")
    msg = f"epoch {r['epoch']}: loss {r['loss']:.4f} ({r['samples_per_second']} windows/s)"
    if dev:
        msg += f"  dev P {dev['precision']:.4f} R {dev['recall']:.4f} F1 {dev['f1']:.4f}"
    print(msg, flush=True)


def machine_description() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {os.cpu_count()} CPU cores, {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads"
