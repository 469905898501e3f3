"""Load test of ``bfcl serve``: many concurrent clients, valid and bad requests, memory per round.

    python benchmarks/load_test.py [--model DIR] [--rounds 4] [--requests 500] [--clients 8]

Starts ``bfcl serve`` on 127.0.0.1 in a subprocess (a tiny random-weight model with the
real EfficientNet-Lite0 image path unless ``--model`` is given; the server runs with
``OMP_NUM_THREADS=1`` unless the environment sets it), waits for ``/health``, sends one
warm-up round, then ``--rounds`` rounds of ``--requests`` requests from ``--clients``
threads (one keep-alive httpx client each). The mix is fixed by ``--seed``: valid posts
(text; JSON with a base64 image; a multipart upload; a 4-post batch) and bad ones (body
over the limit, text over the limit, malformed JSON, wrong content type, bad base64, bytes
that are not an image, too many batch items, missing field).

Per round it prints requests/s, p50/p95/p99 latency and the server's RSS before and after;
then errors by kind. It fails (exit 1) when a valid request fails, a bad one gets another
status than expected, the server logs a traceback, or RSS after the last round exceeds
RSS after the first by more than ``--max-growth-mib``. Everything is bounded: each request
by ``--timeout``, the whole run by ``--max-seconds`` (unsent requests are counted as such).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_model, also when imported by a test

HOST = "127.0.0.1"
MAX_BODY = 256 * 1024  # the server runs with this body limit, so "oversized" stays cheap to send
TEXT = "Grace Hopper visits New York with IBM and the Navy #USA @NASA"


@dataclass(frozen=True)
class Kind:
    name: str
    weight: int
    valid: bool
    expect: tuple[int, ...]
    """Accepted status codes; for bad requests, 0 means "connection closed before the answer" is also fine."""


KINDS = [
    Kind("text", 40, True, (200,)),
    Kind("json_image", 10, True, (200,)),
    Kind("multipart_image", 8, True, (200,)),
    Kind("batch", 6, True, (200,)),
    Kind("oversized_body", 6, False, (413, 0)),
    Kind("long_text", 5, False, (422,)),
    Kind("malformed_json", 5, False, (422,)),
    Kind("wrong_content_type", 5, False, (415,)),
    Kind("bad_base64", 5, False, (422,)),
    Kind("not_an_image", 4, False, (422,)),
    Kind("too_many_items", 3, False, (422,)),
    Kind("missing_text", 3, False, (422,)),
]
BY_NAME = {k.name: k for k in KINDS}


def _png(seed: int, size: int = 48) -> bytes:
    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class Payloads:
    """Request builders. Images come from a pool that the warm-up sends once each: the server's
    in-memory feature cache is a bounded LRU (2,048 grids), so fresh images every request would
    grow RSS by design up to that bound and hide a real leak."""

    def __init__(self, pool: int = 16) -> None:
        self.images = [_png(i) for i in range(pool)]
        self.b64 = [base64.b64encode(p).decode("ascii") for p in self.images]

    def build(self, kind: str, rng: random.Random, image: int | None = None) -> dict[str, Any]:
        """httpx.Client.request keyword arguments for one request of ``kind``."""
        k = rng.randrange(len(self.images)) if image is None else image
        text = f"{TEXT} {rng.randrange(10_000)}"
        if kind == "text":
            return {"method": "POST", "url": "/predict", "json": {"text": text}}
        if kind == "json_image":
            return {"method": "POST", "url": "/predict", "json": {"text": text, "image": self.b64[k]}}
        if kind == "multipart_image":
            return {"method": "POST", "url": "/predict", "data": {"text": text}, "files": {"image": ("p.png", self.images[k], "image/png")}}
        if kind == "batch":
            items = [{"text": f"{text} {i}", **({"image": self.b64[(k + i) % len(self.b64)]} if i % 2 else {})} for i in range(4)]
            return {"method": "POST", "url": "/predict/batch", "json": {"items": items}}
        if kind == "oversized_body":
            return {"method": "POST", "url": "/predict", "content": b'{"text": "' + b"a" * (MAX_BODY + 1024) + b'"}', "headers": {"content-type": "application/json"}}
        if kind == "long_text":
            return {"method": "POST", "url": "/predict", "json": {"text": "word " * 1200}}
        if kind == "malformed_json":
            return {"method": "POST", "url": "/predict", "content": b'{"text": "unterminated', "headers": {"content-type": "application/json"}}
        if kind == "wrong_content_type":
            return {"method": "POST", "url": "/predict", "content": text.encode(), "headers": {"content-type": "text/plain"}}
        if kind == "bad_base64":
            return {"method": "POST", "url": "/predict", "json": {"text": text, "image": "%%%not-base64%%%"}}
        if kind == "not_an_image":
            return {"method": "POST", "url": "/predict", "json": {"text": text, "image": base64.b64encode(b"hello, I am text" * 20).decode()}}
        if kind == "too_many_items":
            return {"method": "POST", "url": "/predict/batch", "json": {"items": [{"text": "x"}] * 33}}
        if kind == "missing_text":
            return {"method": "POST", "url": "/predict", "json": {"image": None}}
        raise ValueError(f"unknown request kind {kind!r}")


@dataclass
class Result:
    kind: str
    status: int
    """HTTP status, or 0 when no answer came (connection error)."""
    seconds: float
    error: str = ""


@dataclass
class RoundStats:
    round: int
    requests: int
    seconds: float
    rss_before_mib: float
    rss_after_mib: float
    latencies_ms: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "p99": values[0]}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": q[49], "p95": q[94], "p99": q[98]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / (1024 * 1024)


class Server:
    """``bfcl serve`` in a subprocess on a free loopback port; its log goes to a file."""

    def __init__(self, model: Path, log_path: Path, read_timeout: float = 10.0) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        cmd = [
            sys.executable, "-m", "bfcl.cli", "serve", "--model", str(model), "--host", HOST, "--port", str(self.port),
            "--max-body-bytes", str(MAX_BODY), "--read-timeout", str(read_timeout), "--log-level", "warning",
        ]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bfcl serve exited with code {self.proc.returncode}:\n{self.log_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"bfcl serve did not answer /health within {timeout:.0f} s")

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def schedule(n: int, rng: random.Random) -> list[str]:
    """``n`` request kinds drawn by weight, every kind at least once when n allows."""
    kinds = [k.name for k in KINDS]
    drawn = rng.choices(kinds, weights=[k.weight for k in KINDS], k=max(0, n - len(kinds)))
    out = (kinds if n >= len(kinds) else []) + drawn
    rng.shuffle(out)
    return out[:n]


def send_round(url: str, kinds: list[str], payloads: Payloads, clients: int, timeout: float, deadline: float, seed: int) -> list[Result]:
    import httpx

    lock = threading.Lock()
    queue = list(reversed(kinds))
    results: list[Result] = []

    def worker(wid: int) -> None:
        rng = random.Random(seed * 1000 + wid)
        with httpx.Client(base_url=url, timeout=timeout, trust_env=False) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    kind = queue.pop()
                if time.monotonic() > deadline:
                    with lock:
                        results.append(Result(kind, -1, 0.0, "not sent: --max-seconds reached"))
                    continue
                request = payloads.build(kind, rng)
                t0 = time.perf_counter()
                try:
                    resp = http.request(**request)
                    status, error = resp.status_code, ""
                    if status != 200:
                        detail = resp.json().get("detail", "") if resp.headers.get("content-type", "").startswith("application/json") else resp.text[:80]
                        error = str(detail)[:120]
                    elif kind in ("text", "json_image", "multipart_image"):
                        body = resp.json()
                        if body.get("text", "").split(" ")[:2] != ["Grace", "Hopper"]:
                            status, error = -2, "200 with a wrong body"
                except httpx.HTTPError as e:
                    status, error = 0, type(e).__name__
                dt = time.perf_counter() - t0
                with lock:
                    results.append(Result(kind, status, dt, error))

    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker, i) for i in range(clients)]:
            f.result()
    return results


def run_load_test(
    model: Path | None = None,
    *,
    rounds: int = 4,
    requests: int = 500,
    clients: int = 8,
    warmup: int = 50,
    timeout: float = 60.0,
    max_seconds: float = 1800.0,
    max_growth_mib: float = 64.0,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the load test and return its report (``ok`` says whether every check passed)."""
    import httpx
    from tiny_model import tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="bfcl-load-") as tmp:
        tmp_path = Path(tmp)
        if model is None:
            model = tiny_checkpoint(tmp_path / "model")
        server = Server(model, tmp_path / "server.log")
        try:
            t_start = time.perf_counter()
            server.wait_ready()
            log(f"server ready in {time.perf_counter() - t_start:.1f} s at {server.url} (model {model})")
            payloads = Payloads()
            rng = random.Random(seed)
            deadline = time.monotonic() + max_seconds
            http = httpx.Client(base_url=server.url, timeout=timeout, trust_env=False)
            with http:  # every pooled image once, so the rounds measure a warm feature cache
                for k in range(len(payloads.images)):
                    http.request(**payloads.build("json_image", rng, image=k)).raise_for_status()
            send_round(server.url, schedule(warmup, rng), payloads, clients, timeout, deadline, seed)
            all_results: list[Result] = []
            per_round: list[RoundStats] = []
            for r in range(1, rounds + 1):
                before = rss_mib(server.proc.pid)
                t0 = time.perf_counter()
                res = send_round(server.url, schedule(requests, rng), payloads, clients, timeout, deadline, seed + r)
                seconds = time.perf_counter() - t0
                after = rss_mib(server.proc.pid)
                sent = [x for x in res if x.status != -1]
                stats = RoundStats(r, len(sent), seconds, before, after, percentiles(sorted(1000 * x.seconds for x in sent)))
                per_round.append(stats)
                all_results += res
                lat = stats.latencies_ms
                log(
                    f"round {r}: {stats.requests} requests in {seconds:.1f} s = {stats.rps:.1f} req/s; "
                    f"p50 {lat['p50']:.0f} ms p95 {lat['p95']:.0f} ms p99 {lat['p99']:.0f} ms; "
                    f"server RSS {before:.1f} -> {after:.1f} MiB"
                )
            server_log = server.log_text()
        finally:
            server.stop()

    by_kind: dict[str, Counter] = defaultdict(Counter)
    errors: Counter = Counter()
    valid_failed = unexpected = not_sent = 0
    for x in all_results:
        by_kind[x.kind][x.status] += 1
        kind = BY_NAME[x.kind]
        if x.status == -1:
            not_sent += 1
            continue
        if x.status not in kind.expect:
            if kind.valid:
                valid_failed += 1
            else:
                unexpected += 1
            errors[f"{x.kind}: {x.status} {x.error}"] += 1
    sent = [x for x in all_results if x.status != -1]
    valid = [x for x in sent if BY_NAME[x.kind].valid]
    total_seconds = sum(r.seconds for r in per_round)
    growth = per_round[-1].rss_after_mib - per_round[0].rss_after_mib if per_round else 0.0
    tracebacks = server_log.count("Traceback")
    report = {
        "rounds": [
            {"round": r.round, "requests": r.requests, "seconds": round(r.seconds, 2), "rps": round(r.rps, 2),
             **{k: round(v, 1) for k, v in r.latencies_ms.items()},
             "rss_before_mib": round(r.rss_before_mib, 1), "rss_after_mib": round(r.rss_after_mib, 1)}
            for r in per_round
        ],
        "requests": len(sent),
        "valid_requests": len(valid),
        "valid_failed": valid_failed,
        "bad_requests": len(sent) - len(valid),
        "bad_unexpected_status": unexpected,
        "not_sent": not_sent,
        "rps": round(len(sent) / total_seconds, 2) if total_seconds else 0.0,
        "latency_ms_all": {k: round(v, 1) for k, v in percentiles(sorted(1000 * x.seconds for x in sent)).items()},
        "latency_ms_valid": {k: round(v, 1) for k, v in percentiles(sorted(1000 * x.seconds for x in valid)).items()},
        "status_by_kind": {k: {str(s): n for s, n in sorted(c.items())} for k, c in sorted(by_kind.items())},
        "unexpected": dict(errors.most_common(20)),
        "rss_growth_mib": round(growth, 1),
        "server_tracebacks": tracebacks,
        "clients": clients,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "1 (set for the server)"),
    }
    report["ok"] = (
        valid_failed == 0 and unexpected == 0 and not_sent == 0 and tracebacks == 0 and growth <= max_growth_mib
    )
    log("status by kind: " + "; ".join(f"{k} {dict(v)}" for k, v in report["status_by_kind"].items()))
    log(
        f"total {report['requests']} requests ({report['valid_requests']} valid) at {report['rps']} req/s; "
        f"valid p50/p95/p99 {report['latency_ms_valid']['p50']}/{report['latency_ms_valid']['p95']}/"
        f"{report['latency_ms_valid']['p99']} ms"
    )
    for line, n in errors.most_common(20):
        log(f"  unexpected x{n}: {line}")
    log(
        f"valid_failed {valid_failed} bad_unexpected {unexpected} not_sent {not_sent} "
        f"server_tracebacks {tracebacks} rss_growth_mib {growth:.1f} ok {report['ok']}"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="checkpoint to serve (default: a tiny random-weight model)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=500, help="requests per round")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="bound on the whole run")
    parser.add_argument("--max-growth-mib", type=float, default=64.0, help="allowed RSS growth, first to last round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    for name in ("rounds", "requests", "clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    report = run_load_test(
        args.model, rounds=args.rounds, requests=args.requests, clients=args.clients, warmup=args.warmup,
        timeout=args.timeout, max_seconds=args.max_seconds, max_growth_mib=args.max_growth_mib, seed=args.seed,
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
