"""Prediction speed of BFCL against the Hugging Face token-classification pipeline.

    python benchmarks/bench_predict.py [--posts 64] [--repeats 3] [--threads 2]

What is measured, in one run (each system in its own long-lived subprocess, so load
time and peak memory (ru_maxrss) are its own; the passes of all settings are
interleaved round by round, so a change in background load hits them alike):

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

On a machine shared with other jobs, try ``--threads 1`` too: torch's OpenMP threads
spin while they wait, so more threads than free cores can be many times slower.

A second table says where each pass's time goes (median ms/post): BFCL's text encoder,
the rest of its forward (projections, co-attention, fusion, emissions) and everything
outside the model (tokenising, windows, the feature cache read, collate, CRF decoding and
span scores, entities); the pipeline's model forward and everything outside it. Both sides
are timed the same way (a clock around each model's forward, ~1 us a call).
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
from typing import Any

LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
GOAL_RATIO = 0.9
"""Issue 11: BFCL with cached features at batch 32 reaches this fraction of the pipeline's posts/s."""
GOAL_RATIO_BATCH1 = 0.75
"""The same at batch 1 (``predict`` once per post)."""
DEFAULT_REAL_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "twitter2015" / "images_sample"


def peak_rss_mib() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# ----------------------------------------------------------------------------- workers


class ForwardClock:
    """Wall seconds spent inside ``module.forward``, for the breakdown (a clock read on entry and exit)."""

    def __init__(self, module: Any) -> None:
        self.seconds = 0.0
        inner = module.forward

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        module.forward = timed  # an instance attribute: nn.Module.__call__ finds it first

#
# Each system runs in a long-lived subprocess (its own load time and ru_maxrss) that
# answers one JSON command per line on stdin. The parent interleaves the passes of all
# settings round by round, so a change in background load hits every setting alike.


class BfclWorker:
    def __init__(self, work: Path) -> None:
        t0 = time.perf_counter()
        import bfcl
        from bfcl.encoders.cache import FeatureCache

        self.FeatureCache = FeatureCache
        self.work = work
        self.predictor = bfcl.load(work / "model", feature_cache=work / "features", device="cpu")
        self.load_s = time.perf_counter() - t0
        assert self.predictor.cache is not None, "the benchmark model must read images"
        self.encoder = self.predictor.cache.encoder
        posts = json.loads((work / "posts.json").read_text(encoding="utf-8"))
        self.texts = [p["text"] for p in posts]
        self.images = [p["image"] for p in posts]
        self.cold_passes = 0
        self.text_clock = ForwardClock(self.predictor.model.text_encoder)
        self.model_clock = ForwardClock(self.predictor.model)
        # warm up the kernels, and fill the on-disk cache that the `cached` setting reads
        self.predictor.predict_batch(list(zip(self.texts, self.images)), batch_size=32)
        self.predictor.predict(self.texts[0], self.images[0])

    def _fresh_cache(self, directory: Path) -> None:
        self.predictor.processor.feature_cache = self.FeatureCache(directory, self.encoder)

    def run(self, mode: str, batch: int) -> dict[str, float]:
        if mode == "cached":  # populated directory, empty in-process memory: every read hits disk
            self._fresh_cache(self.work / "features")
        elif mode == "cold":
            self.cold_passes += 1
            self._fresh_cache(self.work / f"cold-{self.cold_passes}")
        images = self.images if mode != "no image" else [None] * len(self.texts)
        p = self.predictor
        self.text_clock.seconds = self.model_clock.seconds = 0.0
        t0 = time.perf_counter()
        if batch == 1:
            for text, image in zip(self.texts, images):
                p.predict(text, image)
        else:
            p.predict_batch(list(zip(self.texts, images)), batch_size=batch)
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "encoder_seconds": p.cache.encoder_seconds if p.cache else 0.0,
                "text_encoder_s": self.text_clock.seconds, "model_s": self.model_clock.seconds}

    def finish(self, real_images: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        files = sorted(
            f for f in Path(real_images).iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png")
        ) if real_images else []
        if files:
            per_image = []
            for _ in range(3):
                self.cold_passes += 1
                self._fresh_cache(self.work / f"cold-{self.cold_passes}")
                t = time.perf_counter()
                self.predictor.image_features([str(f) for f in files], on_error="none")
                per_image.append((time.perf_counter() - t) / len(files))
            out["real_images"] = {"images": len(files), "ms_per_image": 1000 * statistics.median(per_image)}
        return out


def hf_pipeline() -> Any:
    """The peer: ``pipeline("token-classification")`` on the same MiniLM, untrained head, entities out."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging

    from bfcl.encoders.text import resolve_text_encoder

    hf_logging.set_verbosity_error()  # the untrained head's "newly initialized" warning
    path = resolve_text_encoder("minilm")
    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    ).eval()
    return pipeline(
        "token-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(path),
        aggregation_strategy="simple", device=-1,
    )


class PipelineWorker:
    def __init__(self, work: Path) -> None:
        t0 = time.perf_counter()
        self.pipe = hf_pipeline()
        self.load_s = time.perf_counter() - t0
        self.model_clock = ForwardClock(self.pipe.model)
        self.texts = [p["text"] for p in json.loads((work / "posts.json").read_text(encoding="utf-8"))]
        self.pipe(self.texts[:32], batch_size=32)
        self.pipe(self.texts[0])

    def run(self, mode: str, batch: int) -> dict[str, float]:
        self.model_clock.seconds = 0.0
        t0 = time.perf_counter()
        if batch == 1:
            for text in self.texts:
                self.pipe(text)
        else:
            self.pipe(self.texts, batch_size=batch)
        return {"seconds": time.perf_counter() - t0, "model_s": self.model_clock.seconds}

    def finish(self, real_images: str) -> dict[str, Any]:
        return {}


def serve(kind: str, work: str, threads: int, real_images: str) -> None:
    """Worker main loop: load, say so, then answer run/finish commands until finish."""
    import torch

    replies, sys.stdout = sys.stdout, sys.stderr  # stray library prints must not corrupt the replies

    def reply(obj: dict[str, Any]) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    torch.set_num_threads(threads)
    worker = BfclWorker(Path(work)) if kind == "bfcl" else PipelineWorker(Path(work))
    reply({"load_s": worker.load_s, "threads": torch.get_num_threads()})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "run":
            reply(worker.run(cmd["mode"], cmd["batch"]))
        else:
            reply({**worker.finish(real_images), "peak_rss_mib": peak_rss_mib()})
            return


class Worker:
    """The parent's handle on one worker subprocess."""

    def __init__(self, kind: str, args: argparse.Namespace) -> None:
        cmd = [sys.executable, __file__, "--worker", kind, "--work", args.work, "--threads", str(args.threads),
               "--real-images", args.real_images]
        self.kind = kind
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.kind} worker died (exit code {self.proc.wait()})")
        return json.loads(line)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict[str, Any]:
        result = self.ask(op="finish")
        self.proc.wait()
        return result


SETTINGS: dict[str, tuple[str, ...]] = {"bfcl": ("cached", "cold", "no image"), "pipeline": ("text only",)}
BATCHES = (1, 32)


def breakdown(passes: dict[str, dict[int, list[dict[str, float]]]], posts: int) -> dict[str, dict[str, dict[str, float]]]:
    """Per setting and batch, median ms/post: the whole pass, inside the text encoder, the rest of
    the model's forward, and outside the model (the pipeline has no separate text encoder)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for mode, per_batch in passes.items():
        for b, runs in per_batch.items():
            med = lambda key: 1000 * statistics.median(p.get(key, 0.0) for p in runs) / posts  # noqa: E731
            row = {"total": med("seconds"), "outside model": 1000 * statistics.median(
                (p["seconds"] - p["model_s"]) for p in runs) / posts}
            if "text_encoder_s" in runs[0]:
                row["text encoder"] = med("text_encoder_s")
                row["rest of model"] = 1000 * statistics.median(
                    (p["model_s"] - p["text_encoder_s"]) for p in runs) / posts
            else:
                row["model"] = med("model_s")
            out.setdefault(mode, {})[str(b)] = row
    return out


def measure(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Interleaved rounds: every setting of both systems once per round, ``repeats`` rounds."""
    workers = {kind: Worker(kind, args) for kind in SETTINGS}  # loaded one after the other
    passes: dict[str, dict[str, dict[int, list[dict[str, float]]]]] = {
        kind: {mode: {b: [] for b in BATCHES} for mode in modes} for kind, modes in SETTINGS.items()
    }
    for _ in range(args.repeats):
        for batch in BATCHES:
            for kind, modes in SETTINGS.items():
                for mode in modes:
                    passes[kind][mode][batch].append(workers[kind].ask(op="run", mode=mode, batch=batch))
    results: dict[str, dict[str, Any]] = {}
    for kind, w in workers.items():
        rates = {
            mode: {str(b): [args.posts / p["seconds"] for p in runs] for b, runs in per_batch.items()}
            for mode, per_batch in passes[kind].items()
        }
        results[kind] = {**w.hello, **w.close(), "rates": rates, "breakdown": breakdown(passes[kind], args.posts)}
        if kind == "bfcl":
            cold = passes[kind]["cold"]
            results[kind]["cold_encoder_s_per_post"] = {
                str(b): statistics.median(p["encoder_seconds"] for p in cold[b]) / args.posts for b in BATCHES
            }
    return results


# ----------------------------------------------------------------------------- setup


def prepare(work: Path, n_posts: int) -> None:
    """The untrained offline BFCL model (saved, as a user loads it) and the probe posts."""
    from bfcl.demo.probe import make_probe
    from bfcl.demo.run import demo_configs
    from bfcl.model.modeling import build_model

    from dataclasses import replace

    cfg = replace(demo_configs()[0], labels=list(LABELS))  # image sizes come from the encoder's name
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


def _rate(runs: list[float]) -> str:
    """Median posts/s, with the range over the passes."""
    return f"{statistics.median(runs):.1f} ({min(runs):.0f}-{max(runs):.0f})"


def report(args: argparse.Namespace, info: dict[str, Any], res: dict[str, dict], load: tuple, wall: float) -> str:
    bfcl, pipe = res["bfcl"], res["pipeline"]
    lines = [
        f"machine: {info['machine']}, {info['cpus']} CPUs ({info['processor'] or 'unknown'}), "
        f"CUDA {'yes' if info['cuda'] else 'no'}; {info['platform']}",
        f"python {info['python']}, torch {info['torch']}, transformers {info['transformers']}; "
        f"torch threads {bfcl['threads']}",
        f"load average (1/5/15 min) at start {load[0][0]:.2f}/{load[0][1]:.2f}/{load[0][2]:.2f}, "
        f"at end {load[1][0]:.2f}/{load[1][1]:.2f}/{load[1][2]:.2f}",
        f"input: {args.posts} probe posts (224x224 PNG each); median (min-max) of {args.repeats} "
        f"interleaved passes; wall {wall:.0f} s",
        "",
        "| system | images | batch 1 (posts/s) | batch 32 (posts/s) | load (s) | peak RSS (MiB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in (("BFCL", bfcl), ("HF pipeline (MiniLM)", pipe)):
        for k, (mode, rates) in enumerate(r["rates"].items()):
            extra = (f"{r['load_s']:.2f}", f"{r['peak_rss_mib']:.0f}") if k == 0 else ("", "")
            lines.append(
                f"| {name if k == 0 else ''} | {mode} | {_rate(rates['1'])} | {_rate(rates['32'])} | "
                f"{extra[0]} | {extra[1]} |"
            )
    enc = bfcl["cold_encoder_s_per_post"]
    lines += ["", f"cold: image CNN {1000 * enc['1']:.1f} ms/post at batch 1, {1000 * enc['32']:.1f} ms/post at batch 32"]
    if bfcl.get("real_images"):
        ri = bfcl["real_images"]
        lines.append(f"real tweet JPEGs ({ri['images']} files): read + decode + resize + CNN {ri['ms_per_image']:.1f} ms/image")
    ratio = statistics.median(bfcl["rates"]["cached"]["32"]) / statistics.median(pipe["rates"]["text only"]["32"])
    verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
    lines.append(f"ratio BFCL cached / pipeline at batch 32: {ratio:.2f} (goal >= {GOAL_RATIO}: {verdict})")
    ratio1 = statistics.median(bfcl["rates"]["cached"]["1"]) / statistics.median(pipe["rates"]["text only"]["1"])
    verdict1 = "met" if ratio1 >= GOAL_RATIO_BATCH1 else "NOT met"
    lines.append(f"ratio BFCL cached / pipeline at batch 1: {ratio1:.2f} (goal >= {GOAL_RATIO_BATCH1}: {verdict1})")
    lines += [
        "", "where the time goes (ms/post, median of the passes; each part's median, so parts need not sum to the total):",
        "| system | images | batch | total | text encoder | rest of model | outside model |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("BFCL", bfcl), ("HF pipeline", pipe)):
        for mode, per_batch in r["breakdown"].items():
            for b, row in per_batch.items():
                enc, rest = (row["text encoder"], row["rest of model"]) if "text encoder" in row else (row["model"], None)
                lines.append(f"| {name} | {mode} | {b} | {row['total']:.2f} | {enc:.2f} | "
                             f"{'' if rest is None else f'{rest:.2f}'} | {row['outside model']:.2f} |")
    lines.append("(the pipeline's model forward, classifier included, is under 'text encoder')")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--posts", type=int, default=64, help="posts per pass")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per setting (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every worker")
    ap.add_argument("--real-images", default=str(DEFAULT_REAL_IMAGES) if DEFAULT_REAL_IMAGES.is_dir() else "",
                    help="folder of real tweet images to time read + decode + encode on ('' to skip)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the raw results here")
    ap.add_argument("--worker", choices=tuple(SETTINGS), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        serve(args.worker, args.work, args.threads, args.real_images)
        return

    t0 = time.perf_counter()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bfcl-bench-predict-") as tmp:
        args.work = tmp
        prepare(Path(tmp), args.posts)
        results = measure(args)
    info = machine()
    print(report(args, info, results, (load_start, os.getloadavg()), time.perf_counter() - t0))
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"machine": info, **results, "args": vars(args)}, indent=2) + "\n", encoding="utf-8"
        )


if __name__ == "__main__":
    main()
