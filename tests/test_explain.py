"""bfcl explain: heat maps are the attention they claim to be, and the figure / JSON / CLI work.

Entities are forced in a tiny random model by zeroing the emission layer and giving one
label a large bias: all-``I-PER`` is one entity over the whole post (conlleval reading),
all-``B-PER`` one entity per word. The image is synthetic (no third-party pictures in tests).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from bfcl.cli.explain import register
from bfcl.inference.explain import ExplainError, Explanation, explain, render
from bfcl.inference.predictor import Predictor
from helpers import tiny_model

TEXT = "Kolo Toure is back home in Abidjan"


def force(model, label: str | None) -> None:
    """Make every word get ``label`` (None: the random model's own emissions are left)."""
    with torch.no_grad():
        model.emission.weight.zero_()
        model.emission.bias.zero_()
        if label is not None:
            model.emission.bias[model.config.labels.index(label)] = 20.0


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    y, x = np.mgrid[0:180, 0:260]
    rgb = np.stack([x % 256, y * 255 // 180, (x + y) % 256], -1).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "post.jpg"
    Image.fromarray(rgb).save(path)
    return str(path)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    return Predictor(tiny_model(image_dim=1280), feature_cache=tmp_path_factory.mktemp("features"), device="cpu")


def test_entity_map_is_mean_of_first_subtoken_rows(predictor, picture):
    force(predictor.model, "I-PER")
    ex = explain(predictor, TEXT, picture)
    attn = ex.prediction.attention
    assert len(ex.entities) == 1
    em = ex.entities[0]
    assert (em.entity.token_start, em.entity.token_end) == (0, 7)
    rows = [attn["word_starts"][w - attn["first_word"]] for w in range(7)]
    direct = attn["text_to_image"][rows].mean(0)
    direct = (direct / direct.sum()).reshape(7, 7)
    assert em.heatmap.shape == (7, 7)
    assert torch.all(em.heatmap >= 0)
    assert float(em.heatmap.sum()) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(em.heatmap, direct)


def test_one_word_entities_use_their_own_row(predictor, picture):
    force(predictor.model, "B-PER")
    ex = explain(predictor, TEXT, picture)
    attn = ex.prediction.attention
    assert [e.entity.text for e in ex.entities] == TEXT.split()
    for w, em in enumerate(ex.entities):
        row = attn["text_to_image"][attn["word_starts"][w]]
        torch.testing.assert_close(em.heatmap, (row / row.sum()).reshape(7, 7))


def test_bottleneck_maps_roll_out_through_v_t(predictor, picture):
    force(predictor.model, "I-PER")
    ex = explain(predictor, TEXT, picture)
    attn = ex.prediction.attention
    t2i = attn["text_to_image"]
    last = attn["bottleneck_attention"][-1]
    product = last[:, : t2i.shape[0]] @ t2i
    assert len(ex.bottlenecks) == predictor.config.num_bottlenecks
    assert ex.rollout
    for k, m in enumerate(ex.bottlenecks):
        assert m.shape == (7, 7) and torch.all(m >= 0)
        assert float(m.sum()) == pytest.approx(1.0, abs=1e-5)
        torch.testing.assert_close(m, (product[k] / product[k].sum()).reshape(7, 7))


def test_without_mca_bottlenecks_read_regions_directly(tmp_path, picture):
    p = Predictor(tiny_model(image_dim=1280, use_mca=False), feature_cache=tmp_path, device="cpu")
    force(p.model, "I-PER")
    ex = explain(p, TEXT, picture)
    last = ex.prediction.attention["bottleneck_attention"][-1]
    assert last.shape[-1] == 49 and not ex.rollout
    for k, m in enumerate(ex.bottlenecks):
        torch.testing.assert_close(m, (last[k] / last[k].sum()).reshape(7, 7))
    assert ex.entities[0].heatmap is None and "co-attention" in ex.entities[0].note


def test_entities_beyond_first_window_get_a_note(predictor, picture):
    force(predictor.model, "B-PER")
    words = [f"w{i}" for i in range(40)]  # max_length 32: several windows
    ex = explain(predictor, " ".join(words), picture)
    starts = ex.prediction.attention["word_starts"]
    inside = [e for e in ex.entities if e.heatmap is not None]
    outside = [e for e in ex.entities if e.heatmap is None]
    assert len(inside) == len(starts) and outside
    assert all("first window" in e.note for e in outside)
    assert any("longer than one window" in n for n in ex.notes)
    with pytest.raises(ExplainError, match="first window"):
        explain(predictor, " ".join(words), picture, on_error="raise")


def test_json_round_trips(predictor, picture):
    force(predictor.model, "B-PER")
    ex = explain(predictor, TEXT, picture)
    d = ex.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["grid"] == [7, 7] and d["text"] == TEXT
    assert [b["index"] for b in d["bottlenecks"]] == list(range(predictor.config.num_bottlenecks))
    e0 = d["entities"][0]
    assert {"text", "type", "score", "start", "end", "token_start", "token_end", "heatmap"} <= set(e0)
    assert np.array(e0["heatmap"]).shape == (7, 7)
    back = Explanation.from_dict(json.loads(json.dumps(d)))
    assert back.to_dict() == d
    assert json.loads(ex.to_json()) == d


def test_to_json_keeps_text_verbatim():
    ex = Explanation("scores [1,2] \u00e9t\u00e9", [], [torch.full((7, 7), 1 / 49)])
    assert json.loads(ex.to_json()) == ex.to_dict()
    assert "[1,2] \u00e9t\u00e9" in ex.to_json()


@pytest.mark.parametrize("label", ["I-PER", "O"])
def test_render_writes_a_png(predictor, picture, tmp_path, label):
    force(predictor.model, label)
    ex = explain(predictor, TEXT, picture)
    assert (len(ex.entities) == 0) == (label == "O")
    out = render(ex, picture, tmp_path / "fig" / "x.png")
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert 400 <= im.width <= 2000 and 300 <= im.height <= 2000


def test_needs_an_image_and_a_multimodal_model(predictor, picture, tmp_path):
    with pytest.raises(ExplainError, match="explain needs an image and a multimodal model"):
        explain(predictor, TEXT, None)
    text_only = Predictor(tiny_model(multimodal=False), feature_cache=tmp_path, device="cpu")
    with pytest.raises(ExplainError, match="explain needs an image and a multimodal model"):
        explain(text_only, TEXT, picture)
    with pytest.raises(ExplainError, match=r"text-only \(multimodal=false\)"):
        explain(text_only, TEXT, picture)
    never_saw_one = tiny_model(image_dim=1280)
    never_saw_one.checkpoint_info = {"training_data": {"train_posts": 10, "train_posts_with_image": 0}}
    ignoring = Predictor(never_saw_one, feature_cache=tmp_path, device="cpu")
    with pytest.raises(ExplainError, match=r"this model was trained without images \(train_posts_with_image=0\)"):
        explain(ignoring, TEXT, picture)
    ex = Explanation(TEXT, [], [torch.full((7, 7), 1 / 49)])
    with pytest.raises(ExplainError, match="explain needs an image"):
        render(ex, None, tmp_path / "x.png")


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keeps `explain` a sub-command, as in the real CLI
        pass

    return app


def test_cli_writes_figure_and_json(predictor, picture, tmp_path):
    force(predictor.model, "I-PER")
    ckpt = predictor.model.save_pretrained(tmp_path / "ckpt")
    png, js = tmp_path / "out.png", tmp_path / "out.json"
    args = ["explain", "--model", str(ckpt), "--text", TEXT, "--image", picture, "--output", str(png), "--json", str(js), "--device", "cpu"]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    assert "PER" in res.output and TEXT in res.output
    with Image.open(png) as im:
        assert im.format == "PNG"
    d = json.loads(js.read_text())
    assert d["entities"][0]["text"] == TEXT and np.array(d["entities"][0]["heatmap"]).shape == (7, 7)


def test_cli_reports_errors_clearly(picture, tmp_path):
    res = CliRunner().invoke(_app(), ["explain", "--model", str(tmp_path / "nope"), "--text", TEXT, "--image", picture])
    assert res.exit_code == 1
    assert "not a bfcl checkpoint" in res.output
