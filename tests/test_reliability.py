"""Reliability, measured: honest CI, the server under bad clients and load, the robustness harness.

* CI cannot go green with the real-data tests skipped (BFCL_REQUIRE_DATA, the shared_data marker).
* The server answers a stalled upload with 408, refuses a multipart body cut before its closing
  boundary, keeps error details short, and does not log a client's disconnect as an error.
* ``benchmarks/load_test.py``: a small run, zero failed valid requests.
* ``benchmarks/robustness.py``: every case handled, ``cases N handled N failures 0``.
"""

from __future__ import annotations

import ast
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

pytest_plugins = ["pytester"]


# --------------------------------------------------------------------------- honest CI


def test_require_data_turns_shared_data_skips_into_failures(pytester: pytest.Pytester, monkeypatch) -> None:
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile(
        test_x="""
        import pytest

        def test_fixture_user(shared_data):
            pass

        @pytest.mark.shared_data
        def test_marked_and_skipping():
            pytest.skip("no data here")

        def test_unrelated_skip():
            pytest.skip("not about the data")
        """
    )
    monkeypatch.setenv("BFCL_SHARED_DATA", str(pytester.path / "nowhere"))
    monkeypatch.delenv("BFCL_REQUIRE_DATA", raising=False)
    relaxed = pytester.runpytest("-rs", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    relaxed.assert_outcomes(skipped=3)
    relaxed.stdout.fnmatch_lines(["*real Twitter data not found at*nowhere*"])  # -rs shows why

    monkeypatch.setenv("BFCL_REQUIRE_DATA", "1")
    strict = pytester.runpytest("-rs", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    strict.assert_outcomes(errors=1, failed=1, skipped=1)  # the fixture skip is a setup error
    strict.stdout.fnmatch_lines(["*BFCL_REQUIRE_DATA=1 but this shared_data test skipped*"])
    marked = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-m", "shared_data", "--collect-only", "-q")
    marked.stdout.fnmatch_lines(["*test_fixture_user*", "*test_marked_and_skipping*"])


def _reads_shared_data(node: ast.FunctionDef) -> bool:
    """Takes the fixture, uses conftest's SHARED_DATA, or builds a path with a "shared" part."""
    if "shared_data" in {a.arg for a in node.args.args}:
        return True
    return any(
        (isinstance(n, ast.Name) and n.id == "SHARED_DATA") or (isinstance(n, ast.Constant) and n.value == "shared")
        for n in ast.walk(node)
    )


def test_every_test_reading_the_shared_data_is_marked() -> None:
    """A test reaches ../shared/data through the fixture (auto-marked by conftest) or carries the marker."""
    unmarked = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            marked = any("shared_data" in ast.unparse(d) for d in node.decorator_list)
            via_fixture = "shared_data" in {a.arg for a in node.args.args}
            if _reads_shared_data(node) and not (marked or via_fixture):
                unmarked.append(f"{path.name}::{node.name}")
    assert unmarked == []


def test_ci_script_requires_the_shared_data() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'export BFCL_SHARED_DATA="$(cd .. && pwd)/shared/data"' in script
    assert "export BFCL_REQUIRE_DATA=1" in script
    assert script.rstrip().endswith("python -m pytest -q")


# --------------------------------------------------------------------------- server under bad clients


@contextmanager
def _serving(app) -> Iterator[int]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def port(tmp_path_factory) -> Iterator[int]:
    from bfcl.serving.app import ServeLimits, create_app
    from helpers import tiny_model

    ckpt = tmp_path_factory.mktemp("srv") / "ckpt"
    tiny_model(image_encoder="none").save_pretrained(ckpt)
    with _serving(create_app(ckpt, limits=ServeLimits(read_timeout_s=0.5))) as p:
        yield p


def _raw(port: int, data: bytes, close_after: float | None = None, wait: float = 10.0) -> tuple[bytes, float]:
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        if close_after is not None:
            time.sleep(close_after)
            return b"", time.monotonic() - t0
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got, time.monotonic() - t0


def test_stalled_upload_gets_408_and_a_closed_connection(port: int) -> None:
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"te"
    answer, seconds = _raw(port, head)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert b"no data for 0.5 s" in answer and b"connection: close" in answer.lower()
    assert 0.4 < seconds < 5  # the timeout, then the server closes; not the 5 s keep-alive


def test_client_leaving_mid_body_is_not_an_error(port: int, caplog: pytest.LogCaptureFixture) -> None:
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"te"
    with caplog.at_level(logging.INFO, logger="bfcl.serving"):
        _raw(port, head, close_after=0.2)
        time.sleep(0.3)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert any("client disconnected" in r.getMessage() for r in caplog.records)


def test_multipart_without_closing_boundary_is_refused(port: int) -> None:
    body = (b"--B\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nObama in Berlin\r\n"
            b"--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n\xff\xd8\xff")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as http:
        cut = http.post("/predict", content=body, headers={"content-type": "multipart/form-data; boundary=B"})
        whole = http.post("/predict", content=body.split(b"\r\n--B\r\n")[0] + b"\r\n--B--\r\n",
                          headers={"content-type": "multipart/form-data; boundary=B"})
    assert cut.status_code == 422 and "no closing boundary" in cut.json()["detail"]
    assert whole.status_code == 200 and whole.json()["text"] == "Obama in Berlin"


def test_error_details_do_not_echo_huge_input(port: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as http:
        resp = http.post("/predict", json={"text": "x", "k" * 200_000: 1})
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert len(detail) <= 300 and "200000 characters" in detail and "kkkk" in detail


# --------------------------------------------------------------------------- load test, robustness harness


@pytest.mark.slow
def test_load_test_small_run_has_no_failed_valid_request() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from load_test import run_load_test
    finally:
        sys.path.remove(str(BENCHMARKS))
    lines: list[str] = []
    report = run_load_test(rounds=2, requests=120, clients=4, warmup=20, max_seconds=240, log=lines.append)
    assert report["requests"] == 240 and report["not_sent"] == 0, lines
    assert report["valid_requests"] > 100 and report["valid_failed"] == 0, lines
    assert report["bad_requests"] > 50 and report["bad_unexpected_status"] == 0, report["unexpected"]
    assert report["server_tracebacks"] == 0
    assert set(report["status_by_kind"]) == {
        "text", "json_image", "multipart_image", "batch", "oversized_body", "long_text", "malformed_json",
        "wrong_content_type", "bad_base64", "not_an_image", "too_many_items", "missing_text",
    }
    assert report["ok"], lines


@pytest.mark.slow
def test_robustness_harness(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "robustness.py"), "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    n = len(results)
    failures = {r["name"]: r["reason"] for r in results if not r["handled"]}
    assert failures == {}, "every case must be handled"
    assert lines[-1] == f"cases {n} handled {n} failures 0"
    assert n >= 80 and proc.returncode == 0
