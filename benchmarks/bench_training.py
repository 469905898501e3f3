"""Training cost of BFCL against the text-only encoder + CRF, in one run on the same data.

    python benchmarks/bench_training.py [--steps 20] [--batch-size 16] [--threads 2] [--optimizer both]

Prints, for the offline setting (MiniLM + EfficientNet-Lite0):
  * training samples/s of a BFCL step and of an encoder + CRF step (same encoder, same
    batches), and their ratio (goal: BFCL's step costs at most 1.15x the baseline's);
  * the image feature pass of the first epoch (cold cache: the CNN runs) against a later
    epoch (warm cache: it must not run at all), with the time spent inside the CNN;
  * the CRF against pytorch-crf (benchmarks/bench_crf.py);
  * peak resident memory of each training process (goal: BFCL at most 1.0 GB).
Each model trains in its own subprocess so peak memory is its own; their timed passes are
interleaved (``--rounds``), so a change of background load hits both alike. Data: the multimodal
probe (every post has an image), so the fusion path does its full work.

A step is what ``bfcl train`` runs: the batch collated from its windows (the trainer's
DataLoader does that every step), forward, backward, the optimiser step. The BFCL process
holds what the trainer holds: the image features in the cache's storage type (float16,
exact: the cache rounds them through it), the CNN and the cache released once they are
read. ``--optimizer trainer`` is the trainer's AdamW (fused where torch has the kernel);
``for-loop`` is torch's default CPU AdamW, which the trainer used before; ``both`` (the
default) measures a pair with each: the fused step is faster for both models, so it raises
the ratio while lowering every step's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


GOAL_RATIO = 1.15
GOAL_RSS_MB = 1000


def _probe(root: Path, n: int):
    from bfcl.demo.probe import make_probe

    return make_probe(root / "probe", seed=0, n_train=n, n_dev=0, n_test=0)


class Child:
    """Runs in a child process: one model set up as the trainer sets it up, then timed passes."""

    def __init__(self, kind: str, root: Path, steps: int, batch_size: int, threads: int, optimizer: str) -> None:
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
        self.info: dict = {"model": kind}
        if cfg.uses_image:
            enc = build_image_encoder(cfg.image_encoder)  # its sizes are the config's (from the name)
            paths = [probe.images[s.image_id] for s in samples]
            cache = FeatureCache(root / "cache", enc)
            t0 = time.perf_counter()
            images = cache.encode_images(paths)
            self.info["epoch1_features_s"] = time.perf_counter() - t0
            self.info["epoch1_cnn_s"] = cache.encoder_seconds
            self.info["epoch1_misses"] = cache.misses
            warm = FeatureCache(root / "cache", enc)  # a later epoch / a later run: a fresh process-level cache
            t0 = time.perf_counter()
            warm.encode_images(paths)
            self.info["later_features_s"] = time.perf_counter() - t0
            self.info["later_cnn_s"] = warm.encoder_seconds
            self.info["later_misses"] = warm.misses
            # as the trainer does: features kept in the cache's storage type, the CNN and the caches released
            images = [f.to(cache.dtype) for f in images]
            del enc, cache, warm
        self.model = build_model(cfg).train()
        self.processor = BFCLProcessor.for_model(self.model)
        self.items = self.processor.windows(samples, images, labels=labels)
        del images
        self.chunks = [self.items[i : i + batch_size] for i in range(0, len(self.items), batch_size)]
        groups = self.model.parameter_groups(5e-5, 1e-3, 0.01)
        if optimizer == "trainer":
            from bfcl.training.trainer import _adamw

            self.opt = _adamw(groups)
        else:
            self.opt = torch.optim.AdamW(groups, foreach=False)
        self.info["optimizer"] = "fused AdamW" if self.opt.param_groups[0].get("fused") else "for-loop AdamW"
        for c in self.chunks[:2]:  # warm-up
            self.step(c)

    def step(self, chunk) -> None:
        out = self.model(**self.processor.collate(chunk))  # the trainer's DataLoader collates every step
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad()

    def run(self) -> dict:
        """One pass over all the steps: samples/s."""
        t0, c0 = time.perf_counter(), time.process_time()
        for c in self.chunks:
            self.step(c)
        return {"samples_per_s": len(self.items) / (time.perf_counter() - t0), "cpu_s": time.process_time() - c0}


def child_main(args: argparse.Namespace) -> None:
    """Set up, say so, then answer run / finish lines on stdin (one JSON reply each)."""
    replies, sys.stdout = sys.stdout, sys.stderr  # stray library prints must not corrupt the replies

    def reply(obj: dict) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    child = Child(args.child, Path(args.root), args.steps, args.batch_size, args.threads, args.optimizer)
    reply(child.info)
    for line in sys.stdin:
        if json.loads(line)["op"] == "run":
            reply(child.run())
        else:
            reply({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
            return


class Handle:
    """The parent's end of one child."""

    def __init__(self, kind: str, root: str, args: argparse.Namespace, optimizer: str) -> None:
        cmd = [sys.executable, __file__, "--child", kind, "--root", root, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--optimizer", optimizer]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self.ask(None)

    def ask(self, op: str | None) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if op is not None:
            self.proc.stdin.write(json.dumps({"op": op}) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"training child died (exit code {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> dict:
        out = self.ask("finish")
        self.proc.wait()
        return out


def measure_pair(tmp: str, args: argparse.Namespace, optimizer: str) -> tuple[dict, dict]:
    """Both models with one optimiser, their passes interleaved; (baseline, BFCL) results."""
    handles = {kind: Handle(kind, tmp, args, optimizer) for kind in ("text", "bfcl")}  # set up one after the other
    passes: dict[str, list[dict]] = {kind: [] for kind in handles}
    for r in range(args.rounds):  # a change of background load hits both models alike
        for kind in (("text", "bfcl") if r % 2 == 0 else ("bfcl", "text")):
            passes[kind].append(handles[kind].ask("run"))
    results = {
        kind: {**h.info, **h.close(), "samples_per_s": statistics.median(p["samples_per_s"] for p in passes[kind]),
               "cpu_s": statistics.median(p["cpu_s"] for p in passes[kind])}
        for kind, h in handles.items()
    }
    return results["text"], results["bfcl"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="optimiser steps per pass")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3,
                    help="passes per model, interleaved (text, BFCL, BFCL, text, ...); the median is reported")
    ap.add_argument("--optimizer", choices=["both", "trainer", "for-loop"], default="both",
                    help="trainer: the AdamW of bfcl train (fused where available); for-loop: torch's default CPU "
                    "AdamW (what the trainer used before); both: one pair of runs each")
    ap.add_argument("--child", choices=["bfcl", "text"], help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args)
        return

    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} threads")
    print(f"{args.steps} steps of batch {args.batch_size} on the multimodal probe (every post has an image); "
          f"median of {args.rounds} interleaved passes\n")
    optimizers = ["trainer", "for-loop"] if args.optimizer == "both" else [args.optimizer]
    print(f"{'optimizer':<16} {'model':<15} {'samples/s':>10} {'step cost':>10} {'peak RSS MB':>12}")
    lines, summary = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for optimizer in optimizers:
            t, b = measure_pair(tmp, args, optimizer)
            ratio = t["samples_per_s"] / b["samples_per_s"]
            summary[optimizer] = (t, b, ratio)
            name = f"{b['optimizer']}"
            print(f"{name:<16} {'encoder + CRF':<15} {t['samples_per_s']:10.1f} {1.0:10.2f} {t['peak_rss_mb']:12.0f}")
            print(f"{'':<16} {'BFCL':<15} {b['samples_per_s']:10.1f} {ratio:10.2f} {b['peak_rss_mb']:12.0f}", flush=True)
            verdict = "met" if ratio <= GOAL_RATIO else "NOT met"
            lines.append(f"BFCL step cost / baseline step cost, {name}: {ratio:.2f}x (goal <= {GOAL_RATIO}x: {verdict})")
            if args.threads == 1:  # one thread: CPU time is the work done, whatever else runs on the machine
                lines.append(f"  CPU time per pass, BFCL / baseline: {b['cpu_s'] / t['cpu_s']:.2f}x (a guide on a loaded machine)")
    print()
    print("\n".join(lines))
    if len(summary) == 2:
        gain = summary["trainer"][1]["samples_per_s"] / summary["for-loop"][1]["samples_per_s"]
        print(f"BFCL samples/s, {summary['trainer'][1]['optimizer']} / for-loop AdamW: {gain:.2f}x")
    t, b, _ = summary[optimizers[0]]
    rss = b["peak_rss_mb"]
    print(f"BFCL peak training RSS ({b['optimizer']}): {rss:.0f} MB (goal <= {GOAL_RSS_MB} MB: "
          f"{'met' if rss <= GOAL_RSS_MB else 'NOT met'}); encoder + CRF {t['peak_rss_mb']:.0f} MB")
    print("\nimage features (frozen CNN behind the on-disk cache):")
    print(f"  first epoch: {b['epoch1_features_s']:.2f} s, {b['epoch1_cnn_s']:.2f} s in the CNN, {b['epoch1_misses']} images encoded")
    print(f"  later epoch: {b['later_features_s']:.2f} s, {b['later_cnn_s']:.2f} s in the CNN, {b['later_misses']} images encoded")
    print("\nCRF (benchmarks/bench_crf.py):", flush=True)
    subprocess.run([sys.executable, str(Path(__file__).with_name("bench_crf.py")), "--threads", "1"], check=True)


if __name__ == "__main__":
    main()
