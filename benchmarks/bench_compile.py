"""Does ``torch.compile`` make one-post prediction faster? Eager against compiled co-attention + fusion.

    python benchmarks/bench_compile.py [--posts 64] [--rounds 3] [--threads 1]

The benchmark model and probe posts of ``bench_predict.py`` (offline BFCL, cached image features),
``predict(text, image)`` once per post. Co-attention and fusion, the head whose many small
operations set batch 1's cost, are wrapped in ``torch.compile(dynamic=True)`` (post lengths vary);
the passes alternate eager / compiled in one process, so load hits both alike. Prints the
compile-and-warm-up time and ms/post per round.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import bench_predict

    import bfcl

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--posts", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bench_predict.prepare(work, args.posts)
        p = bfcl.load(work / "model", feature_cache=work / "features", device="cpu")
        torch.set_num_threads(args.threads)
        items = [(q["text"], q["image"]) for q in json.loads((work / "posts.json").read_text(encoding="utf-8"))]
        for text, image in items:  # fill the feature cache and warm the eager kernels
            p.predict(text, image)
        m = p.model
        eager = (m.mca, m.fusion)
        compiled = (torch.compile(m.mca, dynamic=True), torch.compile(m.fusion, dynamic=True))

        def per_post(modules) -> float:
            m.mca, m.fusion = modules
            t0 = time.perf_counter()
            for text, image in items:
                p.predict(text, image)
            return (time.perf_counter() - t0) / len(items) * 1e3

        t0 = time.perf_counter()
        per_post(compiled)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {len(items)} probe posts, batch 1")
        print(f"compile and first pass: {time.perf_counter() - t0:.1f} s")
        for r in range(args.rounds):
            e, c = per_post(eager), per_post(compiled)
            print(f"round {r + 1}: eager {e:.2f} ms/post, compiled {c:.2f} ms/post")


if __name__ == "__main__":
    main()
