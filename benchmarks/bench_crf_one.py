"""One post's CRF work at prediction: Viterbi and the span scores of one sequence (B = 1).

    python benchmarks/bench_crf_one.py [--length 16]

A post predicted alone (``Predictor.predict``) decodes and scores its entities one sequence
at a time, the case the numpy path of ``bfcl.model.crf`` serves; ``bench_crf.py`` measures
the batched path. One torch thread; mean over 2000 calls after 50 warm-up calls.
"""

from __future__ import annotations

import argparse
import time

import torch

from bfcl.model.crf import CRF

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=16, help="words in the post")
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    crf = CRF(len(LABELS), labels=LABELS)
    emissions = torch.randn(1, args.length, len(LABELS))
    spans = [[(2, 4, [1, 2], [2]), (7, 8, [3], [4])]]
    print(f"torch {torch.__version__}, 1 thread, T = {args.length}, K = {len(LABELS)}, BIO constraints at call time")
    for name, call in (
        ("viterbi", lambda: crf.viterbi(emissions, None, True)),
        ("span scores (2 spans)", lambda: crf.span_marginals(emissions, None, spans, True)),
    ):
        for _ in range(50):
            call()
        t0 = time.perf_counter()
        for _ in range(args.calls):
            call()
        print(f"{name}: {(time.perf_counter() - t0) / args.calls * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
