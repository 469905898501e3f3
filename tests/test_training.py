"""Training loop: logs, model selection, checkpoints, resume, config overrides."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bfcl.demo.probe import make_probe
from bfcl.model.configuration import BFCLConfig
from bfcl.training.config import TrainConfig, load_run_config
from bfcl.training.trainer import train



@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("probe")
    make_probe(d, seed=1, n_train=32, n_dev=12, n_test=12)
    return d


def configs(encoder_dir: Path, probe_dir: Path, out: Path, **train_kw) -> tuple[BFCLConfig, TrainConfig]:
    model = BFCLConfig(
        text_encoder=str(encoder_dir), image_encoder="none", d_model=32, num_heads=4, ffn_dim=64,
        num_layers=2, dropout=0.0, contrastive_dim=8,
    )
    tc = TrainConfig(
        data_dir=str(probe_dir), epochs=2, batch_size=8, lr=1e-3, head_lr=1e-3, output_dir=str(out),
        progress=False, map_other_to_misc=False, **train_kw,
    )
    return model, tc


def test_train_logs_selects_and_scores(tiny_encoder_dir, probe_dir, tmp_path):
    model_cfg, tc = configs(tiny_encoder_dir, probe_dir, tmp_path / "run")
    summary = train(model_cfg, tc)
    lines = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all({"loss", "dev", "samples_per_second"} <= set(r) for r in lines)
    best = max(lines, key=lambda r: r["dev"]["f1"])
    assert summary["best_epoch"] == best["epoch"]
    assert summary["dev"]["f1"] == pytest.approx(best["dev"]["f1"])
    assert "test" in summary and set(summary["test"]) >= {"precision", "recall", "f1", "per_type"}
    files = {p.name for p in (tmp_path / "run" / "best").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer"} <= files
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["best_epoch"] == summary["best_epoch"]


def test_resume_continues_exactly(tiny_encoder_dir, probe_dir, tmp_path, monkeypatch):
    """Two epochs straight == killed after epoch 1, then resumed (dropout off, fixed seeds)."""
    import bfcl.training.trainer as trainer

    model_cfg, tc = configs(tiny_encoder_dir, probe_dir, tmp_path / "straight", evaluate_test=False)
    train(model_cfg, tc)
    model_cfg, tc = configs(tiny_encoder_dir, probe_dir, tmp_path / "resumed", evaluate_test=False)

    def die(record):  # called once epoch 1 is saved and logged
        raise KeyboardInterrupt("killed after the first epoch")

    monkeypatch.setattr(trainer, "_print_epoch", die)
    with pytest.raises(KeyboardInterrupt):
        train(replace(model_cfg), replace(tc))
    monkeypatch.undo()
    train(model_cfg, tc, resume=True)
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    log = (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in log] == [1, 2]
    assert not list((tmp_path / "resumed" / "last").glob("*.pt")) and not list((tmp_path / "resumed" / "last").glob("*.bin"))


def test_resume_without_checkpoint_is_a_clear_error(tiny_encoder_dir, probe_dir, tmp_path, monkeypatch):
    """One line naming last/, raised before any data is read or a model is built."""
    import bfcl.model.modeling as modeling
    import bfcl.training.trainer as trainer
    from bfcl.errors import CheckpointError

    def must_not_run(*a, **kw):
        raise AssertionError("resume failed too late")

    monkeypatch.setattr(modeling, "build_model", must_not_run)
    monkeypatch.setattr(trainer, "read_split", must_not_run)
    model_cfg, tc = configs(tiny_encoder_dir, probe_dir, tmp_path / "none")
    with pytest.raises(CheckpointError, match=r"cannot resume: .*none/last holds no complete checkpoint") as e:
        train(model_cfg, tc, resume=True)
    assert "\n" not in str(e.value)


def test_cli_train_errors_are_one_line(tiny_encoder_dir, probe_dir, tmp_path):
    """--resume without last/, an output_dir that is a file, a text encoder that is not one:
    one 'Error:' line naming the folder or setting, no traceback."""
    from typer.testing import CliRunner

    from bfcl.cli import app

    cfg = tiny_run_yaml(tmp_path, tiny_encoder_dir, probe_dir, tmp_path / "run")
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    cases = [
        (["--resume"], 1, f"cannot resume: {tmp_path / 'run' / 'last'} holds no complete checkpoint"),
        (["--set", f"train.output_dir={a_file}"], 2, f"train.output_dir {a_file} exists and is not a folder"),
        (["--set", f"model.text_encoder={tmp_path / 'nowhere'}"], 2, "nowhere': no such folder"),
        (["--set", f"model.text_encoder={probe_dir}"], 2, "holds no transformers model (no config.json)"),
        (["--set", "model.multimodal=true", "--set", "model.image_encoder=efficientnet-lite0",
          "--set", f"train.images_dir={tmp_path / 'imgs'}"], 2, f"train.images_dir {tmp_path / 'imgs'} does not exist"),
    ]
    for args, code, message in cases:
        r = CliRunner().invoke(app, ["train", "-c", str(cfg), *args])
        errors = [l for l in r.stderr.splitlines() if l.startswith("Error")]
        assert r.exit_code == code and isinstance(r.exception, (SystemExit, type(None))), (args, r.output)
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in r.output, (args, r.stderr)


def test_config_file_and_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model:\n  d_model: 64\n  num_heads: 4\ntrain:\n  epochs: 3\n")
    m, t = load_run_config(f, ["model.dropout=0.2", "train.lr=1e-4", "fusion=gated", "seed=5"])
    assert (m.d_model, m.dropout, m.fusion, t.epochs, t.lr, t.seed) == (64, 0.2, "gated", 3, 1e-4, 5)
    with pytest.raises(ValueError, match="unknown setting"):
        load_run_config(f, ["model.nope=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_run_config(f, ["epochs"])
    f.write_text("model:\n  fusion: sideways\n")
    with pytest.raises(ValueError, match="fusion='sideways'"):
        load_run_config(f)
    f.write_text("modle:\n  d_model: 64\n")
    with pytest.raises(ValueError, match="unknown section"):
        load_run_config(f)


def test_shipped_configs_parse():
    root = Path(__file__).resolve().parents[1] / "configs"
    for f in sorted(root.glob("*.yaml")):
        m, t = load_run_config(f)
        assert t.epochs > 0, f
    paper, _ = load_run_config(root / "paper-twitter2017.yaml")
    assert (paper.text_encoder, paper.image_encoder, paper.d_model, paper.num_bottlenecks) == (
        "bert-base-cased", "hf:microsoft/resnet-152", 768, 4
    )
    # Sect. 4.1.3: dot-product similarity, mid fusion with L = 8, tau = 0.6
    assert (paper.num_layers, paper.fusion_stage, paper.temperature, paper.similarity) == (8, "mid", 0.6, "dot")


def tiny_run_yaml(tmp_path: Path, encoder_dir: Path, probe_dir: Path, out: Path, extra: str = "") -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"model:\n  text_encoder: {encoder_dir}\n  image_encoder: none\n  d_model: 32\n  num_heads: 4\n"
        f"  num_layers: 2\n  ffn_dim: 64\ntrain:\n  data_dir: {probe_dir}\n  epochs: 1\n  batch_size: 8\n"
        f"  progress: false\n  output_dir: {out}\n{extra}"
    )
    return cfg


def test_cli_train_writes_results_and_evaluate_scores_the_checkpoint(tiny_encoder_dir, probe_dir, tmp_path):
    from typer.testing import CliRunner

    from bfcl.cli import app
    from bfcl.data.umt import find_split, read_samples

    cfg = tiny_run_yaml(tmp_path, tiny_encoder_dir, probe_dir, tmp_path / "run")
    r = CliRunner().invoke(app, ["train", "-c", str(cfg), "--set", "train.lr=1e-3", "--results", str(tmp_path / "res.json"), "--name", "tiny"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["model"] == "tiny" and res["epochs"] == 1 and "--set" in res["command"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert res["training_data"] == summary["training_data"] and res["training_data"]["train_posts"] == 32
    assert res["tokenisation"] == summary["tokenisation"] and res["tokenisation"]["style"]
    assert set(res["test"]) >= {"precision", "recall", "f1", "per_type"}
    # how the run learned travels with the result: one point per epoch, as the run's own log has it
    log_lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert res["curve"] == summary["curve"] and len(res["curve"]) == res["epochs"] == len(log_lines)
    assert res["curve"][0]["loss"] == log_lines[0]["loss"] > 0
    assert res["curve"][0]["dev_f1"] == log_lines[0]["dev"]["f1"]

    test_file = find_split(probe_dir, "test")
    out = tmp_path / "pred.txt"
    r = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path / "run" / "best"), "--data", str(test_file), "--output", str(out), "--json"])
    assert r.exit_code == 0, r.output
    scores = json.loads(r.output[r.output.index("{"):])
    assert scores["f1"] == pytest.approx(res["test"]["f1"])
    pred = read_samples(out)
    gold = read_samples(test_file)
    assert [p.tokens for p in pred] == [g.tokens for g in gold]
    # the written predictions score the same through `bfcl evaluate --gold --pred`
    r = CliRunner().invoke(app, ["evaluate", "--gold", str(test_file), "--pred", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output[r.output.index("{"):])["f1"] == pytest.approx(res["test"]["f1"])


@pytest.mark.integration
def test_two_processes_under_torchrun(tiny_encoder_dir, probe_dir, tmp_path):
    """The same command runs data-parallel: torchrun starts 2 CPU ranks (gloo)."""
    import subprocess
    import sys

    cfg = tiny_run_yaml(tmp_path, tiny_encoder_dir, probe_dir, tmp_path / "ddp", "  cpu: true\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "bfcl.cli", "train", "-c", str(cfg)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert (tmp_path / "ddp" / "best" / "model.safetensors").is_file()
    assert len((tmp_path / "ddp" / "log.jsonl").read_text().splitlines()) == 1


def test_adamw_is_fused_where_torch_has_it_and_makes_the_same_update(monkeypatch):
    import bfcl.training.trainer as trainer

    def fit(make):
        torch.manual_seed(0)
        m = torch.nn.Linear(8, 3)
        opt = make([{"params": list(m.parameters()), "lr": 1e-2, "weight_decay": 0.01}])
        for i in range(20):
            m(torch.randn(4, 8, generator=torch.Generator().manual_seed(i))).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
        return opt, torch.cat([p.detach().flatten() for p in m.parameters()])

    opt, fused = fit(trainer._adamw)
    _, loop = fit(lambda groups: torch.optim.AdamW(groups, foreach=False))
    assert opt.param_groups[0]["fused"]  # torch >= 2.4 has the CPU kernel (the project needs newer)
    torch.testing.assert_close(fused, loop, atol=1e-6, rtol=1e-5)

    real = torch.optim.AdamW

    def without_kernel(groups, fused=None, **kw):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(groups, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", without_kernel)
    assert not trainer._adamw([{"params": [torch.nn.Parameter(torch.zeros(2))]}]).param_groups[0].get("fused")


def test_features_are_kept_in_the_caches_storage_type_and_read_in_chunks(tmp_path, monkeypatch):
    """float16 storage: the cache hands out float32 copies of float16 values, so keeping float16 is exact."""
    import bfcl.training.trainer as trainer
    from bfcl.data.types import Sample

    class Cache:
        dtype = torch.float16

    class Processor:
        feature_cache = Cache()

        def __init__(self) -> None:
            self.calls: list[int] = []

        def image_features(self, paths, on_error="none"):
            self.calls.append(len(paths))
            return [None if p is None else torch.full((2, 3), 1 / 3, dtype=torch.float16).float() for p in paths]

    for i in (0, 1, 2, 4):
        (tmp_path / f"{i}.jpg").write_bytes(b"x")
    samples = [Sample(str(i), ["w"], ["O"], image_id=str(i)) for i in range(5)]  # 3.jpg is missing
    monkeypatch.setattr(trainer, "FEATURE_CHUNK", 2)
    proc = Processor()
    tc = TrainConfig(images_dir=str(tmp_path), image_extensions=[".jpg"])
    split = trainer._read_images(proc, samples, tc)
    assert proc.calls == [2, 2, 1]
    assert [f is None for f in split.images] == [False, False, False, True, False]
    f = split.images[0]
    assert f.dtype == torch.float16 and torch.equal(f.float(), torch.full((2, 3), 1 / 3, dtype=torch.float16).float())
    assert trainer._read_images(proc, samples, replace(tc, images_dir=None)).images == [None] * 5


def test_training_threads_follow_the_load_unless_pinned(tiny_encoder_dir, probe_dir, tmp_path, monkeypatch):
    import bfcl.training.trainer as trainer
    from bfcl.threads import LoadFollower

    checks = []

    class Recording(LoadFollower):
        def check(self) -> int:
            checks.append(self.most)
            return super().check()

    monkeypatch.setattr(trainer, "LoadFollower", Recording)
    model_cfg, tc = configs(tiny_encoder_dir, probe_dir, tmp_path / "auto", evaluate_test=False)
    train(model_cfg, replace(tc, epochs=1))  # num_threads=0: auto
    assert len(checks) == 4  # 32 posts in batches of 8: a check before every step
    checks.clear()
    model_cfg, tc = configs(tiny_encoder_dir, probe_dir, tmp_path / "pinned", evaluate_test=False, num_threads=1)
    train(model_cfg, replace(tc, epochs=1))
    assert checks == [] and torch.get_num_threads() == 1
