"""Typed settings: every --set / YAML value is checked against its field's type,
choices and range, and a setting the architecture would ignore is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bfcl.errors import ConfigError
from bfcl.model.configuration import BFCLConfig
from bfcl.training.config import TrainConfig, load_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def refused(overrides: list[str], *fragments: str, path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_run_config(path, overrides)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    return message


# ---- the examples ------------------------------------------------------


def test_a_list_stays_a_list():
    images = "train.images_dir=imgs"
    _, t = load_run_config(None, [images, "train.image_extensions=.png"])
    assert t.image_extensions == [".png"]  # not ('.', 'p', 'n', 'g')
    _, t = load_run_config(None, [images, "train.image_extensions=[.png,.jpg]"])
    assert t.image_extensions == [".png", ".jpg"]
    _, t = load_run_config(None, [images, "train.image_extensions=.png,.jpg"])
    assert t.image_extensions == [".png", ".jpg"]
    refused(["train.image_extensions=png"], "train.image_extensions", "'png'", "dot")
    refused(["train.image_extensions=[]"], "train.image_extensions")


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("model.multimodal=maybe", ("model.multimodal='maybe'", "boolean")),
        ("train.cpu=maybe", ("train.cpu='maybe'", "boolean")),
        ("train.epochs=2.5", ("train.epochs=2.5", "integer")),
        ("train.batch_size=0", ("train.batch_size=0", "greater than or equal to 1")),
        ("train.epochs=-1", ("train.epochs=-1", "greater than or equal to 1")),
        ("model.num_heads=0", ("model.num_heads=0", "greater than or equal to 1")),
        ("train.mixed_precision=fp8", ("train.mixed_precision='fp8'", "'no', 'fp16' or 'bf16'")),
        ("train.max_train_samples=-5", ("train.max_train_samples=-5", "greater than or equal to 0")),
        ("train.lr=-1e-5", ("train.lr=", "greater than or equal to 0")),
        ("train.head_lr=-1e-3", ("train.head_lr=", "greater than or equal to 0")),
        ("train.warmup_ratio=1.5", ("train.warmup_ratio=1.5", "less than or equal to 1")),
        ("train.seed=-1", ("train.seed=-1",)),
        ("train.eval_batch_size=0", ("train.eval_batch_size=0",)),
        ("train.num_threads=-2", ("train.num_threads=-2",)),
        ("model.dropout=1.0", ("model.dropout=1.0", "less than 1")),
        ("model.temperature=0", ("model.temperature=0", "greater than 0")),
        ("model.max_length=4", ("model.max_length=4", "greater than or equal to 8")),
        ("model.d_model=true", ("model.d_model=True", "not a boolean")),
        ("model.lambda_vt=-0.1", ("model.lambda_vt=-0.1",)),
    ],
)
def test_wrong_types_and_ranges_are_refused_with_key_value_and_expectation(override, fragments):
    message = refused([override], *fragments)
    assert message.startswith("--set: ")


@pytest.mark.parametrize(
    "key", ["model.fusion", "model.fusion_stage", "model.decoder", "model.similarity", "model.text_pooling",
            "model.tweet_style", "train.image_on_error", "train.mixed_precision"],
)
def test_values_outside_the_choices_are_refused(key):
    refused([f"{key}=sideways"], f"{key}='sideways'", "expected '")


def test_num_heads_zero_is_a_config_error_not_zero_division():
    with pytest.raises(ConfigError, match="num_heads=0"):
        BFCLConfig(num_heads=0)
    with pytest.raises(ConfigError, match="not divisible by num_heads=5"):
        BFCLConfig(d_model=768, num_heads=5)


def test_yaml_values_are_typed(tmp_path):
    f = tmp_path / "run.yaml"
    # YAML 1.1 reads 1e-4 as a string and `no` as False; both must mean what they say
    f.write_text("model:\n  d_model: 64\n  num_heads: 4\ntrain:\n  lr: 1e-4\n  mixed_precision: no\n  cpu: yes\n"
                 "  images_dir: imgs\n  image_extensions: .png\n  output_dir: 2024\n")
    m, t = load_run_config(f)
    assert t.lr == 1e-4 and isinstance(t.lr, float)
    assert t.mixed_precision == "no" and t.cpu is True
    assert t.image_extensions == [".png"] and t.output_dir == "2024"
    assert (m.d_model, m.num_heads) == (64, 4)
    _, t = load_run_config(None, ["train.lr=1e-4", "train.output_dir=2024", "train.mixed_precision=no"])
    assert (t.lr, t.output_dir, t.mixed_precision) == (1e-4, "2024", "no")


def test_yaml_errors_name_the_file_and_key(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  epochs: 2.5\n")
    refused([], f"{f}: train.epochs=2.5", "integer", path=f)
    f.write_text("train:\n  epoch: 3\n")
    refused([], str(f), "unknown setting train.epoch", "did you mean train.epochs", path=f)
    f.write_text("train: [1, 2]\n")
    refused([], "section 'train' must be a mapping", path=f)
    f.write_text("train:\n  epochs: [\n")
    refused([], str(f), "not valid YAML", path=f)
    f.write_text("- a list\n")
    refused([], "expected a mapping", path=f)
    refused([], "config file not found", path=tmp_path / "missing.yaml")
    j = tmp_path / "run.json"
    j.write_text(json.dumps({"train": {"epochs": 3, "lr": "1e-4"}}))
    _, t = load_run_config(j)
    assert (t.epochs, t.lr) == (3, 1e-4)
    j.write_text("{bad json")
    refused([], f"{j}:1", "not valid JSON", path=j)


def test_set_value_overrides_file_and_error_names_set(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  epochs: 3\n")
    refused(["train.epochs=2.5"], "--set: train.epochs=2.5", path=f)
    refused(["epochs"], "key=value", path=f)
    refused(["model.nope=1"], "unknown setting model.nope", path=f)
    refused(["modle.d_model=1"], "unknown section 'modle'", path=f)
    refused(["nope=1"], "unknown setting")


def test_direct_construction_is_checked_too(tmp_path):
    with pytest.raises(ConfigError, match="train.batch_size=0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="train.image_extensions='.png'"):
        TrainConfig(image_extensions=".png")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="model.multimodal='maybe'"):
        BFCLConfig(multimodal="maybe")  # type: ignore[arg-type]
    t = TrainConfig(output_dir=tmp_path / "out", data_dir=tmp_path)  # type: ignore[arg-type]
    assert t.output_dir == str(tmp_path / "out") and isinstance(t.data_dir, str)


def test_labels_are_checked_when_read():
    with pytest.raises(ConfigError, match="'X-LOC'"):
        BFCLConfig(labels=["O", "X-LOC"])
    with pytest.raises(ConfigError, match="X-LOC"):
        BFCLConfig.from_dict({"labels": ["O", "B-LOC", "X-LOC"]})
    with pytest.raises(ConfigError, match="duplicates"):
        BFCLConfig(labels=["O", "O"])
    with pytest.raises(ConfigError, match="unknown BFCL setting"):
        BFCLConfig.from_dict({"nope": 1})


# ---- settings the chosen architecture would ignore ----------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["model.multimodal=false", "model.fusion=gated"], ("model.fusion='gated'", "multimodal=false")),
        (["model.multimodal=false", "model.num_bottlenecks=8", "model.lambda_vt=0.5"],
         ("model.num_bottlenecks=8, model.lambda_vt=0.5 have no effect", "multimodal=false")),
        (["model.multimodal=false", "model.d_model=384"], ("model.d_model=384",)),
        (["model.multimodal=false", "model.use_mca=false"], ("model.use_mca=False",)),
        (["model.multimodal=false", "model.image_encoder=hf:resnet"], ("model.image_encoder",)),
        (["model.fusion=gated", "model.num_layers=4"], ("model.num_layers=4", "fusion='gated'")),
        (["model.fusion=attention", "model.fusion_stage=early"], ("model.fusion_stage='early'",)),
        (["model.fusion=none", "model.num_bottlenecks=2"], ("model.num_bottlenecks=2", "fusion='none'")),
        (["model.fusion=none", "model.use_mca=false", "model.num_heads=4"], ("model.num_heads=4", "no attention layer")),
        (["model.multimodal=false", "model.bilstm_hidden=128"], ("model.bilstm_hidden=128", "bilstm=false")),
        (["model.multimodal=false", "model.emission_reads_text=true"], ("model.emission_reads_text=True", "multimodal=false")),
        (["model.architecture=umt", "model.emission_reads_text=true"], ("model.emission_reads_text=True", "only BFCL")),
        (["model.bilstm_hidden=128"], ("model.bilstm_hidden=128", "multimodal=true")),
        (["model.decoder=softmax", "model.bio_constraints=true"], ("model.bio_constraints=True", "decoder='softmax'")),
        (["model.lambda_vt=0", "model.lambda_tv=0", "model.temperature=0.1"], ("model.temperature=0.1", "contrastive")),
        (["model.labels=[O,B-PER,I-PER]"], ("model.labels", "training data")),
        (["model.image_dim=2048"], ("model.image_dim=2048", "encoders")),
        (["model.multimodal=false", "train.images_dir=imgs"], ("train.images_dir='imgs'", "reads no images")),
        (["model.image_encoder=none", "train.image_extensions=.png"], ("train.image_extensions", "image_encoder='none'")),
        (["train.image_on_error=error"], ("train.image_on_error='error'", "train.images_dir is not set")),
    ],
)
def test_settings_the_architecture_ignores_are_refused(overrides, fragments):
    message = refused(overrides, *fragments)
    assert "no effect" in message and "--set" in message


def test_ignored_setting_from_a_file_names_the_file(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model:\n  multimodal: false\n  num_layers: 2\n")
    refused([], f"{f}: model.num_layers=2 has no effect", path=f)


REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.fusion=gated"], {"fusion": "gated", "num_layers": 4}),  # docs/MODEL.md's example
        (["model.fusion=none"], {"fusion": "none"}),  # -BF (Table 3)
        (["model.fusion=none", "model.use_mca=false"], {"fusion": "none", "use_mca": False}),
    ],
)
def test_an_ablation_is_a_set_on_a_shipped_config(overrides, expected, caplog):
    """The file's fusion settings, made inert by the --set, are kept unused and named in a warning."""
    path = REPO_CONFIGS / "offline-twitter2017.yaml"
    with caplog.at_level("WARNING", logger="bfcl.training.config"):
        m, _ = load_run_config(path, overrides)
    assert {k: getattr(m, k) for k in expected} == expected
    assert f"{path}: model.num_layers=4 has no effect in this run" in caplog.text


def test_a_file_that_contradicts_itself_is_still_refused_with_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model:\n  fusion: none\n  num_layers: 2\n")
    refused(["model.d_model=64", "model.num_heads=4"], f"{f}: model.num_layers=2 has no effect", path=f)


def test_an_inert_set_on_a_shipped_config_is_still_refused():
    path = REPO_CONFIGS / "offline-twitter2017.yaml"
    message = refused(["model.fusion=none", "model.num_bottlenecks=2"], "--set: model.num_bottlenecks=2 has no effect", path=path)
    assert "num_layers" not in message  # the file's own setting, made inert by the --set, is not blamed


def test_setting_an_inactive_key_to_its_default_is_fine():
    # the shipped text-only configs spell out defaults (decoder: crf); the value, not the key, matters
    m, _ = load_run_config(None, ["model.multimodal=false", "model.fusion=bottleneck", "model.decoder=crf",
                                  "model.bilstm=true", "model.bilstm_hidden=128"])
    assert (m.multimodal, m.bilstm, m.bilstm_hidden) == (False, True, 128)
    m, t = load_run_config(None, ["model.fusion=gated", "train.images_dir=imgs", "train.image_extensions=.png"])
    assert (m.fusion, t.image_extensions) == ("gated", [".png"])


def test_feature_cache_is_accepted_for_a_text_only_model(tmp_path):
    # where image features are cached never changes a result: a shared YAML may set it for every run
    f = tmp_path / "run.yaml"
    f.write_text("model:\n  multimodal: false\ntrain:\n  feature_cache: null\n")
    _, t = load_run_config(f)
    assert t.feature_cache is None
    _, t = load_run_config(None, ["model.image_encoder=none", f"train.feature_cache={tmp_path / 'fc'}"])
    assert t.feature_cache == str(tmp_path / "fc")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    m, t = load_run_config(path)
    assert t.epochs >= 1 and m.num_heads >= 1


def test_cli_train_refuses_bad_settings_before_anything_runs(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bfcl.cli import app

    monkeypatch.chdir(tmp_path)
    for override, fragment in (("train.epochs=2.5", "train.epochs=2.5"), ("model.num_heads=0", "model.num_heads=0"),
                               ("train.mixed_precision=fp8", "fp8")):
        r = CliRunner().invoke(app, ["train", "--set", override, "--set", f"train.output_dir={tmp_path / 'out'}"])
        assert r.exit_code == 2, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()
