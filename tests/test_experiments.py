"""`bfcl experiment`: the registry, the runner (runs, resume, reuse, failures), aggregation, reports, plots."""

from __future__ import annotations

import json
import re
import statistics
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bfcl.cli import app
from bfcl.demo.probe import make_probe
from bfcl.errors import ConfigError
from bfcl.experiments.aggregate import build_report, summarize, to_markdown
from bfcl.experiments.registry import (
    EXPERIMENTS,
    FIG6A_BOTTLENECKS,
    PAPER_TABLE2,
    Experiment,
    Row,
    get_experiment,
    paper_f1_mismatch,
)
from bfcl.experiments.runner import ExperimentError, ExperimentRunner, infer_paper_dataset, write_reports



@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("probe")
    make_probe(d, seed=1, n_train=24, n_dev=8, n_test=8)
    return d


@pytest.fixture(scope="module")
def base_yaml(tmp_path_factory, tiny_encoder_dir) -> Path:
    """A tiny random-weight BFCL over the real packaged image encoder (the probe's pictures)."""
    p = tmp_path_factory.mktemp("cfg") / "base.yaml"
    p.write_text(
        f"model:\n  text_encoder: {tiny_encoder_dir}\n  image_encoder: efficientnet-lite0\n  d_model: 32\n"
        "  num_heads: 4\n  ffn_dim: 64\n  num_layers: 2\n  fusion_stage: early\n  num_bottlenecks: 2\n  contrastive_dim: 8\n"
        "  dropout: 0.0\n  max_length: 32\n"
        "train:\n  epochs: 2\n  batch_size: 8\n  lr: 1.0e-3\n  head_lr: 1.0e-3\n  map_other_to_misc: false\n"
        "  num_threads: 1\n"
    )
    return p


def _runner(exp: str, probe_dir: Path, out: Path, base: Path, **kw) -> tuple[ExperimentRunner, list[str]]:
    lines: list[str] = []
    kw.setdefault("seeds", 1)
    r = ExperimentRunner(EXPERIMENTS[exp], data=probe_dir, out=out, base_config=base, echo=lines.append, **kw)
    return r, lines


# ------------------------------------------------------------------ registry


def test_row_keys_are_unique_across_experiments_and_file_safe():
    """All experiments may share one OUT: their run files must never collide."""
    keys = [r.key for e in EXPERIMENTS.values() for r in e.rows]
    assert len(keys) == len(set(keys))
    assert all(k and all(c.isalnum() or c == "-" for c in k) for k in keys)


def test_registry_rows_match_the_paper():
    t3 = get_experiment("table3")
    assert [r.name for r in t3.rows] == ["BFCL", "-BF", "-CL", "-MCA"]
    assert t3.row("-CL").overrides == ("model.lambda_vt=0", "model.lambda_tv=0")
    assert t3.row("full").paper["twitter2015"]["F1"] == 74.54 and t3.row("full").paper["twitter2017"]["F1"] == 85.70
    assert [r.x for r in get_experiment("fig6a").rows] == [float(m) for m in FIG6A_BOTTLENECKS]
    assert all("model.num_layers=6" in r.overrides for r in get_experiment("fig6a").rows)
    fig6b = get_experiment("fig6b")
    for stage in ("early", "mid"):  # every L of 0..12 is a point of both lines
        assert sorted(r.x for r in fig6b.rows if stage in r.series) == [float(n) for n in range(13)]
    assert all(r.paper is None for name in ("fig6a", "fig6b") for r in get_experiment(name).rows)
    assert PAPER_TABLE2["BFCL"]["twitter2015"]["MISC"] == 40.30
    with pytest.raises(KeyError, match="did you mean table3"):
        get_experiment("tabel3")


def test_paper_f1_mismatch_flags_the_copied_rows():
    flagged = {
        (e, r.name, ds) for e in ("table3", "table4", "table5") for r in get_experiment(e).rows
        for ds, sc in (r.paper or {}).items() if paper_f1_mismatch(sc) is not None
    }  # fmt: skip
    assert flagged == {
        ("table3", "-BF", "twitter2015"), ("table3", "-CL", "twitter2015"), ("table3", "-MCA", "twitter2015"),
        ("table4", "ResNet-101", "twitter2017"), ("table5", "AF", "twitter2015"), ("table5", "GF", "twitter2015"),
    }  # fmt: skip
    assert paper_f1_mismatch({"P": 69.22, "R": 74.59, "F1": 73.44}) == 71.8


def test_infer_paper_dataset(tmp_path):
    assert infer_paper_dataset(tmp_path / "twitter2015") == "twitter2015"
    assert infer_paper_dataset(tmp_path / "Twitter-2017") == "twitter2017"
    assert infer_paper_dataset(tmp_path / "probe") is None


# ------------------------------------------------------------------ aggregation


def test_summarize_uses_the_sample_standard_deviation():
    s = summarize([70.0, 72.0, 77.0])
    assert s["mean"] == pytest.approx(73.0) and s["n"] == 3
    assert s["std"] == pytest.approx(((9 + 1 + 16) / 2) ** 0.5)  # n - 1 = 2
    assert summarize([71.5]) == {"mean": 71.5, "std": None, "n": 1, "values": [71.5]}
    assert summarize([])["mean"] is None


def _record(key: str, seed: int, p: float, r: float, f1: float) -> dict:
    per_type = {t: {"precision": f1, "recall": f1, "f1": f1, "support": 3} for t in ("PER", "LOC", "ORG", "MISC")}
    return {"row_key": key, "seed": seed, "dev": {"f1": f1}, "test": {"precision": p, "recall": r, "f1": f1, "per_type": per_type}}


def test_report_tables_put_the_paper_beside_the_measured():
    exp = get_experiment("table3")
    results = {"full": [_record("full", 42, 0.75, 0.74, 0.745), _record("full", 43, 0.76, 0.75, 0.755)]}
    statuses = {"no-mca": {"selected": True, "skip_reason": "not available in this build: x", "failures": []}}
    report = build_report(exp, results, statuses=statuses, paper_dataset="twitter2015", meta={"seeds": [42, 43]})
    full = report["rows"][0]
    assert full["n"] == 2 and full["test"]["F1"]["mean"] == pytest.approx(75.0)
    assert full["test"]["F1"]["std"] == pytest.approx(statistics.stdev([74.5, 75.5]))
    assert report["rows"][3]["status"] == "skipped" and report["rows"][1]["status"] == "not run"
    md = to_markdown(report)
    line = next(l for l in md.splitlines() if l.startswith("| BFCL |"))
    assert "75.00 ± 0.71" in line and "74.54" in line and "+0.46" in line
    assert "skipped: not available in this build" in md
    assert "the paper's P and R give F1 71.80, not the printed 73.44" in md
    # data that is neither of the paper's sets: both datasets' F1, no difference
    md = to_markdown(build_report(exp, results, statuses={}, paper_dataset=None, meta={}))
    assert "paper F1 Twitter-2015 | paper F1 Twitter-2017" in md and "+0.46" not in md
    # Table 2 reports per-type F1, as the paper does
    t2 = build_report(get_experiment("table2"), {"bfcl": [_record("bfcl", 42, 0.7, 0.7, 0.7)]}, statuses={},
                      paper_dataset="twitter2017", meta={})  # fmt: skip
    assert "| Model | PER | LOC | ORG | MISC | P | R | F1 | n |" in to_markdown(t2)


# ------------------------------------------------------------------ planning


def test_plan_composes_rows_and_skips_what_this_build_lacks(probe_dir, base_yaml, tmp_path):
    r, _ = _runner("table2", probe_dir, tmp_path / "out", base_yaml)
    plan = {p.row.key: p for p in r.plan}
    assert all(p.skip_reason is None for p in r.plan), {k: p.skip_reason for k, p in plan.items()}
    assert "architecture: umt" in plan["umt"].config_text and "d_model" not in plan["umt"].config_text
    # settings a build does not have: reported, never faked
    exp = Experiment("t", "t", "t", rows=(Row("X", "x", ("model.no_such_setting=1",)), Row("Y", "y", ("model.fusion=nope",))))
    r = ExperimentRunner(exp, data=probe_dir, out=tmp_path / "out", base_config=base_yaml, echo=lambda m: None)
    assert [p.skip_reason.split(":")[0] for p in r.plan] == ["not available in this build"] * 2
    # a text-only row drops the base's multimodal and image settings rather than being refused
    text = plan["bert-crf"].config_text
    assert plan["bert-crf"].skip_reason is None and "multimodal: false" in text
    assert "image_encoder" not in text and "num_bottlenecks" not in text and "images_dir" not in text
    assert "images_dir" in plan["bfcl"].config_text
    # --text-only: the text rows and BFCL
    r, _ = _runner("table2", probe_dir, tmp_path / "out", base_yaml, text_only=True)
    assert {p.row.key for p in r.plan if p.selected} == {"bilstm-crf", "cnn-bilstm-crf", "bert", "bert-crf", "bert-bilstm-crf", "bfcl"}
    # the word-level rows start from their own 30 epochs (a new model, not a fine-tuned encoder),
    # which --set and --quick still override; the encoder rows keep the base's budget
    plan = {p.row.key: p for p in r.plan}
    assert "epochs: 30" in plan["bilstm-crf"].config_text and "+ train.epochs=30 +" in plan["bilstm-crf"].config_text
    assert "epochs: 2" in plan["bert-crf"].config_text
    for kw in ({"sets": ["train.epochs=3"]}, {"quick": True}):
        r, _ = _runner("table2", probe_dir, tmp_path / "out", base_yaml, rows=["bilstm-crf"], **kw)
        assert "epochs: 30" not in r.plan[0].config_text and not r.plan[0].notes
    # -BF drops the bottleneck settings that fusion=none never reads
    r, _ = _runner("table3", probe_dir, tmp_path / "out", base_yaml)
    assert "num_bottlenecks" not in r.plan[1].config_text and "fusion: none" in r.plan[1].config_text
    # table4: weights absent here are a stated skip
    r, _ = _runner("table4", probe_dir, tmp_path / "out", base_yaml)
    plan = {p.row.key: p for p in r.plan}
    assert "not on this machine" in plan["resnet-50"].skip_reason
    assert plan["resnet-200"].skip_reason.startswith("needs --resnet200 PATH")
    assert plan["efficientnet-lite0"].skip_reason is None
    # --dry-run lists the commands and writes nothing
    out = tmp_path / "dry"
    r, lines = _runner("table4", probe_dir, out, base_yaml, rows=["efficientnet-lite0", "resnet-50"])
    assert [o.status for o in r.run(dry_run=True)] == ["skipped", "to run"]
    assert "to run: bfcl train -c" in lines[-1] and "--set train.seed=42" in lines[-1] and not out.exists()


def test_runner_refuses_bad_options(probe_dir, base_yaml, tmp_path):
    with pytest.raises(ExperimentError, match="use --seeds instead"):
        _runner("table3", probe_dir, tmp_path, base_yaml, sets=["train.seed=1"])
    with pytest.raises(ExperimentError, match="does not exist"):
        _runner("table3", tmp_path / "nowhere", tmp_path, base_yaml)
    with pytest.raises(ExperimentError, match="has no row 'full2'"):
        _runner("table3", probe_dir, tmp_path, base_yaml, rows=["full2"])
    with pytest.raises(ConfigError, match="unknown setting model.d_modle"):
        _runner("table3", probe_dir, tmp_path, base_yaml, sets=["model.d_modle=3"])


# ------------------------------------------------------------------ running


def test_runs_resume_reuse_and_report(probe_dir, base_yaml, tmp_path, monkeypatch):
    out = tmp_path / "out"
    r, lines = _runner("table3", probe_dir, out, base_yaml, seeds=2, quick=True, rows=["full", "-CL"], in_process=True)
    outcomes = r.run()
    assert [o.status for o in outcomes] == ["trained"] * 4, lines
    assert lines[0].startswith("[1/4] table3 BFCL seed 42 ...") and any(l.startswith("[4/4] table3 -CL seed 43") for l in lines)
    for key in ("full", "no-cl"):
        for seed in (42, 43):
            rec = json.loads((out / "runs" / f"{key}-seed{seed}.json").read_text())
            assert rec["seed"] == seed and rec["row_key"] == key and rec["epochs"] == 1  # --quick: one epoch
            assert rec["training_data"]["train_posts"] == 24 and 0 <= rec["test"]["f1"] <= 1
            # the weights are removed, the log and summary kept
            ckpt = out / "checkpoints" / f"{key}-seed{seed}"
            assert (ckpt / "summary.json").is_file() and not (ckpt / "best").exists()
    assert (out / "configs" / "no-cl.yaml").read_text().count("lambda_vt: 0") == 1

    report = write_reports(r, None)
    saved = json.loads((out / "table3.json").read_text())
    full = saved["rows"][0]
    f1s = [100 * json.loads((out / "runs" / f"full-seed{s}.json").read_text())["test"]["f1"] for s in (42, 43)]
    assert full["n"] == 2 and full["test"]["F1"]["mean"] == pytest.approx(statistics.fmean(f1s))
    assert full["test"]["F1"]["std"] == pytest.approx(statistics.stdev(f1s))
    assert saved["rows"][1]["status"] == "not run (not selected)"  # -BF
    assert (out / "table3.md").read_text() == report["markdown"] and "| -CL |" in report["markdown"]

    # resume: a second invocation trains nothing
    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(ExperimentRunner, "_train", no_training)
    r, lines = _runner("table3", probe_dir, out, base_yaml, seeds=2, quick=True, rows=["full", "-CL"], in_process=True)
    assert [o.status for o in r.run()] == ["done earlier"] * 4 and "done earlier" in lines[0]
    # Table 5's BF is Table 3's full row: reused, not retrained
    r, lines = _runner("table5", probe_dir, out, base_yaml, seeds=2, quick=True, rows=["BF"], in_process=True)
    assert [o.status for o in r.run()] == ["reused"] * 2
    assert json.loads((out / "runs" / "bf-seed42.json").read_text())["reused_from"] == "full-seed42.json"
    # other settings in the same OUT are refused, never mixed into the mean
    r, _ = _runner("table3", probe_dir, out, base_yaml, seeds=2, rows=["full"], in_process=True)
    with pytest.raises(ExperimentError, match="made with other settings"):
        r.run()


def test_a_failed_run_is_recorded_and_the_rest_go_on(probe_dir, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(f"model:\n  text_encoder: {tmp_path / 'no-such-encoder'}\n  image_encoder: none\n")
    r, lines = _runner("table3", probe_dir, tmp_path / "out", base, rows=["full", "-CL"], in_process=True)
    outcomes = r.run()
    assert [o.status for o in outcomes] == ["failed", "failed"]
    failed = json.loads((tmp_path / "out" / "runs" / "full-seed42.failed.json").read_text())
    assert "no such folder" in failed["reason"] and failed["seed"] == 42
    report = write_reports(r, None)
    assert report["rows"][0]["status"] == "failed" and "failed: model.text_encoder" in report["markdown"]


def test_fig6a_plot_is_a_png(probe_dir, base_yaml, tmp_path):
    r, _ = _runner("fig6a", probe_dir, tmp_path / "out", base_yaml, seeds=2, rows=["m2", "m4", "m8"])
    fingerprints = {p.row.key: p.settings_sha256 for p in r.plan}
    for key, f1s in (("m2", (0.70, 0.72)), ("m4", (0.75, 0.74)), ("m8", (0.71, 0.69))):
        for seed, f1 in zip((42, 43), f1s):
            rec = {**_record(key, seed, f1, f1, f1), "settings_sha256": fingerprints[key]}
            (tmp_path / "out" / "runs").mkdir(parents=True, exist_ok=True)
            (tmp_path / "out" / "runs" / f"{key}-seed{seed}.json").write_text(json.dumps(rec))
    report = write_reports(r, "twitter2015")
    png = tmp_path / "out" / "fig6a.png"
    assert str(png) in report["files"]
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert (width, height) == (720, 504) and png.stat().st_size > 10_000
    assert "not given numerically" in report["markdown"]
    assert report["rows"][1]["test"]["F1"]["mean"] == pytest.approx(74.5)


# ------------------------------------------------------------------ command line


def test_cli_unknown_experiment_and_missing_data(tmp_path):
    def plain(output: str) -> str:  # typer's error box, unwrapped
        return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())

    r = CliRunner().invoke(app, ["experiment", "table9", "--data", str(tmp_path)])
    text = plain(r.output)
    assert r.exit_code == 2 and "unknown experiment 'table9'" in text and "table3" in text and "fig6b" in text
    r = CliRunner().invoke(app, ["experiment", "table3", "--data", str(tmp_path / "absent")])
    assert r.exit_code == 2 and "does not exist" in plain(r.output) and "--data" in plain(r.output)


@pytest.mark.integration
def test_cli_runs_bfcl_train_subprocesses_and_writes_the_fig6b_plot(probe_dir, base_yaml, tmp_path):
    """The default path: each run is a `bfcl train` subprocess; then the report and the plot."""
    out = tmp_path / "out"
    args = ["experiment", "fig6b", "--data", str(probe_dir), "--config", str(base_yaml), "--out", str(out),
            "--seeds", "1", "--quick", "--rows", "L=0"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "[1/1] fig6b L=0 seed 42 ..." in r.output and "done in" in r.output
    assert "| L=0 | 0 |" in r.output  # the table is printed
    log = (out / "logs" / "l0-seed42.log").read_text()
    assert "bfcl.cli train -c" in log and "epoch 1:" in log
    assert (out / "fig6b.png").stat().st_size > 5_000 and json.loads((out / "fig6b.json").read_text())["rows"][0]["n"] == 1
    r = CliRunner().invoke(app, args)  # resumed: nothing to train
    assert r.exit_code == 0 and "done earlier" in r.output
