"""Early stopping under torchrun: the main rank decides, every rank leaves the loop.

Before the decision was broadcast, rank 0 stopped and rank 1 hung at the next
all-reduce, so this run would hit the timeout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bfcl.demo.probe import make_probe
from helpers import tiny_encoder, tokenizer


@pytest.mark.integration
def test_early_stopping_ends_every_rank_under_torchrun(tmp_path):
    enc = tmp_path / "tiny-bert"
    tiny_encoder().save_pretrained(enc)
    tokenizer().save_pretrained(enc)
    make_probe(tmp_path / "probe", seed=1, n_train=16, n_dev=8, n_test=0)
    out = tmp_path / "ddp"
    cfg = tmp_path / "run.yaml"
    # lr 1e-12 (0 is refused: lr must be > 0): the weights barely move, dev F1 never improves
    # after epoch 1, so patience 1 must stop after epoch 2 of 30
    cfg.write_text(
        f"model:\n  text_encoder: {enc}\n  image_encoder: none\n  d_model: 32\n  num_heads: 4\n  num_layers: 2\n"
        f"  ffn_dim: 64\n  contrastive_dim: 8\n"
        f"train:\n  data_dir: {tmp_path / 'probe'}\n  epochs: 30\n  batch_size: 4\n  lr: 1.0e-12\n  head_lr: 1.0e-12\n"
        f"  early_stopping_patience: 1\n  progress: false\n  evaluate_test: false\n  cpu: true\n  num_threads: 1\n"
        f"  output_dir: {out}\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "bfcl.cli", "train", "-c", str(cfg)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"a rank hung after early stopping: {(e.stderr or b'')[-2000:]!r}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    epochs = [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert "early stopping after 1 epochs" in r.stderr
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2
