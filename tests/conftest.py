"""Shared fixtures. Real Twitter data lives outside the repo (never committed);
tests that need it skip with a stated reason where it is absent.

``BFCL_SHARED_DATA`` points at the data (default ``../shared/data`` beside the repo).
``BFCL_REQUIRE_DATA=1`` (set by ``.ci/run``) turns every skip of a ``shared_data`` test
into a failure, so CI cannot go green with the real-data tests silently skipped.
Any test that takes the ``shared_data`` fixture is marked ``shared_data`` automatically.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("BFCL_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
REQUIRE_DATA = os.environ.get("BFCL_REQUIRE_DATA", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A tiny random BERT saved like any local transformers checkpoint (a ``text_encoder`` setting)."""
    from helpers import save_tiny_encoder

    return save_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def image_model_dir(tmp_path_factory) -> Path:
    """A saved tiny model with the real packaged EfficientNet-Lite0 image path (max_length 32)."""
    from helpers import tiny_model

    path = tmp_path_factory.mktemp("image_model")
    tiny_model(image_dim=1280).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def text_model_dir(tmp_path_factory) -> Path:
    """A saved tiny model that reads no image: cheap to load, for CLI runs and tests without a cluster."""
    from helpers import tiny_model

    path = tmp_path_factory.mktemp("text_model")
    tiny_model(image_encoder="none").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine extra threads
    spin against other jobs (several times slower); restore the setting for other modules.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    """Path to the Twitter-2015/2017 data, or skip: a user's machine has no ../shared."""
    if not (SHARED_DATA / "twitter2017" / "train.txt").is_file():
        pytest.skip(f"real Twitter data not found at {SHARED_DATA} (set BFCL_SHARED_DATA to run these tests)")
    return SHARED_DATA


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that reads the real data through the fixture carries the marker, whether or not it says so."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()) and item.get_closest_marker("shared_data") is None:
            item.add_marker(pytest.mark.shared_data)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under BFCL_REQUIRE_DATA=1, a skipped ``shared_data`` test is reported as failed, with the skip reason."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_DATA and report.skipped and item.get_closest_marker("shared_data") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"BFCL_REQUIRE_DATA=1 but this shared_data test skipped: {reason}"
