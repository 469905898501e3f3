"""Arithmetic of BFCL's head against its text encoder: the ceiling on issue 11's speed ratios.

    python benchmarks/bench_flops.py [--posts 64] [--batch-size 16] [--model d_model=64 ...]

Counts floating-point operations with ``torch.utils.flop_counter.FlopCounterMode`` (matrix
products, attention and convolutions: where these models' arithmetic is; element-wise ops
and the optimiser are not counted), so the figures do not depend on the machine or its load:

  * prediction, one post at a time (``predict(text, image)`` with cached image features), for
    the benchmark model of ``bench_predict.py`` (the offline BFCL setting) split by module,
    against the Hugging Face token-classification model on the same MiniLM;
  * a training step (forward + backward) on probe batches, BFCL against the encoder + CRF of
    ``bench_training.py``.

If every operation ran at the same speed, time would follow these counts, so
``pipeline FLOPs / BFCL FLOPs`` is the best prediction ratio the model as configured can reach,
and ``BFCL FLOPs / baseline FLOPs`` the lowest training-step ratio. The head's small products
(d_model = 128, ~20 rows at batch 1) run slower per operation than the encoder's, so measured
ratios fall short of these ceilings. ``--model KEY=VALUE`` changes the BFCL setting (a field of
``BFCLConfig``, e.g. ``d_model=64``), to read off the ceilings of another head.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))


def module_flops(counter: FlopCounterMode, root: str) -> dict[str, int]:
    """FLOPs per direct child of the ``root`` module (the counter keys modules by dotted path)."""
    out: dict[str, int] = {}
    for name, ops in counter.get_flop_counts().items():
        if name.startswith(root + ".") and name.count(".") == 1:
            out[name.split(".", 1)[1]] = sum(ops.values())
    return out


def total(counter: FlopCounterMode) -> int:
    return sum(counter.get_flop_counts()["Global"].values())


def bfcl_setting(overrides: dict[str, object]):
    """The offline BFCL setting of the benchmarks, with ``--model`` overrides; and its text-only twin."""
    from bfcl.demo.run import demo_configs

    bfcl_cfg, text_cfg, _ = demo_configs()
    return replace(bfcl_cfg, **overrides), text_cfg


def prediction(work: Path, n_posts: int, overrides: dict[str, object]) -> dict:
    import bench_predict

    import bfcl
    from bfcl.model.modeling import build_model

    bench_predict.prepare(work, n_posts)  # the probe posts and bench_predict's model, replaced below if asked
    if overrides:
        cfg = replace(bfcl_setting(overrides)[0], labels=list(bench_predict.LABELS))
        build_model(cfg).save_pretrained(work / "model")
    predictor = bfcl.load(work / "model", feature_cache=work / "features", device="cpu")
    posts = json.loads((work / "posts.json").read_text(encoding="utf-8"))
    for p in posts:  # fill the feature cache, so the counts below are the cached setting's
        predictor.predict(p["text"], p["image"])
    parts: dict[str, int] = defaultdict(int)
    bfcl_total = 0
    for p in posts:
        with FlopCounterMode(display=False) as counter:
            predictor.predict(p["text"], p["image"])
        bfcl_total += total(counter)
        for name, flops in module_flops(counter, "BFCL").items():
            parts[name] += flops
    pipe = bench_predict.hf_pipeline()
    pipe_total = 0
    for p in posts:
        with FlopCounterMode(display=False) as counter:
            pipe(p["text"])
        pipe_total += total(counter)
    return {"posts": len(posts), "bfcl": bfcl_total, "parts": dict(parts), "pipeline": pipe_total}


def training(work: Path, n_posts: int, batch_size: int, overrides: dict[str, object]) -> dict:
    from bfcl.data.labels import LabelSet
    from bfcl.demo.probe import make_probe
    from bfcl.encoders.cache import FeatureCache
    from bfcl.encoders.image import build_image_encoder
    from bfcl.model.modeling import build_model
    from bfcl.processing import BFCLProcessor

    probe = make_probe(work / "train-probe", seed=0, n_train=n_posts, n_dev=0, n_test=0)
    samples = probe.train
    labels = LabelSet.from_samples(samples)
    bfcl_cfg, text_cfg = bfcl_setting(overrides)
    out = {}
    for kind, cfg in (("bfcl", bfcl_cfg), ("encoder + CRF", text_cfg)):
        cfg = replace(cfg, labels=list(labels.labels))
        images = [None] * len(samples)
        if cfg.uses_image:
            cache = FeatureCache(work / "cache", build_image_encoder(cfg.image_encoder))
            images = cache.encode_images([probe.images[s.image_id] for s in samples])
        torch.manual_seed(0)
        model = build_model(cfg).train()
        processor = BFCLProcessor.for_model(model)
        items = processor.windows(samples, images, labels=labels)
        forward = backward = 0
        parts: dict[str, int] = defaultdict(int)
        for i in range(0, len(items), batch_size):
            with FlopCounterMode(display=False) as counter:
                loss = model(**processor.collate(items[i : i + batch_size])).loss
            forward += total(counter)
            for name, f in module_flops(counter, "BFCL").items():  # per module: the forward only, where
                parts[name] += f  # the counter's module attribution is exact
            with FlopCounterMode(display=False) as counter:
                loss.backward()
            backward += total(counter)
            model.zero_grad()
        out[kind] = {"forward": forward, "backward": backward, "parts": dict(parts), "windows": len(items)}
    return out


def _value(text: str) -> object:
    """A --model value: JSON where it parses (64, true, 0.1), else the string (mid, attention)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--posts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                    help="a BFCLConfig field of the BFCL setting, e.g. d_model=64 (repeatable)")
    args = ap.parse_args()
    from dataclasses import fields

    from bfcl.model.configuration import BFCLConfig

    known = {f.name for f in fields(BFCLConfig)}
    overrides = {}
    for item in args.model:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            ap.error(f"--model {item!r}: expected KEY=VALUE with KEY a BFCLConfig field (e.g. d_model=64)")
        overrides[key] = _value(value)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        pred = prediction(Path(tmp) / "predict", args.posts, overrides)
        train = training(Path(tmp) / "train", args.posts, args.batch_size, overrides)
    n = pred["posts"]
    print(f"torch {torch.__version__}; FLOPs of matrix products, attention and convolutions (FlopCounterMode)")
    setting = bfcl_setting(overrides)[0]
    print(f"BFCL setting: d_model {setting.d_model}, {setting.num_heads} heads, {setting.fusion_stage} fusion "
          f"L = {setting.num_layers}, m = {setting.num_bottlenecks}, MCA {setting.use_mca}"
          + (f" (overrides: {overrides})" if overrides else ""))
    print(f"\nprediction, batch 1, {n} probe posts, cached image features: MFLOP per post")
    enc = pred["parts"].get("text_encoder", 0)
    for name, flops in sorted(pred["parts"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<16} {flops / n / 1e6:9.2f}  ({flops / enc:6.1%} of the text encoder)")
    print(f"  {'BFCL, all':<16} {pred['bfcl'] / n / 1e6:9.2f}")
    print(f"  {'HF pipeline':<16} {pred['pipeline'] / n / 1e6:9.2f}")
    head = pred["bfcl"] - enc
    print(f"head (all but the text encoder) / text encoder: {head / enc:.3f}")
    print(f"ceiling on the batch-1 ratio (pipeline FLOPs / BFCL FLOPs): {pred['pipeline'] / pred['bfcl']:.3f}  (goal 0.75)")
    print(f"\ntraining step, batch {args.batch_size}, {args.posts} probe posts: GFLOP per step")
    steps = -(-train["bfcl"]["windows"] // args.batch_size)
    print(f"  {'':<16} {'forward':>9} {'backward':>9} {'step':>9}")
    for kind, r in train.items():
        print(f"  {kind:<16} {r['forward'] / steps / 1e9:9.3f} {r['backward'] / steps / 1e9:9.3f} "
              f"{(r['forward'] + r['backward']) / steps / 1e9:9.3f}")
    print("  BFCL's forward by module:")
    for name, flops in sorted(train["bfcl"]["parts"].items(), key=lambda kv: -kv[1]):
        print(f"    {name:<14} {flops / steps / 1e9:9.3f}")
    step = {k: r["forward"] + r["backward"] for k, r in train.items()}
    ratio = step["bfcl"] / step["encoder + CRF"]
    print(f"floor on the training-step ratio (BFCL FLOPs / encoder + CRF FLOPs): {ratio:.3f}  (goal 1.15)")


if __name__ == "__main__":
    main()
