"""Training cost of BFCL against the text-only encoder + CRF, in one run on the same data.

    python benchmarks/bench_training.py [--steps 20] [--batch-size 16] [--threads 2]

Prints, for the offline setting (MiniLM + EfficientNet-Lite0):
  * training samples/s of a BFCL step and of an encoder + CRF step (same encoder, same
    batches), and their ratio (goal: BFCL's step costs at most 1.3x the baseline's);
  * the image feature pass of the first epoch (cold cache: the CNN runs) against a later
    epoch (warm cache: it must not run at all), with the time spent inside the CNN;
  * the CRF against pytorch-crf (benchmarks/bench_crf.py);
  * peak resident memory of each training process.
Each model trains in its own subprocess so peak memory is its own. Data: the multimodal
probe (every post has an image), so the fusion path does its full work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _probe(root: Path, n: int):
    from bfcl.demo.probe import make_probe

    return make_probe(root / "probe", seed=0, n_train=n, n_dev=0, n_test=0)


def measure_steps(kind: str, root: Path, steps: int, batch_size: int, threads: int) -> dict:
    """Run in a child: time `steps` optimiser steps of one model on the probe."""
    from dataclasses import replace

    from bfcl.data.labels import LabelSet
    from bfcl.demo.run import demo_configs
    from bfcl.encoders.cache import FeatureCache
    from bfcl.encoders.image import build_image_encoder
    from bfcl.model.modeling import build_model
    from bfcl.processing import BFCLProcessor

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    probe = _probe(root, steps * batch_size)
    samples = probe.train
    bfcl_cfg, text_cfg, _ = demo_configs()
    cfg = bfcl_cfg if kind == "bfcl" else text_cfg
    labels = LabelSet.from_samples(samples)
    cfg = replace(cfg, labels=list(labels.labels))
    images = [None] * len(samples)
    result: dict = {"model": kind}
    if cfg.uses_image:
        enc = build_image_encoder(cfg.image_encoder)  # its sizes are the config's (from the name)
        paths = [probe.images[s.image_id] for s in samples]
        cache = FeatureCache(root / "cache", enc)
        t0 = time.perf_counter()
        images = cache.encode_images(paths)
        result["epoch1_features_s"] = time.perf_counter() - t0
        result["epoch1_cnn_s"] = cache.encoder_seconds
        result["epoch1_misses"] = cache.misses
        warm = FeatureCache(root / "cache", enc)  # a later epoch / a later run: a fresh process-level cache
        t0 = time.perf_counter()
        warm.encode_images(paths)
        result["later_features_s"] = time.perf_counter() - t0
        result["later_cnn_s"] = warm.encoder_seconds
        result["later_misses"] = warm.misses
    model = build_model(cfg).train()
    processor = BFCLProcessor.for_model(model)
    items = processor.windows(samples, images, labels=labels)
    batches = [processor.collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    opt = torch.optim.AdamW(model.parameter_groups(5e-5, 1e-3, 0.01))

    def step(b):
        out = model(**b)
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    for b in batches[:2]:  # warm-up
        step(b)
    t0 = time.perf_counter()
    for b in batches:
        step(b)
    dt = time.perf_counter() - t0
    result["samples_per_s"] = sum(len(b["input_ids"]) for b in batches) / dt
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=["bfcl", "text"], help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure_steps(args.child, Path(args.root), args.steps, args.batch_size, args.threads)))
        return

    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} threads")
    print(f"{args.steps} steps of batch {args.batch_size} on the multimodal probe (every post has an image)\n")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("text", "bfcl"):
            cmd = [sys.executable, __file__, "--child", kind, "--root", tmp, "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[kind] = json.loads(out.strip().splitlines()[-1])
    t, b = results["text"], results["bfcl"]
    print(f"{'model':<22} {'samples/s':>10} {'step cost':>10} {'peak RSS MB':>12}")
    print(f"{'encoder + CRF':<22} {t['samples_per_s']:10.1f} {1.0:10.2f} {t['peak_rss_mb']:12.0f}")
    ratio = t["samples_per_s"] / b["samples_per_s"]
    print(f"{'BFCL':<22} {b['samples_per_s']:10.1f} {ratio:10.2f} {b['peak_rss_mb']:12.0f}")
    print(f"\nBFCL step cost / baseline step cost: {ratio:.2f}x (goal <= 1.3x)")
    print("\nimage features (frozen CNN behind the on-disk cache):")
    print(f"  first epoch: {b['epoch1_features_s']:.2f} s, {b['epoch1_cnn_s']:.2f} s in the CNN, {b['epoch1_misses']} images encoded")
    print(f"  later epoch: {b['later_features_s']:.2f} s, {b['later_cnn_s']:.2f} s in the CNN, {b['later_misses']} images encoded")
    print("\nCRF (benchmarks/bench_crf.py):", flush=True)
    subprocess.run([sys.executable, str(Path(__file__).with_name("bench_crf.py")), "--threads", "1"], check=True)


if __name__ == "__main__":
    main()
