"""One-post prediction with the head's self-attention layers fused into torch's one encoder-layer
call, against the explicit layers.

    python benchmarks/bench_fused_layer.py [--posts 64] [--rounds 5] [--threads 1]

The benchmark model and probe posts of ``bench_predict.py`` (offline BFCL, cached image features),
``predict(text, image)`` once per post. Passes alternate fused / explicit in one process (switching
``bfcl.model.attention._FUSED_LAYER``), so load hits both alike. Prints ms/post per round, the
median ratio, and the largest emission difference between the two paths.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import bench_predict

    import bfcl
    from bfcl.model import attention

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--posts", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    fused_op = attention._FUSED_LAYER
    if fused_op is None:
        sys.exit(f"torch {torch.__version__} has no torch._transformer_encoder_layer_fwd: nothing to compare")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bench_predict.prepare(work, args.posts)
        p = bfcl.load(work / "model", feature_cache=work / "features", device="cpu")
        torch.set_num_threads(args.threads)
        items = [(q["text"], q["image"]) for q in json.loads((work / "posts.json").read_text(encoding="utf-8"))]
        for text, image in items:  # fill the feature cache and warm the kernels
            p.predict(text, image)

        def per_post(op) -> float:
            attention._FUSED_LAYER = op
            t0 = time.perf_counter()
            for text, image in items:
                p.predict(text, image)
            return (time.perf_counter() - t0) / len(items) * 1e3

        diff = 0.0
        for text, image in items[:8]:
            out = []
            for op in (fused_op, None):
                attention._FUSED_LAYER = op
                out.append(torch.tensor([e.score for e in p.predict(text, image).entities] or [0.0]))
            if out[0].shape == out[1].shape:
                diff = max(diff, float((out[0] - out[1]).abs().max()))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {len(items)} probe posts, batch 1")
        ratios = []
        for r in range(args.rounds):
            f, e = per_post(fused_op), per_post(None)
            ratios.append(f / e)
            print(f"round {r + 1}: fused {f:.2f} ms/post, explicit {e:.2f} ms/post, fused / explicit {f / e:.3f}")
        attention._FUSED_LAYER = fused_op
        print(f"median fused / explicit: {statistics.median(ratios):.3f}; largest entity-score difference: {diff:.1e}")


if __name__ == "__main__":
    main()
