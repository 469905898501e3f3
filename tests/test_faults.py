"""``bfcl train`` killed with SIGKILL, mid-epoch or in the middle of a save, then resumed:
it continues from the last complete epoch and ends where an uninterrupted run ends,
or says clearly that there is nothing to resume. Tiny random model, CPU, fixed seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from bfcl.cli import app
from bfcl.demo.probe import make_probe
from bfcl.errors import CheckpointError
from bfcl.training.config import load_run_config
from bfcl.training.trainer import train
from helpers import tiny_encoder, tokenizer

EPOCHS = 3
STEPS_PER_EPOCH = 4  # 32 training posts, batch 8

# Runs `bfcl train` in this process after arranging its own death at a chosen moment.
KILLER = r'''
import os, signal, sys, time, types
from pathlib import Path

mode, arg, marker, config = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
if mode == "pause-at-step":  # stop inside a training step and wait for the test's SIGKILL
    import bfcl.model.modeling as modeling
    forward, calls = modeling.BFCL.forward, [0]
    def paused(self, *a, **kw):
        if self.training:
            calls[0] += 1
            if calls[0] == arg:
                marker.write_text("paused")
                time.sleep(600)
        return forward(self, *a, **kw)
    modeling.BFCL.forward = paused
elif mode == "die-writing-last":  # every file of last/ written, manifest and renames not yet done
    import bfcl.training.checkpoint as ckpt
    save = ckpt.save_training_state
    def dying(path, optimizer, scheduler, state):
        save(path, optimizer, scheduler, state)
        if state["epoch"] + 1 == arg:
            os.kill(os.getpid(), signal.SIGKILL)
    ckpt.save_training_state = dying
elif mode == "die-between-renames":  # old last/ renamed aside, the new one not yet renamed in
    import bfcl.model.checkpoint_files as cf
    real, seen = os.replace, [0]
    def replace(src, dst):
        real(src, dst)
        if Path(dst).name.startswith(".last.old-"):
            seen[0] += 1
            if seen[0] == arg - 1:  # the first aside happens in epoch 2's save
                os.kill(os.getpid(), signal.SIGKILL)
    cf.os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    cf.os.replace = replace
from bfcl.cli import app
app(["train", "-c", config], standalone_mode=False)
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    enc = root / "tiny-bert"
    tiny_encoder().save_pretrained(enc)
    tokenizer().save_pretrained(enc)
    make_probe(root / "probe", seed=1, n_train=32, n_dev=12, n_test=0)
    (root / "killer.py").write_text(KILLER)
    return root


def config(setup: Path, out: Path) -> Path:
    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(
        f"model:\n  text_encoder: {setup / 'tiny-bert'}\n  image_encoder: none\n  d_model: 32\n  num_heads: 4\n"
        f"  num_layers: 2\n  ffn_dim: 64\n  contrastive_dim: 8\n"
        f"train:\n  data_dir: {setup / 'probe'}\n  epochs: {EPOCHS}\n  batch_size: 8\n  lr: 0.001\n  head_lr: 0.001\n"
        f"  progress: false\n  evaluate_test: false\n  cpu: true\n  num_threads: 1\n  output_dir: {out}\n"
    )
    return cfg


@pytest.fixture(scope="module")
def uninterrupted(setup) -> Path:
    out = setup / "straight"
    train(*load_run_config(config(setup, out)))
    return out


def killed_run(setup: Path, out: Path, mode: str, arg: int) -> subprocess.CompletedProcess | None:
    """Start `bfcl train` in a subprocess that dies (or pauses to be killed) as ``mode`` says."""
    marker = out.parent / f"{out.name}.paused"
    cmd = [sys.executable, str(setup / "killer.py"), mode, str(arg), str(marker), str(config(setup, out))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if mode == "pause-at-step":
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training never reached the step"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    return None


def assert_same_result(a: Path, b: Path) -> None:
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert sb["dev"]["f1"] == sa["dev"]["f1"]
    assert sb["best_epoch"] == sa["best_epoch"] and sb["epochs"] == sa["epochs"] == EPOCHS
    for folder in ("last", "best"):
        wa, wb = (load_file(str(p / folder / "model.safetensors")) for p in (a, b))
        assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa), folder
    epochs = [json.loads(line)["epoch"] for line in (b / "log.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))  # no epoch logged twice
    leftovers = sorted(p.name for p in b.iterdir() if p.name.startswith("."))
    assert leftovers == []


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(setup, uninterrupted):
    out = setup / "mid-epoch"
    killed_run(setup, out, "pause-at-step", STEPS_PER_EPOCH + 2)  # inside epoch 2
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["epoch"] == 0  # epoch 1 is the last complete one
    r = CliRunner().invoke(app, ["train", "-c", str(config(setup, out)), "--resume"])
    assert r.exit_code == 0, r.output
    assert_same_result(uninterrupted, out)


@pytest.mark.parametrize("mode", ["die-writing-last", "die-between-renames"])
def test_sigkill_during_a_save_resumes_from_a_complete_epoch(setup, uninterrupted, mode):
    out = setup / mode
    killed_run(setup, out, mode, 2)
    if mode == "die-writing-last":
        assert json.loads((out / "last" / "trainer_state.json").read_text())["epoch"] == 0
        assert list(out.glob(".last.tmp-*")), "the killed save's temporary folder is left behind"
    else:
        assert not (out / "last").exists() and list(out.glob(".last.old-*"))
    train(*load_run_config(config(setup, out)), resume=True)
    assert_same_result(uninterrupted, out)


def test_sigkill_during_the_first_save_leaves_nothing_to_resume(setup):
    out = setup / "first-save"
    killed_run(setup, out, "die-writing-last", 1)
    with pytest.raises(CheckpointError, match=r"cannot resume: .*first-save/last holds no complete checkpoint"):
        train(*load_run_config(config(setup, out)), resume=True)
    assert not list(out.glob(".last.tmp-*"))  # the half-written save was cleared away


def test_an_inconsistent_old_last_folder_is_refused(setup, uninterrupted, tmp_path):
    """The issue's case: epoch-2 weights beside an epoch-1 trainer_state.json, no manifest."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    (out / "last" / "manifest.json").unlink()
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    state["epoch"] = 0
    (out / "last" / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"config\.json is from epoch 3 but trainer_state\.json from epoch 1"):
        train(*load_run_config(config(setup, out)), resume=True)
