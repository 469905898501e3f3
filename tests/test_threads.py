"""The thread rule of bfcl.inference.threads, and --threads reaching torch from `bfcl predict` and `bfcl serve`."""

from __future__ import annotations

import os

import pytest
import torch
from typer.testing import CliRunner

from bfcl.cli import app
from bfcl.inference import threads as th
from helpers import tiny_model


@pytest.mark.parametrize(
    ("cores", "load", "expected"),
    [
        (2, 0.0, 2),  # quiet 2-core box: both cores
        (2, 1.0, 2),  # load == cores - 1: still room for us
        (2, 1.5, 1),  # busy: one thread cannot be stalled by a competitor
        (16, 3.0, 2),  # quiet big box: capped at 2
        (16, 15.5, 1),
        (1, 0.0, 1),  # one core: never more than one
        (1, 0.5, 1),
    ],
)
def test_rule(cores, load, expected):
    assert th.default_threads(cores=cores, load=load) == expected


def test_rule_reads_the_machine(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (7.0, 0.0, 0.0))
    monkeypatch.setattr(th, "available_cores", lambda: 4)
    assert th.default_threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert th.default_threads() == 2


def test_no_load_average_counts_as_quiet(monkeypatch):
    def no_loadavg():
        raise OSError("not available")

    monkeypatch.setattr(os, "getloadavg", no_loadavg)
    assert th.default_threads(cores=8) == 2


@pytest.fixture
def set_threads(monkeypatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    return calls


def test_apply_threads(set_threads, monkeypatch):
    assert th.apply_threads(3) == 3
    monkeypatch.setattr(th, "default_threads", lambda: 1)
    assert th.apply_threads() == 1
    assert set_threads == [3, 1]
    with pytest.raises(ValueError, match="threads must be >= 1"):
        th.apply_threads(0)


@pytest.fixture(scope="module")
def text_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tiny_model(image_encoder="none").save_pretrained(path)
    return path


@pytest.mark.parametrize(("flag", "expected"), [(["--threads", "3"], 3), ([], 1)])
def test_predict_threads_reach_torch(text_model_dir, set_threads, monkeypatch, flag, expected):
    monkeypatch.setattr(th, "default_threads", lambda: 1)
    r = CliRunner().invoke(app, ["predict", "-m", str(text_model_dir), "--text", "Obama in Paris", "--json", *flag])
    assert r.exit_code == 0, r.output
    assert set_threads == [expected]


def test_predict_threads_must_be_positive(text_model_dir, set_threads):
    r = CliRunner().invoke(app, ["predict", "-m", str(text_model_dir), "--text", "x", "--threads", "0"])
    assert r.exit_code == 2 and not set_threads


@pytest.mark.parametrize(("flag", "expected"), [(["--threads", "2"], 2), ([], 1)])
def test_serve_threads_reach_torch(text_model_dir, set_threads, monkeypatch, flag, expected):
    import uvicorn

    import bfcl.serving.app as serving

    monkeypatch.setattr(th, "default_threads", lambda: 1)
    seen = {}
    monkeypatch.setattr(serving, "create_app", lambda model, **kw: ("app", model))
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: seen.update(app=application, threads=list(set_threads)))
    r = CliRunner().invoke(app, ["serve", "-m", str(text_model_dir), *flag])
    assert r.exit_code == 0, r.output
    assert seen == {"app": ("app", text_model_dir), "threads": [expected]}  # set before the app is built and run
