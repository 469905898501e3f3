"""The thread rule of bfcl.threads (at start and while a model runs), and --threads reaching torch from
`bfcl predict`, `bfcl serve` and `bfcl train`."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from bfcl import threads as th
from bfcl.cli import app


@pytest.mark.parametrize(
    ("cores", "load", "expected"),
    [
        (2, 0.0, 2),  # quiet 2-core box: both cores
        (2, 0.4, 2),  # a little noise: still two free cores
        (2, 1.0, 1),  # one competitor: two threads would oversubscribe the cores and stall each other
        (2, 1.5, 1),  # busy: one thread cannot be stalled by a competitor
        (2, 9.0, 1),
        (16, 3.0, 2),  # quiet big box: capped at 2
        (16, 15.5, 1),
        (4, 2.4, 2),  # 1.6 free cores round to 2
        (4, 2.6, 1),
        (1, 0.0, 1),  # one core: never more than one
        (1, 0.5, 1),
    ],
)
def test_rule(cores, load, expected):
    assert th.default_threads(cores=cores, load=load) == expected


def test_training_takes_up_to_its_own_maximum():
    assert th.threads_for(16, 3.0, most=8) == 8
    assert th.threads_for(16, 12.0, most=8) == 4
    assert th.threads_for(16, 20.0, most=8) == 1


def test_rule_reads_the_machine(monkeypatch):
    monkeypatch.setattr(th, "available_cores", lambda: 4)
    monkeypatch.setattr(th, "competing_tasks", lambda: 0.0)
    monkeypatch.setattr(os, "getloadavg", lambda: (7.0, 0.0, 0.0))
    assert th.default_threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert th.default_threads() == 2


def test_a_load_that_just_arrived_counts(monkeypatch):
    """The 1-minute load average lags: the runnable threads of other processes right now count too."""
    monkeypatch.setattr(th, "available_cores", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    monkeypatch.setattr(th, "competing_tasks", lambda: 2.0)
    assert th.default_threads() == 1


def test_no_load_average_counts_as_quiet(monkeypatch):
    def no_loadavg():
        raise OSError("not available")

    monkeypatch.setattr(os, "getloadavg", no_loadavg)
    monkeypatch.setattr(th, "competing_tasks", lambda: None)
    assert th.default_threads(cores=8) == 2


def test_competing_tasks_leaves_out_this_process(monkeypatch):
    readings = iter([5, 3, 4])
    monkeypatch.setattr(th, "_runnable_now", lambda: next(readings))
    monkeypatch.setattr(th, "_own_runnable", lambda: 2)
    assert th.competing_tasks(samples=3, spacing=0.0) == pytest.approx((3 + 1 + 2) / 3)
    monkeypatch.setattr(th, "_runnable_now", lambda: None)
    assert th.competing_tasks(samples=3, spacing=0.0) is None


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_the_machine_is_read_on_linux():
    assert th._own_runnable() >= 1  # at least this thread, reading
    assert th._runnable_now() >= 1
    assert th.competing_tasks(samples=2, spacing=0.0) >= 0.0


@pytest.fixture
def torch_threads(monkeypatch) -> list[int]:
    """torch's thread count as a plain number; the list of every value set."""
    calls: list[int] = []
    state = {"n": 2}
    monkeypatch.setattr(torch, "get_num_threads", lambda: state["n"])

    def set_num_threads(n: int) -> None:
        calls.append(n)
        state["n"] = n

    monkeypatch.setattr(torch, "set_num_threads", set_num_threads)
    return calls


def test_follower_drops_to_one_thread_when_load_arrives_and_comes_back(torch_threads):
    others = {"now": 0.0}
    clock = SimpleNamespace(t=0.0)
    f = th.LoadFollower(cores=2, every=2.0, sample=lambda: others["now"], clock=lambda: clock.t, estimate=0.0)
    assert f.check() == 2 and torch_threads == []  # not due: nothing read, nothing set
    others["now"] = 2.0  # a hog per core arrives
    clock.t = 1.0
    assert f.check() == 2  # not due yet
    clock.t = 2.5
    assert f.check() == 1 and torch_threads == [1]  # estimate (0 + 2) / 2 = 1 competitor: one thread
    clock.t = 5.0
    assert f.check() == 1  # estimate 1.5
    others["now"] = 0.0  # the hog ends
    clock.t = 7.5
    assert f.check() == 1  # estimate 0.75: not two free cores yet
    clock.t = 10.0
    assert f.check() == 2 and torch_threads == [1, 2]  # estimate 0.375: back to two


def test_follower_sets_each_calling_thread_and_keeps_its_own_maximum(torch_threads):
    clock = SimpleNamespace(t=0.0)
    f = th.LoadFollower(cores=16, most=8, every=1.0, sample=lambda: 4.0, clock=lambda: clock.t, estimate=4.0)
    clock.t = 5.0
    assert f.check() == 8 and torch_threads == [8]  # 12 free cores, at most 8
    torch.set_num_threads(3)  # another thread (or someone) changed it: the next check puts it back
    assert f.check() == 8 and torch_threads == [8, 3, 8]


def test_follower_without_a_reading_keeps_its_count(torch_threads):
    f = th.LoadFollower(cores=2, every=0.0, sample=lambda: None, clock=lambda: 1.0)
    assert f.check() == 2 and f.estimate is None and torch_threads == []


def test_follow_load_runs_at_each_forward_pass(torch_threads):
    seen = []
    module = torch.nn.Linear(2, 2)
    f = th.follow_load(module, cores=2, every=0.0, sample=lambda: seen.append(1) or 2.0, estimate=2.0)
    module(torch.zeros(1, 2))
    module(torch.zeros(1, 2))
    assert len(seen) == 2 and torch_threads == [1]
    f.handle.remove()
    module(torch.zeros(1, 2))
    assert len(seen) == 2


def test_start_sets_the_rule_now(torch_threads, monkeypatch):
    monkeypatch.setattr(th, "competing_tasks", lambda samples=5, spacing=0.01: 1.0)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    f = th.LoadFollower.start(most=4, cores=4, sample=lambda: 1.0)
    assert torch_threads == [3] and f.threads == 3 and f.most == 4


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


@pytest.fixture
def followed(monkeypatch) -> list:
    """The modules `bfcl predict` / `bfcl serve` asked bfcl.threads to follow."""
    import bfcl.cli.predict as predict_cli
    import bfcl.cli.serve as serve_cli

    seen: list = []
    monkeypatch.setattr(predict_cli, "follow_load", seen.append)
    monkeypatch.setattr(serve_cli, "follow_load", seen.append)
    return seen


@pytest.mark.parametrize(("flag", "expected", "follows"), [(["--threads", "3"], 3, False), ([], 1, True)])
def test_predict_threads_reach_torch(text_model_dir, set_threads, followed, monkeypatch, flag, expected, follows):
    monkeypatch.setattr(th, "default_threads", lambda: 1)
    r = CliRunner().invoke(app, ["predict", "-m", str(text_model_dir), "--text", "Obama in Paris", "--json", *flag])
    assert r.exit_code == 0, r.output
    assert set_threads == [expected]
    # auto: the loaded model's forward passes keep re-checking; a pinned count stays pinned
    assert [type(m).__name__ for m in followed] == (["BFCL"] if follows else [])


def test_predict_file_follows_the_load_too(text_model_dir, set_threads, followed, monkeypatch, tmp_path):
    monkeypatch.setattr(th, "default_threads", lambda: 1)
    posts = tmp_path / "posts.jsonl"
    posts.write_text('{"text": "Obama in Paris"}\n', encoding="utf-8")
    r = CliRunner().invoke(app, ["predict", "-m", str(text_model_dir), "--input", str(posts), "--output", str(tmp_path / "out.jsonl")])
    assert r.exit_code == 0, r.output
    assert [type(m).__name__ for m in followed] == ["BFCL"]


def test_predict_threads_must_be_positive(text_model_dir, set_threads):
    r = CliRunner().invoke(app, ["predict", "-m", str(text_model_dir), "--text", "x", "--threads", "0"])
    assert r.exit_code == 2 and not set_threads


@pytest.mark.parametrize(("flag", "expected", "follows"), [(["--threads", "2"], 2, False), ([], 1, True)])
def test_serve_threads_reach_torch(text_model_dir, set_threads, followed, monkeypatch, flag, expected, follows):
    import uvicorn

    import bfcl.serving.app as serving

    monkeypatch.setattr(th, "default_threads", lambda: 1)
    seen = {}
    model = torch.nn.Linear(1, 1)
    application = SimpleNamespace(path=text_model_dir, state=SimpleNamespace(predictor=SimpleNamespace(model=model)))
    monkeypatch.setattr(serving, "create_app", lambda path, **kw: application if path == text_model_dir else None)
    monkeypatch.setattr(uvicorn, "run", lambda app_, **kw: seen.update(app=app_, threads=list(set_threads)))
    r = CliRunner().invoke(app, ["serve", "-m", str(text_model_dir), *flag])
    assert r.exit_code == 0, r.output
    assert seen == {"app": application, "threads": [expected]}  # set before the app is built and run
    assert followed == ([model] if follows else [])


def test_torch_default_is_remembered_before_bfcl_changes_it(set_threads, monkeypatch):
    monkeypatch.setattr(th, "_TORCH_DEFAULT", [])
    monkeypatch.setattr(torch, "get_num_threads", lambda: 6)
    th.apply_threads(1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # what torch says once bfcl set 1
    assert th.torch_default_threads() == 6 and set_threads == [1]
