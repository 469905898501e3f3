"""Prediction speed of BFCL against the Hugging Face token-classification pipeline.

    python benchmarks/bench_predict.py [--posts 64] [--repeats 3] [--threads 2]

What is measured, in one run (each system in its own subprocess, so load time and
peak memory (ru_maxrss) are its own):

* BFCL (the offline demo setting: MiniLM + EfficientNet-Lite0, d_model 128, 4 fusion
  layers) through ``Predictor``: batch 1 (``predict`` per post) and batch 32
  (``predict_batch``), three ways:
    - ``cached``: image features already on disk (a fresh in-process cache object each
      pass, so every feature is read from disk once, as in a second run over a dataset);
    - ``cold``: a fresh cache directory each pass, so every image is decoded and run
      through the CNN;
    - ``no image``: text only.
* ``transformers.pipeline("token-classification")`` on an ``AutoModelForTokenClassification``
  built from the same MiniLM weights (untrained head; only its speed matters): the
  text-only floor a multimodal model is compared with.

Weights are untrained (speed does not depend on training). The input is the multimodal
probe (short template tweets with 224x224 PNG pictures). With ``--real-images DIR`` the
decode + encode cost of real tweet JPEGs is also reported (default: the shared
Twitter-2015 sample, when present). Throughput is the median over ``--repeats`` passes.
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
from typing import Any, Callable

LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
GOAL_RATIO = 0.7
DEFAULT_REAL_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "twitter2015" / "images_sample"


def peak_rss_mib() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def median_rate(n: int, run: Callable[[], Any], repeats: int, setup: Callable[[], Any] | None = None) -> float:
    """Median posts/s over ``repeats`` timed passes (``setup`` runs untimed before each)."""
    rates = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        run()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


# ----------------------------------------------------------------------------- workers


def worker_bfcl(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    import bfcl
    from bfcl.encoders.cache import FeatureCache

    root = Path(args.work)
    predictor = bfcl.load(root / "model", feature_cache=root / "features", device="cpu")
    load_s = time.perf_counter() - t0
    posts = json.loads((root / "posts.json").read_text(encoding="utf-8"))
    texts = [p["text"] for p in posts]
    images = [p["image"] for p in posts]
    n = len(posts)
    assert predictor.cache is not None, "the benchmark model must read images"
    encoder = predictor.cache.encoder

    def fresh_cache(directory: Path) -> None:
        predictor.cache = FeatureCache(directory, encoder)

    cold_dirs = iter(range(10**6))

    def cold() -> None:
        fresh_cache(root / f"cold-{next(cold_dirs)}")

    def warm() -> None:
        fresh_cache(root / "features")

    # warm up kernels, and fill the on-disk cache the `cached` rows read
    predictor.predict_batch(list(zip(texts, images)), batch_size=32)
    predictor.predict(texts[0], images[0])

    def one_by_one(with_images: bool) -> Callable[[], None]:
        def run() -> None:
            for text, image in zip(texts, images):
                predictor.predict(text, image if with_images else None)

        return run

    def batched(with_images: bool) -> Callable[[], None]:
        items = list(zip(texts, images)) if with_images else texts
        return lambda: predictor.predict_batch(items, batch_size=32)

    rates: dict[str, dict[str, float]] = {}
    encode_share: dict[str, float] = {}
    for mode, setup, with_images in (("cached", warm, True), ("cold", cold, True), ("no image", None, False)):
        rates[mode] = {}
        for batch, make in (("1", one_by_one), ("32", batched)):
            rates[mode][batch] = median_rate(n, make(with_images), args.repeats, setup)
            if mode == "cold":
                # seconds in the CNN per post, from the last pass's counters
                encode_share[batch] = predictor.cache.encoder_seconds / n
    real = None
    if args.real_images:
        files = sorted(p for p in Path(args.real_images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if files:
            times = []
            for _ in range(args.repeats):
                cold()
                t = time.perf_counter()
                predictor.image_features([str(f) for f in files], on_error="none")
                times.append((time.perf_counter() - t) / len(files))
            real = {"images": len(files), "ms_per_image": 1000 * statistics.median(times)}
    return {
        "load_s": load_s, "rates": rates, "cold_encoder_s_per_post": encode_share,
        "real_images": real, "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads(),
    }


def worker_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging

    from bfcl.encoders.text import resolve_text_encoder

    hf_logging.set_verbosity_error()  # the untrained head's "newly initialized" warning
    path = resolve_text_encoder("minilm")
    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)}
    ).eval()
    pipe = pipeline(
        "token-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(path),
        aggregation_strategy="simple", device=-1,
    )
    load_s = time.perf_counter() - t0
    texts = [p["text"] for p in json.loads((Path(args.work) / "posts.json").read_text(encoding="utf-8"))]
    n = len(texts)
    pipe(texts[:32], batch_size=32)
    pipe(texts[0])

    def one_by_one() -> None:
        for t in texts:
            pipe(t)

    rates = {
        "1": median_rate(n, one_by_one, args.repeats),
        "32": median_rate(n, lambda: pipe(texts, batch_size=32), args.repeats),
    }
    return {"load_s": load_s, "rates": {"text only": rates}, "peak_rss_mib": peak_rss_mib(),
            "threads": torch.get_num_threads()}


def run_worker(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind, "--work", args.work, "--threads", str(args.threads),
           "--repeats", str(args.repeats)]
    if kind == "bfcl" and args.real_images:
        cmd += ["--real-images", str(args.real_images)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{kind} worker failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- setup


def prepare(work: Path, n_posts: int) -> None:
    """The untrained offline BFCL model (saved, as a user loads it) and the probe posts."""
    from bfcl.demo.probe import make_probe
    from bfcl.demo.run import demo_configs
    from bfcl.model.modeling import build_model

    cfg = demo_configs()[0]
    cfg.image_dim = 1280
    cfg.labels = list(LABELS)
    cfg.validate()
    build_model(cfg).save_pretrained(work / "model")
    probe = make_probe(work / "probe", n_train=0, n_dev=0, n_test=n_posts)
    posts = [
        {"text": " ".join(s.tokens), "image": str(work / "probe" / "images" / f"{s.image_id}.png")}
        for s in probe.test
    ]
    (work / "posts.json").write_text(json.dumps(posts), encoding="utf-8")


def machine() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "cuda": torch.cuda.is_available(),
    }


def report(args: argparse.Namespace, info: dict[str, Any], bfcl: dict, pipe: dict, load: tuple, wall: float) -> str:
    lines = [
        f"machine: {info['machine']}, {info['cpus']} CPUs ({info['processor'] or 'unknown'}), "
        f"CUDA {'yes' if info['cuda'] else 'no'}; {info['platform']}",
        f"python {info['python']}, torch {info['torch']}, transformers {info['transformers']}; "
        f"torch threads {bfcl['threads']}",
        f"load average (1/5/15 min) at start {load[0][0]:.2f}/{load[0][1]:.2f}/{load[0][2]:.2f}, "
        f"at end {load[1][0]:.2f}/{load[1][1]:.2f}/{load[1][2]:.2f}",
        f"input: {args.posts} probe posts (224x224 PNG each), median of {args.repeats} passes; wall {wall:.0f} s",
        "",
        "| system | images | batch 1 (posts/s) | batch 32 (posts/s) | load (s) | peak RSS (MiB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, res in (("BFCL", bfcl), ("HF pipeline (MiniLM)", pipe)):
        for k, (mode, r) in enumerate(res["rates"].items()):
            extra = (f"{res['load_s']:.2f}", f"{res['peak_rss_mib']:.0f}") if k == 0 else ("", "")
            lines.append(f"| {name if k == 0 else ''} | {mode} | {r['1']:.1f} | {r['32']:.1f} | {extra[0]} | {extra[1]} |")
    enc = bfcl["cold_encoder_s_per_post"]
    lines.append("")
    lines.append(
        f"cold: image CNN time {1000 * enc['1']:.1f} ms/post at batch 1, {1000 * enc['32']:.1f} ms/post at batch 32"
    )
    if bfcl.get("real_images"):
        ri = bfcl["real_images"]
        lines.append(f"real tweet JPEGs ({ri['images']} files): decode + resize + CNN {ri['ms_per_image']:.1f} ms/image")
    ratio = bfcl["rates"]["cached"]["32"] / pipe["rates"]["text only"]["32"]
    verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
    lines.append(f"ratio BFCL cached / pipeline at batch 32: {ratio:.2f} (goal >= {GOAL_RATIO}: {verdict})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--posts", type=int, default=64, help="posts per pass")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per setting (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every worker")
    ap.add_argument("--real-images", default=str(DEFAULT_REAL_IMAGES) if DEFAULT_REAL_IMAGES.is_dir() else "",
                    help="folder of real tweet images to time decode + encode on ('' to skip)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the raw results here")
    ap.add_argument("--worker", choices=("bfcl", "pipeline"), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        result = worker_bfcl(args) if args.worker == "bfcl" else worker_pipeline(args)
        print(json.dumps(result))
        return

    t0 = time.perf_counter()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bfcl-bench-predict-") as tmp:
        args.work = tmp
        prepare(Path(tmp), args.posts)
        bfcl_res = run_worker("bfcl", args)
        pipe_res = run_worker("pipeline", args)
    info = machine()
    text = report(args, info, bfcl_res, pipe_res, (load_start, os.getloadavg()), time.perf_counter() - t0)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"machine": info, "bfcl": bfcl_res, "pipeline": pipe_res, "args": vars(args)}, indent=2) + "\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
