"""bfcl's hand-written CRF vs pytorch-crf: speed of NLL forward+backward and of Viterbi, and agreement.

    python benchmarks/bench_crf.py [--threads N] [--repeats R] [--warmup W]

Both CRFs get the same parameters, emissions, tags and (variable-length) masks.
The two are timed interleaved (bfcl, pytorch-crf, pytorch-crf, bfcl, ...), so a
change of load on the machine hits both alike; times are medians over repeats
after warm-up, in milliseconds, and "speed-up" is pytorch-crf's median over bfcl's.

Agreement: "same paths" is the share of items whose Viterbi paths are identical;
max|dNLL| is the largest per-item NLL difference, and "err" columns give each
CRF's largest error against a float64 pytorch-crf, which shows how much of that
difference is float32 rounding (NLL values are in the hundreds at T=64).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torchcrf

from bfcl.model.crf import CRF

CONFIGS = [(16, 40, 9), (32, 64, 9)]  # (batch, T, K); K=9 is Twitter-2015/2017's BIO tag set


def interleaved_ms(fn_a, fn_b, warmup: int, repeats: int) -> tuple[float, float]:
    """Median ms of two functions timed in alternating order (ABBA...), so load drifts cancel."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    ta, tb = [], []
    for r in range(repeats):
        order = ((fn_a, ta), (fn_b, tb)) if r % 2 == 0 else ((fn_b, tb), (fn_a, ta))
        for fn, times in order:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ta), 1000 * statistics.median(tb)


def bench(B: int, T: int, K: int, warmup: int, repeats: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ours, ref = CRF(K), torchcrf.CRF(K, batch_first=True)
    ref64 = torchcrf.CRF(K, batch_first=True).double()
    with torch.no_grad():
        for name in ("start_transitions", "end_transitions", "transitions"):
            getattr(ref, name).copy_(getattr(ours, name))
            getattr(ref64, name).copy_(getattr(ours, name).double())
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = torch.arange(T)[None] < lengths[:, None]
    emissions = (torch.randn(B, T, K, generator=g) * 3).requires_grad_()
    tags = torch.randint(K, (B, T), generator=g)

    def step(crf_loss, params):
        params = list(params)

        def run():
            for p in params:
                p.grad = None
            emissions.grad = None
            crf_loss().backward()

        return run

    ours_fb = step(lambda: ours.neg_log_likelihood(emissions, tags, mask, reduction="sum"), ours.parameters())
    ref_fb = step(lambda: -ref(emissions, tags, mask, reduction="sum"), ref.parameters())
    em = emissions.detach()
    r = {}
    r["ours_fb"], r["ref_fb"] = interleaved_ms(ours_fb, ref_fb, warmup, repeats)
    r["ours_dec"], r["ref_dec"] = interleaved_ms(lambda: ours.decode(em, mask), lambda: ref.decode(em, mask), warmup, repeats)
    with torch.no_grad():
        nll_ours = ours.neg_log_likelihood(em, tags, mask, reduction="none").double()
        nll_ref = -ref(em, tags, mask, reduction="none").double()
        nll_64 = -ref64(em.double(), tags, mask, reduction="none")
    r["nll_diff"] = (nll_ours - nll_ref).abs().max().item()
    r["err_ours"] = (nll_ours - nll_64).abs().max().item()
    r["err_ref"] = (nll_ref - nll_64).abs().max().item()
    paths_ours, paths_ref = ours.decode(em, mask), ref.decode(em, mask)
    r["same_paths"] = sum(a == b for a, b in zip(paths_ours, paths_ref)) / B
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, pytorch-crf {torchcrf.__version__}, threads {torch.get_num_threads()}")
    print(f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores), "
          f"median of {args.repeats} after {args.warmup} warm-up, interleaved, times in ms")
    head = (f"{'B':>3} {'T':>3} {'K':>2} | {'NLL fwd+bwd bfcl':>16} {'torchcrf':>9} {'speed-up':>8} | "
            f"{'decode bfcl':>11} {'torchcrf':>9} {'speed-up':>8} | {'same paths':>10} {'max|dNLL|':>9} "
            f"{'err bfcl':>9} {'err torchcrf':>12}")
    print(head)
    print("-" * len(head))
    results = []
    for B, T, K in CONFIGS:
        r = bench(B, T, K, args.warmup, args.repeats)
        results.append(r)
        print(f"{B:>3} {T:>3} {K:>2} | {r['ours_fb']:>16.2f} {r['ref_fb']:>9.2f} {r['ref_fb'] / r['ours_fb']:>7.2f}x | "
              f"{r['ours_dec']:>11.2f} {r['ref_dec']:>9.2f} {r['ref_dec'] / r['ours_dec']:>7.2f}x | "
              f"{r['same_paths']:>10.0%} {r['nll_diff']:>9.2e} {r['err_ours']:>9.2e} {r['err_ref']:>12.2e}")
    # issue 11's targets, so a run says plainly whether it meets them
    nll = min(r["ref_fb"] / r["ours_fb"] for r in results)
    dec = min(r["ref_dec"] / r["ours_dec"] for r in results)
    same = all(r["same_paths"] == 1.0 for r in results)
    exact = max(r["err_ours"] for r in results)
    print(f"\ntargets: NLL fwd+bwd >= 3.0x: {nll:.2f}x {'met' if nll >= 3.0 else 'NOT met'}; "
          f"decode >= 2.0x: {dec:.2f}x {'met' if dec >= 2.0 else 'NOT met'}; "
          f"identical paths: {'yes' if same else 'NO'}; bfcl NLL within 1e-4 of float64: "
          f"{'yes' if exact <= 1e-4 else 'NO'} ({exact:.1e})")


if __name__ == "__main__":
    main()
