"""Prediction throughput on a quiet machine and under a CPU hog, with the thread policy that
``bfcl predict`` and ``bfcl serve`` use by default.

    python benchmarks/bench_loaded.py [--posts 64] [--repeats 3] [--hogs N] [--threads auto,2]

Why: torch's intra-op threads wait for each other at every parallel region, so when other
processes take the cores a multi-threaded prediction process can collapse (on a loaded 2-core
machine batch-1 prediction fell from ~70 to 1.4 posts/s). ``bfcl.threads`` decides the
thread count ("auto": from the competition for the cores, re-checked while the model runs);
this benchmark shows what a user gets from it when the machine is taken by other work.

What is measured, for each ``--threads`` policy (``auto`` is the default of ``bfcl predict`` /
``bfcl serve``: ``apply_threads()`` then ``follow_load(model)``; a number is ``--threads N``):

* the offline BFCL setting (``bench_predict.prepare``: MiniLM + EfficientNet-Lite0, untrained
  weights, saved and loaded with ``bfcl.load``) labels the multimodal probe's posts with their
  image features already in the on-disk cache, at batch 1 (``predict`` per post) and batch 32
  (``predict_batch``), in a worker process of its own;
* **quiet**: nothing started by the benchmark;
* **load arrives**: the same worker, after the hog has started (a server running when other
  jobs arrive);
* **started under load**: a fresh worker, started while the hog runs (``bfcl predict`` launched
  on a busy machine).

The hog: ``--hogs`` processes (default: one per usable core) spinning in pure Python at normal
priority, each with its own deadline (``--hog-seconds``), so they end even if this script is
killed; they are also stopped on exit, Ctrl-C or error. A pass that would take very long (a
collapse) stops after ``--pass-budget`` seconds and reports the rate of the posts it finished.

Prints posts/s (median of ``--repeats`` passes) and each loaded rate as a % of the quiet rate
of the same policy; goal: at least 40% under load for the default policy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import prepare  # noqa: E402  (the same model and posts as the prediction benchmark)

GOAL_PERCENT = 40.0
BATCHES = (1, 32)

HOG_CODE = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


# ----------------------------------------------------------------------------- the hog


@contextmanager
def cpu_hog(processes: int, seconds: float) -> Iterator[list[subprocess.Popen]]:
    """``processes`` busy Python processes for at most ``seconds``; always stopped on the way out."""
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(processes):
            procs.append(subprocess.Popen([sys.executable, "-c", HOG_CODE, str(seconds)], stdin=subprocess.DEVNULL))
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ----------------------------------------------------------------------------- worker side


class Worker:
    """Runs in the child: the thread policy, the model, the timed passes."""

    def __init__(self, work: Path, policy: str) -> None:
        import torch

        import bfcl
        from bfcl.encoders.cache import FeatureCache
        from bfcl.threads import apply_threads, follow_load

        self.torch, self.FeatureCache, self.work = torch, FeatureCache, work
        t0 = time.perf_counter()
        chosen = apply_threads(None if policy == "auto" else int(policy))  # what `bfcl predict --threads` does
        self.predictor = bfcl.load(work / "model", feature_cache=work / "features", device="cpu")
        if policy == "auto":
            follow_load(self.predictor.model)
        self.load_s = time.perf_counter() - t0
        self.start_threads = chosen
        posts = json.loads((work / "posts.json").read_text(encoding="utf-8"))
        self.items = [(p["text"], p["image"]) for p in posts]
        self.predictor.predict_batch(self.items, batch_size=32)  # warm up; fills the on-disk cache
        self.predictor.predict(*self.items[0])

    def run(self, batch: int, budget: float) -> dict[str, Any]:
        # a fresh in-process cache over the filled directory: every feature is read from disk
        self.predictor.processor.feature_cache = self.FeatureCache(self.work / "features", self.predictor.cache.encoder)
        p, done, threads = self.predictor, 0, set()
        t0 = time.perf_counter()
        step = 1 if batch == 1 else batch
        for k in range(0, len(self.items), step):
            chunk = self.items[k : k + step]
            if batch == 1:
                p.predict(*chunk[0])
            else:
                p.predict_batch(chunk, batch_size=batch)
            done += len(chunk)
            threads.add(self.torch.get_num_threads())
            if time.perf_counter() - t0 > budget:
                break
        seconds = time.perf_counter() - t0
        return {"rate": done / seconds, "posts": done, "seconds": seconds, "threads": sorted(threads)}


def worker_main(work: str, policy: str) -> None:
    replies, sys.stdout = sys.stdout, sys.stderr  # stray library prints must not corrupt the replies

    def reply(obj: dict[str, Any]) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    w = Worker(Path(work), policy)
    reply({"load_s": w.load_s, "start_threads": w.start_threads})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "stop":
            return
        reply(w.run(cmd["batch"], cmd["budget"]))


class Child:
    """The parent's handle on one worker process."""

    def __init__(self, work: str, policy: str) -> None:
        cmd = [sys.executable, __file__, "--worker", policy, "--work", work]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker died (exit code {self.proc.wait()})")
        return json.loads(line)

    def passes(self, repeats: int, budget: float) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {b: [] for b in BATCHES}
        assert self.proc.stdin is not None
        for _ in range(repeats):
            for b in BATCHES:
                self.proc.stdin.write(json.dumps({"op": "run", "batch": b, "budget": budget}) + "\n")
                self.proc.stdin.flush()
                out[b].append(self._read())
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "stop"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# ----------------------------------------------------------------------------- parent side


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def measure(policy: str, work: str, args: argparse.Namespace) -> dict[str, Any]:
    """Quiet, then load arriving at a running worker, then a worker started under load."""
    res: dict[str, Any] = {"policy": policy}
    running = Child(work, policy)
    try:
        res["start_threads_quiet"] = running.hello["start_threads"]
        res["quiet"] = running.passes(args.repeats, args.pass_budget)
        with cpu_hog(args.hogs, args.hog_seconds):
            time.sleep(args.settle)
            res["load arrives"] = running.passes(args.repeats, args.pass_budget)
            running.close()
            fresh = Child(work, policy)
            try:
                res["start_threads_loaded"] = fresh.hello["start_threads"]
                res["started under load"] = fresh.passes(args.repeats, args.pass_budget)
            finally:
                fresh.close()
    finally:
        running.close()
    return res


def _median(passes: list[dict[str, Any]]) -> float:
    return statistics.median(p["rate"] for p in passes)


def _threads(passes: list[dict[str, Any]]) -> str:
    seen = sorted({t for p in passes for t in p["threads"]})
    return "/".join(map(str, seen))


def report(results: list[dict[str, Any]], args: argparse.Namespace, loads: tuple) -> str:
    import torch

    lines = [
        f"torch {torch.__version__}; {_usable_cores()} usable cores; hog: {args.hogs} busy processes; "
        f"{args.posts} probe posts, cached image features; median of {args.repeats} passes (a pass stops after "
        f"{args.pass_budget:.0f} s)",
        f"load average (1 min) at start {loads[0]:.2f}, at end {loads[1]:.2f}",
        "",
        "| policy | setting | threads | batch 1 (posts/s) | % of quiet | batch 32 (posts/s) | % of quiet |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    verdicts = []
    for r in results:
        quiet = {b: _median(r["quiet"][b]) for b in BATCHES}
        for setting in ("quiet", "load arrives", "started under load"):
            rates = {b: _median(r[setting][b]) for b in BATCHES}
            pct = {b: 100.0 * rates[b] / quiet[b] for b in BATCHES}
            threads = _threads(r[setting][1] + r[setting][32])
            pct_s = {b: "" if setting == "quiet" else f"{pct[b]:.0f}%" for b in BATCHES}
            lines.append(
                f"| {r['policy'] if setting == 'quiet' else ''} | {setting} | {threads} | {rates[1]:.1f} | {pct_s[1]} | "
                f"{rates[32]:.1f} | {pct_s[32]} |"
            )
            if setting != "quiet" and r["policy"] == "auto":
                verdicts.append(min(pct.values()))
    if verdicts:
        worst = min(verdicts)
        lines.append(f"\nauto (the default): worst loaded rate {worst:.0f}% of quiet "
                     f"(goal >= {GOAL_PERCENT:.0f}%: {'met' if worst >= GOAL_PERCENT else 'NOT met'})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--posts", type=int, default=64, help="posts per pass")
    ap.add_argument("--repeats", type=int, default=3, help="passes per setting (median reported)")
    ap.add_argument("--hogs", type=int, default=_usable_cores(), help="busy processes (default: one per usable core)")
    ap.add_argument("--hog-seconds", type=float, default=300.0, help="upper bound on the hog's life")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds between starting the hog and measuring")
    ap.add_argument("--pass-budget", type=float, default=15.0, help="a pass stops after this many seconds")
    ap.add_argument("--threads", default="auto,2", help="comma-separated policies: auto and/or thread counts")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the raw results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(args.work, args.worker)
        return
    policies = [p.strip() for p in args.threads.split(",") if p.strip()]
    for p in policies:
        if p != "auto" and not (p.isdigit() and int(p) >= 1):
            ap.error(f"--threads: {p!r} is neither 'auto' nor a thread count")
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bfcl-bench-loaded-") as tmp:
        prepare(Path(tmp), args.posts)
        results = [measure(p, tmp, args) for p in policies]
    print(report(results, args, (load_start, os.getloadavg()[0])))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
