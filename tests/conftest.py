"""Shared fixtures. Real Twitter data lives outside the repo (never committed);
tests that need it skip with a stated reason where it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("BFCL_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


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
