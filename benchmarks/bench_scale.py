"""Scale figures for issue 11: image-feature throughput with 1 and 2 worker processes, and the
peak memory of streamed ``bfcl predict`` at 10k and 100k posts.

    python benchmarks/bench_scale.py [--images 200] [--workers 1 2] [--repeats 3]
                                     [--posts 10000 100000] [--model tiny|DIR] [--only features|memory]

What is measured (every run is a fresh ``python -m bfcl.cli`` subprocess, as a user runs it):

* **features**: ``bfcl features --images DIR --encoder efficientnet-lite0 --workers W`` into an
  empty cache each time, so every image goes through the CNN. DIR is ``--images N`` probe
  pictures (224x224 PNGs drawn by ``bfcl.demo.probe``, distinct seeds) or ``--image-dir`` (real
  photos). Reported: images/s over the command's own wall time (spawning the workers and
  building their encoders included, as the command reports it) and over the whole process
  (Python start and imports included). The runs of the worker counts alternate round by round
  (W=1, W=2, W=1, ...) so a change in background load hits both alike; medians are printed.
* **memory**: ``bfcl predict -m MODEL -i posts.jsonl -o out.jsonl --threads 1`` (JSONL in and
  out: the streamed path, ``CHUNK_POSTS`` at a time) on N synthetic text-only posts (the probe's
  sentence templates and names, ``bfcl.demo.probe``; unique ids). Reported: the child's peak RSS
  (``wait4`` rusage, exactly that process) and its RSS sampled every 0.25 s (psutil) at 25/50/75%
  of the run and at the end, which is flat when memory does not grow with the input.
  MODEL ``tiny`` (default) is a random 2-layer, 32-wide BERT + CRF with the MiniLM tokenizer
  (benchmarks/tiny_model.py): prediction cost is small, so 100k posts take minutes, and the
  memory figure is the pipeline's (reader, chunks, writer), not the weights'. A checkpoint
  folder (e.g. a MiniLM model) may be given instead; it must read no image (the posts have none).

Speed figures depend on the machine and on what else runs on it: run this on a quiet machine
(``uptime`` load average well under the core count) and quote the load it printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUMMARY_RE = re.compile(r"(\d+) image\(s\): encoded (\d+), already cached (\d+), failed (\d+); ([\d.]+) s wall")


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (OSError, AttributeError):
        return "n/a"


def child_env() -> dict[str, str]:
    """The children find this checkout's bfcl (src/) and use one OpenMP thread per process."""
    env = dict(os.environ)
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_measured(cmd: list[str], sample_every: float = 0.25) -> tuple[float, int, list[float], str]:
    """Run ``cmd``; (wall s, peak RSS KiB from wait4, RSS samples in MiB, stderr). Raises on failure."""
    import psutil

    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=child_env())
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            try:
                p = psutil.Process(proc.pid)
                while not stop.is_set():
                    rss = p.memory_info().rss
                    if rss:  # 0 once the child has exited and is not yet reaped
                        samples.append(rss / 2**20)
                    stop.wait(sample_every)
            except psutil.Error:  # the child has ended
                pass

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        sampler.join()
        wall = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-3000:]}")
    peak_kib = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss // 1024
    return wall, peak_kib, samples, stderr


# ----------------------------------------------------------------------------- features


def make_images(folder: Path, n: int) -> None:
    """``n`` distinct probe pictures (224x224 PNG), classes in turn."""
    from bfcl.demo.probe import IMAGE_CLASSES, draw_image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        draw_image(IMAGE_CLASSES[i % len(IMAGE_CLASSES)], seed=10_000 + i).save(folder / f"{i:05d}.png", compress_level=1)


def bench_features(image_dir: Path, workers: list[int], repeats: int, work: Path) -> list[dict]:
    runs: dict[int, list[tuple[float, float]]] = {w: [] for w in workers}
    n_images = 0
    for r in range(repeats):
        for w in workers:
            cache = work / f"cache-{w}-{r}"
            cmd = [sys.executable, "-m", "bfcl.cli", "features", "--images", str(image_dir), "--encoder",
                   "efficientnet-lite0", "--workers", str(w), "--cache", str(cache), "--no-progress"]
            wall, _, _, stderr = run_measured(cmd)
            m = SUMMARY_RE.search(stderr)
            if m is None:
                raise RuntimeError(f"no summary line in the output of {' '.join(cmd)}:\n{stderr[-2000:]}")
            total, encoded, cached, failed, seconds = int(m[1]), int(m[2]), int(m[3]), int(m[4]), float(m[5])
            if cached or encoded + failed != total:
                raise RuntimeError(f"expected every image encoded afresh, got: {m[0]}")
            n_images = encoded
            runs[w].append((seconds, wall))
            print(f"  features workers={w} round {r + 1}: {encoded} images, command {seconds:.1f} s, process {wall:.1f} s", flush=True)
    rows = []
    for w in workers:
        command = statistics.median(s for s, _ in runs[w])
        process = statistics.median(p for _, p in runs[w])
        rows.append({"workers": w, "images": n_images, "command_s": command, "process_s": process,
                     "images_per_s": n_images / command, "images_per_s_process": n_images / process})
    return rows


# ----------------------------------------------------------------------------- memory


def write_posts(path: Path, n: int, seed: int = 0) -> None:
    """``n`` text-only posts from the probe's sentence generator (templates x names), unique ids."""
    from bfcl.demo.probe import _split_specs  # the probe's text side alone: drawing 100k pictures is slow

    rng = random.Random(f"bench-scale:{seed}")
    with path.open("w", encoding="utf-8") as f:
        done = 0
        while done < n:
            for tokens, _, _ in _split_specs(rng, min(5000, n - done)):
                f.write(json.dumps({"id": f"post-{done}", "text": " ".join(tokens)}, ensure_ascii=False) + "\n")
                done += 1


def model_dir(spec: str, work: Path) -> Path:
    if spec != "tiny":
        path = Path(spec)
        if not (path / "config.json").is_file():
            raise SystemExit(f"--model {spec}: not a bfcl checkpoint folder (no config.json)")
        return path
    sys.path.insert(0, str(HERE))
    from tiny_model import tiny_checkpoint

    return tiny_checkpoint(work / "tiny-text-model", image=False)


def at_fraction(samples: list[float], q: float) -> float:
    return samples[min(len(samples) - 1, int(q * len(samples)))] if samples else float("nan")


def bench_memory(model: Path, sizes: list[int], work: Path) -> list[dict]:
    rows = []
    for n in sizes:
        posts = work / f"posts-{n}.jsonl"
        write_posts(posts, n)
        out = work / f"out-{n}.jsonl"
        cmd = [sys.executable, "-m", "bfcl.cli", "predict", "-m", str(model), "-i", str(posts), "-o", str(out),
               "--threads", "1", "--no-progress"]
        wall, peak_kib, samples, _ = run_measured(cmd)
        with out.open("rb") as f:
            lines = sum(1 for _ in f)
        if lines != n:
            raise RuntimeError(f"{out}: {lines} lines for {n} posts")
        row = {"posts": n, "input_mib": posts.stat().st_size / 2**20, "output_mib": out.stat().st_size / 2**20,
               "peak_rss_mib": peak_kib / 1024, "wall_s": wall, "posts_per_s": n / wall,
               "rss_mib_at": {f"{int(q * 100)}%": round(at_fraction(samples, q), 1) for q in (0.25, 0.5, 0.75)}}
        row["rss_mib_at"]["end"] = round(samples[-1], 1) if samples else float("nan")
        rows.append(row)
        print(f"  memory {n} posts: peak RSS {row['peak_rss_mib']:.0f} MiB, {wall:.0f} s", flush=True)
        posts.unlink()
        out.unlink()
    return rows


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="probe pictures to draw for the features runs")
    ap.add_argument("--image-dir", type=Path, help="use this folder of real images instead of probe pictures")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="bfcl features --workers values")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the features runs (median reported)")
    ap.add_argument("--posts", type=int, nargs="+", default=[10_000, 100_000], help="post counts for the memory runs")
    ap.add_argument("--model", default="tiny", help="'tiny' (default) or a text-only checkpoint folder")
    ap.add_argument("--only", choices=["features", "memory"], help="run one part only")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    import platform

    print(f"bench_scale: {platform.platform()}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPU(s), load average {load_average()}", flush=True)
    result: dict = {"load_average_start": load_average(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        if args.only in (None, "features"):
            image_dir = args.image_dir
            if image_dir is None:
                image_dir = work / "images"
                make_images(image_dir, args.images)
            result["features"] = bench_features(image_dir, args.workers, args.repeats, work)
        if args.only in (None, "memory"):
            result["memory"] = bench_memory(model_dir(args.model, work), args.posts, work)
    result["load_average_end"] = load_average()

    print(f"\nload average at start {result['load_average_start']}, at end {result['load_average_end']}")
    if "features" in result:
        print("\nbfcl features (efficientnet-lite0, empty cache), median of rounds:")
        print(f"  {'workers':>7}  {'images':>6}  {'images/s':>9}  {'images/s (process)':>19}")
        base = result["features"][0]["images_per_s"]
        for row in result["features"]:
            print(f"  {row['workers']:>7}  {row['images']:>6}  {row['images_per_s']:>9.1f}  "
                  f"{row['images_per_s_process']:>19.1f}   x{row['images_per_s'] / base:.2f}")
    if "memory" in result:
        print(f"\nbfcl predict, streamed JSONL (model {args.model}, --threads 1):")
        print(f"  {'posts':>7}  {'input MiB':>9}  {'peak RSS MiB':>12}  {'RSS at 25/50/75%/end':>24}  {'posts/s':>8}")
        for row in result["memory"]:
            at = "/".join(f"{v:.0f}" for v in row["rss_mib_at"].values())
            print(f"  {row['posts']:>7}  {row['input_mib']:>9.1f}  {row['peak_rss_mib']:>12.0f}  {at:>24}  {row['posts_per_s']:>8.0f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
