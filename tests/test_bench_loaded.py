"""benchmarks/bench_loaded.py: its CPU hog always ends, whatever happens to the benchmark."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_loaded.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_loaded", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_predict", None)  # bench_loaded put benchmarks/ on the path to import it
    while str(BENCH.parent) in sys.path:
        sys.path.remove(str(BENCH.parent))


def test_the_hog_is_stopped_on_an_error(bench):
    with pytest.raises(RuntimeError, match="benchmark failed"):
        with bench.cpu_hog(2, 60.0) as procs:
            assert len(procs) == 2 and all(p.poll() is None for p in procs)  # running
            raise RuntimeError("benchmark failed")
    assert all(p.poll() is not None for p in procs)


def test_the_hog_ends_by_itself_at_its_deadline(bench):
    """Even if the benchmark is killed outright (no finally runs), each hog process has its own deadline."""
    with bench.cpu_hog(1, 0.2) as procs:
        t0 = time.monotonic()
        procs[0].wait(timeout=20)
        assert procs[0].returncode == 0 and time.monotonic() - t0 < 20
