"""The prediction API and ``bfcl predict`` as a user relies on them, with tiny random models.

A random model's labels are arbitrary, so tests that need entities raise one label's
emission bias until it wins (``forced``); scores are checked against the CRF by brute force.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

import bfcl
from bfcl.cli.predict import register
from bfcl.data.images import ImageLoadError
from bfcl.data.types import Sample
from bfcl.data.umt import read_samples, write_samples
from bfcl.inference.predictor import Predictor
from bfcl.inference.runner import run_posts
from bfcl.inference.tokenize import tokenize_tweet
from helpers import LABELS, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Every kind of separator and awkward token the offsets must survive.
MESSY = (
    "RT @Kolo_x:  Paris\u00a0is\tgreat 👋🏽🇫🇷 #NBA\n"
    "see https://t.co/abc?x=1, and   www.example.com/a.b!  Dr.\u2009Who\r\n"
    "don't 10,000 :) &amp; e\u0301te\u0301"
)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def predictor(image_model_dir, tmp_path_factory) -> Predictor:
    return bfcl.load(image_model_dir, feature_cache=tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def png_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    return path


@contextmanager
def forced(p: Predictor, label: str, strength: float = 30.0) -> Iterator[None]:
    """Make ``label`` win every word by its emission bias; restore the model afterwards."""
    bias = p.model.emission.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.fill_(0.0)
        bias[LABELS.index(label)] = strength
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def assert_offsets(text: str, pred_dict: dict) -> None:
    for e in pred_dict["entities"]:
        assert text[e["start"] : e["end"]] == e["text"], e


# ----------------------------------------------------------------------------- offsets


@pytest.mark.parametrize(
    "text",
    [
        MESSY,
        "  leading and trailing spaces  ",
        "@user #tag",
        "\u00a0\u00a0Kolo\u00a0\u00a0",
        "a\tb\nc\u2028d",
    ],
)
def test_single_word_entities_index_the_raw_text(predictor, text):
    with forced(predictor, "B-PER"):
        pred = predictor.predict(text)
    words = tokenize_tweet(text, style=predictor.config.tweet_style)
    d = pred.to_dict()
    assert d["text"] == text
    assert [(e["start"], e["end"]) for e in d["entities"]] == [(w.start, w.end) for w in words]
    assert [e["text"] for e in d["entities"]] == [w.text for w in words]
    assert all(e["type"] == "PER" for e in d["entities"])
    assert_offsets(text, d)


def test_multi_word_entity_spans_raw_separators(predictor):
    """An entity over several words covers the text between them exactly as written."""
    with forced(predictor, "I-LOC"):  # conlleval: a run of I-LOC is one entity
        pred = predictor.predict(MESSY)
    [entity] = pred.to_dict()["entities"]
    first, last = pred.tokens[0], pred.tokens[-1]
    assert (entity["start"], entity["end"]) == (first.start, last.end)
    assert entity["text"] == MESSY[first.start : last.end]
    assert "\u00a0" in entity["text"] and "\t" in entity["text"] and "\n" in entity["text"]


def test_entity_builder_offsets_on_messy_text(predictor):
    text = "Hi 👋🏽\t@John_Doe\u00a0Smith  lives in New\nYork https://t.co/x #NYC"
    toks = tokenize_tweet(text, style=predictor.config.tweet_style)
    words = [t.text for t in toks]
    labels = ["O"] * len(toks)
    name = words.index("John_Doe")
    labels[name], labels[name + 1] = "B-PER", "I-PER"
    city = words.index("New")
    labels[city], labels[city + 1] = "B-LOC", "I-LOC"
    labels[words.index("NYC")] = "B-LOC"
    emissions = torch.randn(len(toks), len(LABELS))
    ents = predictor._entities(text, toks, labels, emissions)
    assert [(e.text, e.type) for e in ents] == [
        ("John_Doe\u00a0Smith", "PER"),
        ("New\nYork", "LOC"),
        ("NYC", "LOC"),
    ]
    for e in ents:
        assert text[e.start : e.end] == e.text
        assert 0.0 < e.score <= 1.0


# ----------------------------------------------------------------------------- scores


@torch.no_grad()
def brute_force_span_probability(crf, emissions: torch.Tensor, start: int, end: int, tags: list[int], forbid: list[int]) -> float:
    """P(y[start:end] == tags and y[end] not in forbid) by enumerating every path."""
    T, K = emissions.shape
    paths = torch.tensor(list(itertools.product(range(K), repeat=T)))
    scores = crf.score(emissions[None].expand(len(paths), T, K), paths)
    keep = (paths[:, start:end] == torch.tensor(tags)).all(1)
    if end < T and forbid:
        keep &= ~torch.isin(paths[:, end], torch.tensor(forbid))
    return float(torch.exp(torch.logsumexp(scores[keep], 0) - torch.logsumexp(scores, 0)))


def test_scores_are_crf_span_marginals(predictor):
    """Decoded as trained (no BIO constraints), each score is the brute-force span marginal; the
    constrained marginals are checked against brute force in tests/test_crf.py."""
    text = "Kolo met Miri in Lisbon"  # 5 words: 9**5 paths
    bias = predictor.model.emission.bias
    saved = bias.detach().clone()
    predictor.model.config.constrained_decoding = False
    with torch.no_grad():  # mild push: entities appear but are not certain
        bias.fill_(0.0)
        bias[LABELS.index("B-PER")] = 1.5
        bias[LABELS.index("I-PER")] = 1.0
    try:
        pred = predictor.predict(text)
        emissions = run_posts(predictor.model, [Sample("x", [t.text for t in pred.tokens])], [None])[0].emissions
    finally:
        predictor.model.config.constrained_decoding = True
        with torch.no_grad():
            bias.copy_(saved)
    assert pred.entities, pred.labels
    assert any(e.score < 0.99 for e in pred.entities)  # a non-trivial check
    crf = predictor.model.crf
    for e in pred.entities:
        tags = [LABELS.index(lab) for lab in pred.labels[e.token_start : e.token_end]]
        expected = brute_force_span_probability(crf, emissions, e.token_start, e.token_end, tags, [LABELS.index(f"I-{e.type}")])
        assert 0.0 < e.score <= 1.0
        assert e.score == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # a one-word entity at the end of the post: its score is the token marginal
    n = len(pred.tokens)
    with torch.no_grad():
        marg = crf.marginals(emissions[None])[0, n - 1]
    last = [e for e in pred.entities if e.token_start == n - 1 and e.token_end == n]
    for e in last:
        assert e.score == pytest.approx(float(marg[LABELS.index(pred.labels[-1])]), rel=1e-4)


def test_scores_in_unit_interval_on_random_model(predictor):
    d = predictor.predict(MESSY).to_dict()
    assert all(0.0 < e["score"] <= 1.0 for e in d["entities"])
    assert_offsets(MESSY, d)


# ----------------------------------------------------------------------------- inputs


def test_token_list_input_keeps_tokens(predictor):
    words = ["RT", "@", "Obama", ":", "New York", "👋🏽", "https://t.co/x"]
    with forced(predictor, "B-ORG"):
        pred = predictor.predict(words)
    d = pred.to_dict()
    assert d["tokens"] == words
    assert d["text"] == " ".join(words)
    assert len(d["labels"]) == len(words)
    assert [e["text"] for e in d["entities"]] == words
    assert_offsets(d["text"], d)


@pytest.mark.parametrize("text", ["", " ", "  \t\n\u00a0\u2028  ", []])
def test_empty_input_gives_no_entities(predictor, text):
    with forced(predictor, "B-PER"):
        d = predictor.predict(text).to_dict()
    assert d["entities"] == [] and d["tokens"] == [] and d["labels"] == []
    assert d["has_image"] is False


def test_long_post_is_labelled_in_full(predictor):
    """400 words far exceed max_length 32: windows are stitched so every word gets a label."""
    assert predictor.config.max_length == 32
    words = [f"word{i}" if i % 7 else f"Name{i}" for i in range(400)]
    text = " ".join(words)
    with forced(predictor, "B-MISC"):
        pred = predictor.predict(text)
    assert len(pred.tokens) == 400 and len(pred.labels) == 400
    assert pred.labels == ["B-MISC"] * 400
    assert [e.text for e in pred.entities] == words
    unforced = predictor.predict(text)
    assert len(unforced.labels) == 400


# ----------------------------------------------------------------------------- images


def test_bad_image_raises_naming_it(predictor, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        predictor.predict("Kolo in Paris", image=bad)
    with pytest.raises(ImageLoadError, match="18 bytes"):
        predictor.predict("Kolo in Paris", image=b"this is not a jpeg")
    # a missing file is the same kind of error, naming its path
    with pytest.raises(ImageLoadError, match="nowhere.jpg"):
        predictor.predict("Kolo in Paris", image=tmp_path / "nowhere.jpg")


def test_bad_image_with_on_error_none_is_text_only(predictor, tmp_path, monkeypatch):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    monkeypatch.setattr(predictor, "image_on_error", "none")
    with forced(predictor, "B-PER"):
        pred = predictor.predict("Kolo in Paris", image=bad)
        text_only = predictor.predict("Kolo in Paris")
        missing = predictor.predict("Kolo in Paris", image=tmp_path / "nowhere.jpg")
    assert pred.has_image is False and missing.has_image is False
    assert pred.to_dict() == text_only.to_dict() == missing.to_dict()


def test_image_as_path_bytes_and_pil_agree(predictor, png_path):
    text = "Kolo is back home"
    by_path = predictor.predict(text, image=png_path).to_dict()
    by_str = predictor.predict(text, image=str(png_path)).to_dict()
    by_bytes = predictor.predict(text, image=png_path.read_bytes()).to_dict()
    with Image.open(png_path) as im:
        by_pil = predictor.predict(text, image=im.copy()).to_dict()
    assert by_path["has_image"] is True
    assert by_path == by_str == by_bytes == by_pil
    f_path, f_bytes, f_pil = predictor.image_features([png_path, png_path.read_bytes(), Image.open(png_path)])
    assert torch.equal(f_path, f_bytes) and torch.equal(f_path, f_pil)


def test_image_changes_the_emissions(predictor, png_path):
    """The picture reaches the model (else the image tests above would prove nothing)."""
    tokens = ["Kolo", "is", "back"]
    [feat] = predictor.image_features([png_path])
    with_image = run_posts(predictor.model, [Sample("x", tokens)], [feat])[0].emissions
    without = run_posts(predictor.model, [Sample("x", tokens)], [None])[0].emissions
    assert not torch.allclose(with_image, without)


def test_predict_batch_equals_one_by_one(predictor, png_path):
    items = [
        "Kolo is back",
        ("A much longer post about Miri and Tavi in Lisbon with @friends #weekend", png_path),
        ["Dr.", "John", "Carter"],
        {"text": "   ", "image": None},
        {"tokens": ["Acme", "Inc.", "shares", "rose"], "image": png_path.read_bytes()},
        {"text": MESSY},
        " ".join(["long"] * 70),  # several windows
    ]
    def alone(item):
        if isinstance(item, tuple):
            return predictor.predict(*item)
        if isinstance(item, dict):
            return predictor.predict(item.get("text", item.get("tokens")), image=item.get("image"))
        return predictor.predict(item)

    with forced(predictor, "B-PER", strength=1.0):  # entities with non-trivial scores
        batch = predictor.predict_batch(items, batch_size=3)
        single = [alone(item) for item in items]
    assert len(batch) == len(items)
    for b, s in zip(batch, single):
        bd, sd = b.to_dict(), s.to_dict()
        for key in ("text", "tokens", "labels", "has_image"):
            assert bd[key] == sd[key]
        assert [(e["text"], e["type"], e["start"], e["end"]) for e in bd["entities"]] == [
            (e["text"], e["type"], e["start"], e["end"]) for e in sd["entities"]
        ]
        for eb, es in zip(bd["entities"], sd["entities"]):
            assert eb["score"] == pytest.approx(es["score"], abs=1e-4)


# ----------------------------------------------------------------------------- CLI

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command("noop")  # a second command keeps `predict` a sub-command, as in `bfcl`
    def noop() -> None:
        pass

    return app


def invoke(app, args: list[str], code: int = 0):
    result = runner.invoke(app, ["predict", *args])
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def test_cli_text_json_and_table(app, text_model_dir, tmp_path):
    cache = ["--feature-cache", str(tmp_path / "fc")]
    r = invoke(app, ["--model", str(text_model_dir), "--text", MESSY, "--json", *cache])
    d = json.loads(r.stdout)
    assert d["text"] == MESSY and set(d) == {"text", "entities", "tokens", "labels", "has_image"}
    assert_offsets(MESSY, d)
    r = invoke(app, ["--model", str(text_model_dir), "--text", "Kolo is in Paris", *cache])
    assert "entit" in r.stdout


def test_cli_jsonl_input(app, image_model_dir, png_path, tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(png_path.read_bytes())
    lines = [
        {"id": "t1", "text": MESSY, "image": "pics/a.png"},
        {"id": 7, "tokens": ["Obama", "visits", "New York"]},
        {"text": "no id here", "image": str(png_path)},
        {"id": "t4", "text": "missing picture", "image": "pics/nowhere.png"},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    r = invoke(app, ["--model", str(image_model_dir), "--input", str(src), "--output", str(out),
                     "--batch-size", "2", "--feature-cache", str(tmp_path / "fc")])
    assert "nowhere.png" in r.stderr  # the missing picture is reported, not fatal by default
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [row["id"] for row in rows] == ["t1", 7, 3, "t4"]  # default id: the line number
    assert [row["has_image"] for row in rows] == [True, False, True, False]
    assert rows[1]["tokens"] == ["Obama", "visits", "New York"]
    for row in rows:
        assert_offsets(row["text"], row)
    p = bfcl.load(image_model_dir, feature_cache=tmp_path / "fc")
    assert rows[0]["labels"] == p.predict(MESSY, image=png_path).labels
    # the same missing picture is an error with --image-on-error error, naming the line
    r = invoke(app, ["--model", str(image_model_dir), "--input", str(src), "--output", str(tmp_path / "x.jsonl"),
                     "--image-on-error", "error", "--feature-cache", str(tmp_path / "fc")], code=1)
    assert f"{src}:4" in r.stderr and not (tmp_path / "x.jsonl").exists()


def test_cli_jsonl_image_that_is_a_folder(app, text_model_dir, tmp_path):
    (tmp_path / "pic.jpg").mkdir()
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "Obama", "image": "pic.jpg"}) + "\n", encoding="utf-8")
    r = invoke(app, ["--model", str(text_model_dir), "--input", str(src), "--output", str(tmp_path / "o.jsonl"),
                     "--image-on-error", "error"], code=1)
    assert f"{src}:1: image is not a regular file" in r.stderr


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"id": 2, text: "x"}', "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"id": 2}', "'text'"),
        ('{"id": 2, "tokens": ["a", 3]}', "'tokens'"),
        ('{"id": "a", "text": "dup"}', "duplicate id"),
    ],
)
def test_cli_jsonl_errors_name_the_line(app, text_model_dir, tmp_path, line, problem):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "text": "fine"}\n\n' + line + "\n", encoding="utf-8")
    r = invoke(app, ["--model", str(text_model_dir), "--input", str(src), "--output", str(tmp_path / "o.jsonl")], code=1)
    assert f"{src}:3" in r.stderr and problem in r.stderr


def test_cli_umt_round_trip(app, text_model_dir, tmp_path):
    gold = [
        Sample("1", ["RT", "@", "Kolo_x", ":", "Paris", "👋🏽", "\u200b", "#", "NBA"], ["O"] * 9, image_id="1"),
        Sample("2", ["Dr.", "John", "Carter", "said", "https://t.co/x"], ["O", "B-PER", "I-PER", "O", "O"], image_id="2"),
        Sample("3", [" ".join(["long"] * 3)] + ["word"] * 60, ["O"] * 61, image_id="3"),
    ]
    src = tmp_path / "test.txt"
    write_samples(src, gold)
    out = tmp_path / "pred.txt"
    r = invoke(app, ["--model", str(text_model_dir), "--input", str(src), "--output", str(out), "--progress"])
    assert "post" in r.stderr  # the progress bar went to stderr, not into the output
    pred = read_samples(out)
    assert [p.tokens for p in pred] == [g.tokens for g in gold]
    assert [p.image_id for p in pred] == ["1", "2", "3"]
    from bfcl.metrics import score_samples

    score_samples(gold, pred)  # what `bfcl evaluate --gold --pred` runs: aligned, scorable
    conll = tmp_path / "pred.conll"
    invoke(app, ["--model", str(text_model_dir), "--input", str(src), "--output", str(conll), "--format", "conll"])
    assert [p.tokens for p in read_samples(conll)] == [g.tokens for g in gold]
    assert [p.labels for p in read_samples(conll)] == [p.labels for p in pred]
    as_jsonl = tmp_path / "pred.jsonl"  # a .jsonl output name picks JSONL
    invoke(app, ["--model", str(text_model_dir), "--input", str(src), "--output", str(as_jsonl)])
    rows = [json.loads(x) for x in as_jsonl.read_text(encoding="utf-8").splitlines()]
    assert [row["id"] for row in rows] == ["1", "2", "3"]
    assert [row["labels"] for row in rows] == [p.labels for p in pred]


def test_cli_umt_with_real_images(app, image_model_dir, shared_data, tmp_path):
    root = shared_data / "twitter2015"
    have = {p.stem for p in (root / "images_sample").glob("*.jpg")}
    test = read_samples(root / "test.txt")
    picked = [s for s in test if s.image_id in have][:3] + test[:3]
    src = tmp_path / "small.txt"
    write_samples(src, picked)
    out = tmp_path / "pred.txt"
    r = invoke(app, ["--model", str(image_model_dir), "--input", str(src), "--images", str(root / "images_sample"),
                     "--output", str(out), "--feature-cache", str(tmp_path / "fc")])
    assert [p.tokens for p in read_samples(out)] == [s.tokens for s in picked]
    assert f"images used {sum(s.image_id in have for s in picked)}" in r.stderr


@pytest.mark.parametrize("name, content", [("empty.txt", ""), ("blank.jsonl", "\n\n")])
def test_cli_empty_input_is_an_error(app, text_model_dir, tmp_path, name, content):
    src = tmp_path / name
    src.write_text(content, encoding="utf-8")
    r = invoke(app, ["--model", str(text_model_dir), "--input", str(src), "--output", str(tmp_path / "o.txt")], code=1)
    assert f"{src}: no posts to predict" in r.stderr and not (tmp_path / "o.txt").exists()


def test_cli_usage_errors_exit_2(app, text_model_dir, tmp_path):
    model = ["--model", str(text_model_dir)]
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "x"}\n', encoding="utf-8")
    cases = [
        (["--model", str(tmp_path / "nope"), "--text", "x"], "model directory not found"),
        (["--model", str(tmp_path), "--text", "x"], "not a bfcl model"),
        ([*model, "--input", str(tmp_path / "missing.txt")], "input file not found"),
        ([*model], "--text"),
        ([*model, "--text", "x", "--input", str(src)], "either"),
        ([*model, "--input", str(src), "--image", str(src)], "--image"),
        ([*model, "--input", str(src), "--output", str(src)], "overwrite"),
        ([*model, "--input", str(src), "--images", str(tmp_path / "nodir")], "image folder"),
    ]
    for args, message in cases:
        r = invoke(app, args, code=2)
        assert message in r.stderr, (args, r.stderr)
    # a missing image exits like an unreadable one (1), not as a usage error
    r = invoke(app, [*model, "--text", "x", "--image", str(tmp_path / "no.jpg")], code=1)
    assert "no.jpg: file not found" in r.stderr
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    r = invoke(app, [*model, "--text", "x", "--image", str(folder)], code=1)
    assert "folder.jpg: not a regular file" in r.stderr
    invoke(app, [*model, "--input", str(src), "--format", "xml"], code=2)
    invoke(app, [*model, "--input", str(src), "--batch-size", "0"], code=2)


def test_a_bad_device_is_named(text_model_dir):
    from bfcl.cli import app as bfcl_app
    from bfcl.errors import ConfigError
    from bfcl.inference.predictor import resolve_device

    with pytest.raises(ConfigError, match=r"device 'nonsense': not a torch device"):
        bfcl.load(text_model_dir, device="nonsense")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ConfigError, match=r"device 'cuda': no CUDA GPU is available here"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    r = runner.invoke(bfcl_app, ["predict", "--model", str(text_model_dir), "--text", "x", "--device", "nonsense"])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == ["Error: device 'nonsense': not a torch device (use cpu, cuda or cuda:N)"]


def test_cli_text_bad_image(app, image_model_dir, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    args = ["--model", str(image_model_dir), "--text", "Kolo", "--image", str(bad), "--feature-cache", str(tmp_path / "fc")]
    r = invoke(app, args, code=1)
    assert "broken.jpg" in r.stderr
    r = invoke(app, [*args, "--image-on-error", "none", "--json"])
    assert json.loads(r.stdout)["has_image"] is False


# ----------------------------------------------------------------------------- valid BIO by default


def test_decoding_is_bio_constrained_by_default():
    """A model trained without constraints still decodes valid BIO ("Café René": B-LOC then I-PER
    must not come back as two entities of different types)."""
    from bfcl.data.labels import check_bio2

    m = tiny_model()
    assert m.config.bio_constraints is False and m.config.constrained_decoding is True
    em = torch.full((1, 2, len(LABELS)), -5.0)
    em[0, 0, LABELS.index("B-LOC")] = 10.0
    em[0, 1, LABELS.index("I-PER")] = 10.0
    mask = torch.ones(1, 2, dtype=torch.bool)
    raw = [LABELS[i] for i in m.decode(em, mask, constrained=False)[0]]
    assert raw == ["B-LOC", "I-PER"]  # what unconstrained Viterbi returns
    fixed = [LABELS[i] for i in m.decode(em, mask)[0]]
    assert fixed[0] == "B-LOC" and not check_bio2(fixed), fixed
    m.config.constrained_decoding = False
    assert [LABELS[i] for i in m.decode(em, mask)[0]] == ["B-LOC", "I-PER"]


def test_predictions_are_valid_bio_with_constrained_scores(predictor):
    """Forced towards I-PER on every word, the answer is one PER entity opened by B-PER, and its
    score is the constrained span marginal (the only valid path left)."""
    from bfcl.data.labels import check_bio2

    with forced(predictor, "I-PER"):
        pred = predictor.predict("Barack Obama speaks")
    assert pred.labels[0] == "B-PER" and not check_bio2(pred.labels)
    assert [(e.text, e.type) for e in pred.entities] == [("Barack Obama speaks", "PER")]
    assert pred.entities[0].score > 0.99
