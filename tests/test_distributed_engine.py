"""``bfcl predict --engine ray`` / ``bfcl.distributed.predict_ray`` on a real local Ray cluster.

One cluster for the module, every port bound to loopback (checked); each run uses 2 workers
with one torch thread each. Chunks of 8 posts, so ~50 posts make several chunks spread over
both workers; the output must be byte-identical to the local ``bfcl predict`` with the same
chunks. Starting workers is the slow part (they import torch and load the model), so the CLI
starts its own once and the API tests share one pool. Needs the extra
(``pip install "bfcl[ray]"``); without it the cluster tests skip, saying so.
"""

from __future__ import annotations

import ipaddress
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import bfcl.cli.predict as predict_cli
from bfcl.cli import app
from bfcl.cli.predict_stream import complete_lines, part_path
from bfcl.errors import ConfigError, DataFormatError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHUNK = 8
WORDS = "Obama Paris went to the NBA game with Kolo and @Apple at #London today :) RT new http://t.co/x 👋🏽 Zürich".split()


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(predict_cli, "CHUNK_POSTS", CHUNK)


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """A Ray cluster on this machine, started the way ``--engine ray`` starts one. 4 CPU slots:
    the CLI's 2 workers and the shared pool's 2 can then exist at once whatever the test order."""
    ray = pytest.importorskip("ray", reason='the Ray engine needs its extra: pip install "bfcl[ray]"')
    from bfcl.distributed import start_local_cluster

    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process by something else")
    start_local_cluster(num_cpus=4)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def posts(tmp_path_factory) -> Path:
    """50 posts: text and token lists, integer and string ids, 4 pictures (relative paths), one missing."""
    root = tmp_path_factory.mktemp("posts")
    (root / "pics").mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(rng.integers(0, 256, (40 + 10 * k, 64, 3), dtype=np.uint8)).save(root / "pics" / f"{k}.png")
    r = random.Random(3)
    path = root / "posts.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(50):
            words = [r.choice(WORDS) for _ in range(r.randint(1, 30))]
            post: dict = {"id": f"p{i}" if i % 4 else i}
            if i % 5:
                post["text"] = " ".join(words)
            else:
                post["tokens"] = words
            if i % 3 == 0:
                post["image"] = f"pics/{i % 4}.png"
            if i == 10:
                post["image"] = "pics/nowhere.png"
            f.write(json.dumps(post, ensure_ascii=False) + "\n")
    return path


def predict(*args: str):
    return CliRunner().invoke(app, ["predict", *args])


def local(model: Path, posts: Path, out: Path, cache: Path):
    """``bfcl predict`` in this process: the reference."""
    return predict("-m", str(model), "-i", str(posts), "-o", str(out), "--threads", "1", "--feature-cache", str(cache))


@pytest.fixture(scope="module")
def reference(image_model_dir, posts, tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(predict_cli, "CHUNK_POSTS", CHUNK)
        r = local(image_model_dir, posts, work / "out.jsonl", work / "cache")
    assert r.exit_code == 0, r.output
    return (work / "out.jsonl").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pool(cluster, image_model_dir, tmp_path_factory):
    from bfcl.distributed import RayPool

    with RayPool(image_model_dir, workers=2, feature_cache=tmp_path_factory.mktemp("pool-cache")) as p:
        yield p


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv6 socket on the IPv4 loopback
    return (mapped or ip).is_loopback


@pytest.mark.slow
def test_local_cluster_listens_on_loopback_only(cluster):
    import psutil

    assert {n["NodeManagerAddress"] for n in cluster.nodes()} == {"127.0.0.1"}
    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {psutil.Process().pid}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert listening, "no Ray listening socket found among this process and its children"
    assert all(_loopback(c.laddr.ip) for c in listening), listening


@pytest.mark.slow
def test_cli_output_is_byte_identical_to_local(cluster, image_model_dir, posts, reference, tmp_path):
    out = tmp_path / "ray.jsonl"
    r = predict("-m", str(image_model_dir), "-i", str(posts), "-o", str(out), "--engine", "ray", "--workers", "2",
                "--feature-cache", str(tmp_path / "cache"))
    assert r.exit_code == 0, r.output
    assert out.read_text(encoding="utf-8") == reference
    rows = [json.loads(line) for line in reference.splitlines()]
    assert len(rows) == 50 and sum(row["has_image"] for row in rows) == 17  # and one picture not found
    assert "nowhere.png" in r.output and "ray: 2 worker(s) on 1 node(s)" in r.output
    assert "50 prediction(s)" in r.output and "images used 17" in r.output
    assert not part_path(out).exists()


@pytest.mark.slow
def test_api_spreads_chunks_and_resumes(pool, image_model_dir, posts, reference, tmp_path):
    from bfcl.distributed import predict_ray

    out = tmp_path / "out.jsonl"
    report = predict_ray(image_model_dir, posts, out, chunk_posts=CHUNK, pool=pool)
    assert out.read_text(encoding="utf-8") == reference
    assert report.written == 50 and report.workers == 2 and report.with_image == 17 and len(report.missing) == 1
    assert sum(report.chunks_per_worker) == 7 and min(report.chunks_per_worker) >= 2  # both workers predicted
    # a run killed after 19 lines and half of the 20th: resume gives the same file
    lines = reference.splitlines(keepends=True)
    out.unlink()
    part_path(out).write_text("".join(lines[:19]) + lines[19][:20], encoding="utf-8")
    report = predict_ray(image_model_dir, posts, out, chunk_posts=CHUNK, resume=True, pool=pool)
    assert report.resumed == 19 and report.written == 50
    assert out.read_text(encoding="utf-8") == reference


@pytest.mark.slow
def test_a_bad_line_keeps_the_chunks_before_it(pool, image_model_dir, posts, tmp_path):
    from bfcl.distributed import predict_ray

    bad = tmp_path / "bad.jsonl"
    lines = posts.read_text(encoding="utf-8").splitlines(keepends=True)
    bad.write_text("".join(lines[:29]) + "{oops\n" + "".join(lines[29:]), encoding="utf-8")
    r = local(image_model_dir, bad, tmp_path / "local.jsonl", tmp_path / "cache")
    assert r.exit_code == 1 and f"{bad}:30: not valid JSON" in " ".join(r.output.split())
    out = tmp_path / "ray.jsonl"
    with pytest.raises(DataFormatError, match=r":30: not valid JSON"):
        predict_ray(image_model_dir, bad, out, chunk_posts=CHUNK, pool=pool)
    assert complete_lines(part_path(out)) == 3 * CHUNK  # the chunks before the bad line's
    assert part_path(out).read_bytes() == part_path(tmp_path / "local.jsonl").read_bytes()


@pytest.mark.slow
def test_an_unreadable_image_ends_the_run_or_is_skipped(pool, image_model_dir, tmp_path):
    from bfcl.data.images import ImageLoadError
    from bfcl.distributed import predict_ray

    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(json.dumps({"id": i, "text": "Kolo in Paris", "image": "broken.png" if i == 11 else None}) + "\n"
                             for i in range(20)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(ImageLoadError, match="broken.png"):
        predict_ray(image_model_dir, posts, out, chunk_posts=CHUNK, image_on_error="error", pool=pool)
    assert complete_lines(part_path(out)) == CHUNK  # the chunk before the bad picture's
    report = predict_ray(image_model_dir, posts, out, chunk_posts=CHUNK, pool=pool)  # default: from its text
    assert report.written == 20 and report.unusable == 1 and report.with_image == 0


@pytest.mark.slow
def test_a_killed_worker_is_restarted_with_the_same_output(pool, image_model_dir, posts, reference, tmp_path):
    """A worker process that dies (here SIGKILL, as the OOM killer does) is restarted by Ray, fetches
    the model again, and the chunks sent to it are run again: the output does not change."""
    import os
    import signal

    from bfcl.distributed import predict_ray

    before = [w["pid"] for w in pool.worker_info()]
    os.kill(before[0], signal.SIGKILL)
    out = tmp_path / "out.jsonl"
    report = predict_ray(image_model_dir, posts, out, chunk_posts=CHUNK, pool=pool)
    assert out.read_text(encoding="utf-8") == reference and report.written == 50
    after = [w["pid"] for w in pool.worker_info()]
    assert after[0] != before[0] and after[1] == before[1]


@pytest.mark.slow
def test_a_pool_refuses_per_run_cluster_settings(pool, image_model_dir, text_model_dir, posts, tmp_path):
    from bfcl.distributed import predict_ray

    with pytest.raises(ConfigError, match="workers: set on the pool"):
        predict_ray(image_model_dir, posts, tmp_path / "o.jsonl", workers=3, pool=pool)
    with pytest.raises(ConfigError, match="the pool's workers run"):
        predict_ray(text_model_dir, posts, tmp_path / "o.jsonl", pool=pool)


# ----------------------------------------------------------------------------- no cluster needed


def test_usage_errors(text_model_dir, posts, tmp_path):
    r = predict("-m", str(text_model_dir), "-i", str(posts), "--workers", "2")
    assert r.exit_code == 2 and "--workers applies to --engine ray" in r.output
    r = predict("-m", str(text_model_dir), "-i", str(posts), "--address", "auto")
    assert r.exit_code == 2 and "--address applies to --engine ray" in r.output
    r = predict("-m", str(text_model_dir), "--text", "Kolo in Paris", "--engine", "ray")
    assert r.exit_code == 2 and "not --text" in r.output
    umt = tmp_path / "data.txt"
    umt.write_text("IMGID:1\nKolo\tB-PER\n\n", encoding="utf-8")
    r = predict("-m", str(text_model_dir), "-i", str(umt), "--engine", "ray")
    assert r.exit_code == 2 and "--engine ray reads JSONL" in r.output


def test_without_ray_the_error_names_the_extra(text_model_dir, posts, monkeypatch):
    from bfcl.distributed.ray_engine import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra sees
    with pytest.raises(ConfigError, match=r'pip install "bfcl\[ray\]"'):
        import_ray()
    r = predict("-m", str(text_model_dir), "-i", str(posts), "--engine", "ray")
    assert r.exit_code == 2 and 'pip install "bfcl[ray]"' in r.output
