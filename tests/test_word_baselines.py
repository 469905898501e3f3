"""The text-only baselines without a pretrained encoder (Table 2): BiLSTM-CRF and
CNN-BiLSTM-CRF, i.e. ``text_encoder=words`` (+ ``char_cnn_dim``): vocabulary, word2vec
vectors, the character CNN, training, checkpoints, prediction and settings."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bfcl.data.labels import LabelSet
from bfcl.data.types import Sample
from bfcl.demo.probe import make_probe
from bfcl.encoders.text import load_tokenizer
from bfcl.data.chars import MAX_WORD_BYTES, char_ids
from bfcl.encoders.words import MODEL_TYPE, UNK, build_word_tokenizer, iter_word_vectors
from bfcl.errors import CheckpointError, ConfigError, DataFormatError
from bfcl.inference.predictor import Predictor
from bfcl.model.configuration import BFCLConfig
from bfcl.model.modeling import BFCL, build_model
from bfcl.processing import BFCLProcessor
from bfcl.training.config import TrainConfig, load_run_config
from bfcl.training.trainer import train

from helpers import LABELS

TRAIN = [
    (["Kolo", "is", "in", "Paris", "today"], ["B-PER", "O", "O", "B-LOC", "O"]),
    (["RT", "@fan", ":", "Paris", "Hilton", "in", "London", "!"], ["O", "O", "O", "B-PER", "I-PER", "O", "B-LOC", "O"]),
    (["Apple", "shares", "rise", "in", "London"], ["B-ORG", "O", "O", "O", "B-LOC"]),
    (["the", "Louvre", "is", "in", "Paris"], ["O", "B-LOC", "O", "O", "B-LOC"]),
]
SAMPLES = [Sample(str(i), w, l) for i, (w, l) in enumerate(TRAIN)]
ROOT = Path(__file__).resolve().parents[1]


def word_config(**overrides) -> BFCLConfig:
    base = dict(
        text_encoder="words", multimodal=False, bilstm=True, bilstm_hidden=16, word_embedding_dim=12,
        dropout=0.0, labels=list(LABELS), max_length=32,
    )
    base.update(overrides)
    return BFCLConfig(**base)


def word_model(samples=SAMPLES, seed: int = 0, **overrides) -> BFCL:
    cfg = word_config(**overrides)
    tok = build_word_tokenizer(cfg, [s.tokens for s in samples])
    torch.manual_seed(seed)
    return build_model(cfg, tokenizer=tok).eval()


def batch(model: BFCL, samples, labels: bool = True) -> dict[str, torch.Tensor]:
    proc = BFCLProcessor.for_model(model)
    return proc.collate(proc.windows(samples, labels=LabelSet(LABELS) if labels else None))


def posts(*sentences: list[str]) -> list[Sample]:
    return [Sample(str(i), list(words), None) for i, words in enumerate(sentences)]


def write_vectors(path: Path, rows: dict[str, list[float]], header: str | None = None) -> Path:
    dim = len(next(iter(rows.values())))
    lines = [header if header is not None else f"{len(rows)} {dim}"]
    lines += [w + " " + " ".join(f"{v:g}" for v in vec) for w, vec in rows.items()]
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---- vocabulary ---------------------------------------------------------------------------


def test_vocabulary_from_training_words_by_frequency():
    tok = build_word_tokenizer(word_config(), [s.tokens for s in SAMPLES])
    vocab = tok.get_vocab()
    assert vocab["[PAD]"] == 0 and vocab[UNK] == 1 == tok.unk_token_id and tok.pad_token_id == 0
    # most frequent first (in: 4, Paris: 3, London / is: 2), ties alphabetical
    assert [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])][2:6] == ["in", "Paris", "London", "is"]
    meta = tok.init_kwargs["bfcl_words"]
    n_words = len({w for s in SAMPLES for w in s.tokens})
    assert meta["train_words"] == n_words and len(tok) == n_words + 2
    counts = {}
    for s in SAMPLES:
        for w in s.tokens:
            counts[w] = counts.get(w, 0) + 1
    lo, hi = meta["singletons"]
    assert hi == len(tok) and lo == 2 + sum(c > 1 for c in counts.values())
    assert all(counts[w] == 1 for w, i in vocab.items() if lo <= i < hi)
    # one token per word, nothing added, an unseen word (and a case variant: case is kept) is [UNK]
    enc = tok(["paris", "Paris", "Zanzibar", "in"], is_split_into_words=True)
    assert enc["input_ids"] == [1, vocab["Paris"], 1, vocab["in"]] and enc.word_ids() == [0, 1, 2, 3]
    assert tok.num_special_tokens_to_add(pair=False) == 0
    # the same data gives the same ids (every rank, every resume)
    assert build_word_tokenizer(word_config(), [s.tokens for s in SAMPLES]).get_vocab() == vocab


def test_vocabulary_min_count_and_lowercase():
    tok = build_word_tokenizer(word_config(word_min_count=2, word_lowercase=True), [s.tokens for s in SAMPLES])
    vocab = tok.get_vocab()
    assert set(vocab) == {"[PAD]", UNK, "in", "paris", "london", "is"}
    assert tok(["PARIS", "Kolo"], is_split_into_words=True)["input_ids"] == [vocab["paris"], 1]
    lo, hi = tok.init_kwargs["bfcl_words"]["singletons"]
    assert lo == hi  # no word seen once is in the vocabulary


# ---- word2vec text vectors ------------------------------------------------------------------


def test_word_vectors_initialise_rows_and_extend_the_vocabulary(tmp_path):
    rows = {"Paris": [0.5, -1.0, 2.0, 0.25], "Zanzibar": [1.0, 2.0, 3.0, 4.0], "in": [9.0, 9.0, 9.0, 9.0]}
    for name in ("vec.txt", "vec.txt.gz"):
        f = write_vectors(tmp_path / name, rows)
        m = word_model(word_embedding_dim=4, word_vectors=str(f))
        vocab = m.tokenizer.get_vocab()
        meta = m.tokenizer.init_kwargs["bfcl_words"]
        assert meta["vector_words"] == 1 and vocab["Zanzibar"] == len(vocab) - 1  # vector words join, after training words
        table = m.text_encoder.embedding.weight
        for word, vec in rows.items():
            torch.testing.assert_close(table[vocab[word]], torch.tensor(vec))
        assert table[vocab["Kolo"]].abs().max() <= (3 / 4) ** 0.5  # no vector: uniform initialisation
        assert not table[0].any()  # [PAD] stays zero


def test_word_vectors_lowercase_lookup(tmp_path):
    f = write_vectors(tmp_path / "v.txt", {"paris": [1.0, 2.0], "PARIS": [5.0, 5.0]})
    m = word_model(word_embedding_dim=2, word_vectors=str(f), word_lowercase=True)
    vocab = m.tokenizer.get_vocab()
    assert "PARIS" not in vocab  # lower-cased, and the first vector of "paris" wins
    torch.testing.assert_close(m.text_encoder.embedding.weight[vocab["paris"]], torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    "lines, line_no, problem",
    [
        (["2 3", "a 1 2 3", "b 1 2"], 3, "'b' has 2 values, but the header says 3"),
        (["2 3", "a 1 2 3", "b 1 x 3"], 3, "value 'x' is not a number"),
        (["2 3", "a 1 nan 3", "b 1 2 3"], 2, "not finite"),
        (["a 1 2 3", "b 1 2 3"], 1, "header"),
        (["2 3", "a 1 2 3", "", "b 1 2 3"], 3, "empty line"),
        (["3 3", "a 1 2 3", "b 1 2 3"], 1, "header says 3 vectors, but the file has 2"),
    ],
)
def test_malformed_word_vectors_name_file_and_line(tmp_path, lines, line_no, problem):
    f = tmp_path / "bad.vec"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=problem) as e:
        list(iter_word_vectors(f))
    assert str(e.value).startswith(f"{f}:{line_no}: ")
    # training refuses it the same way, before any model is built
    with pytest.raises(DataFormatError, match=f"{f}:{line_no}: "):
        build_word_tokenizer(word_config(word_embedding_dim=3, word_vectors=str(f)), [["a"]])


def test_word_vectors_not_utf8_names_the_line(tmp_path):
    f = tmp_path / "bad.vec"
    f.write_bytes(b"1 2\n\xff\xfe 1 2\n")
    with pytest.raises(DataFormatError, match=rf"{f}:2: not UTF-8"):
        list(iter_word_vectors(f))


def test_word_vectors_missing_file_or_wrong_size_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        build_word_tokenizer(word_config(word_vectors=str(tmp_path / "nope.txt")), [["a"]])
    f = write_vectors(tmp_path / "v.txt", {"a": [1.0, 2.0, 3.0]})
    with pytest.raises(ConfigError, match="3-dimensional vectors, but model.word_embedding_dim=12"):
        build_word_tokenizer(word_config(word_vectors=str(f)), [["a"]])


# ---- the character CNN -------------------------------------------------------------------


def test_char_ids_are_utf8_bytes():
    assert char_ids("Ab") == [ord("A") + 1, ord("b") + 1]
    assert char_ids("é") == [0xC3 + 1, 0xA9 + 1]
    assert len(char_ids("x" * 500)) == MAX_WORD_BYTES and char_ids("") == []


def test_char_cnn_sees_the_characters_of_unknown_words():
    """Two words outside the vocabulary share the [UNK] row; only the character CNN tells them apart."""
    m = word_model(char_cnn_dim=8)
    b = batch(m, posts(["Kolo", "visits", "Qwzx"], ["Kolo", "visits", "Mbappe"]), labels=False)
    assert b["input_ids"][0, 2] == b["input_ids"][1, 2] == m.tokenizer.unk_token_id
    em = m(**b).emissions
    assert not torch.allclose(em[0, 2], em[1, 2])
    # without the character CNN the same two posts are indistinguishable
    plain = word_model()
    em = plain(**batch(plain, posts(["Kolo", "visits", "Qwzx"], ["Kolo", "visits", "Mbappe"]), labels=False)).emissions
    torch.testing.assert_close(em[0], em[1])


def test_char_cnn_output_does_not_depend_on_the_batch():
    m = word_model(char_cnn_dim=8)
    alone = m(**batch(m, posts(["in", "Paris"]), labels=False)).emissions[0]
    mixed = m(**batch(m, posts(["a" * 40, "visited", "the", "Louvre"], ["in", "Paris"]), labels=False)).emissions[1, :2]
    torch.testing.assert_close(alone, mixed, atol=1e-5, rtol=1e-5)


def test_char_cnn_needs_char_ids():
    m = word_model(char_cnn_dim=8)
    b = batch(m, posts(["in", "Paris"]), labels=False)
    b.pop("char_ids")
    with pytest.raises(ValueError, match="needs char_ids"):
        m(**b)
    assert "char_ids" not in batch(word_model(), posts(["in", "Paris"]), labels=False)


# ---- training ----------------------------------------------------------------------------


@pytest.mark.parametrize("char_cnn_dim", [0, 8])
def test_a_few_steps_reduce_the_loss(char_cnn_dim):
    m = word_model(char_cnn_dim=char_cnn_dim).train()
    b = batch(m, SAMPLES)
    opt = torch.optim.AdamW(m.parameter_groups(0.0, 1e-2, 0.0))  # encoder lr 0: the words learn at head_lr
    first = float(m(**b).loss.detach())
    for _ in range(40):
        loss = m(**b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(m(**b).loss.detach()) < 0.3 * first


def test_word_embeddings_learn_at_head_lr():
    m = word_model(char_cnn_dim=4)
    groups = m.parameter_groups(1e-5, 1e-3, 0.01)
    ids = {id(p) for g in groups if g["lr"] == 1e-3 for p in g["params"]}
    assert all(id(p) in ids for p in m.text_encoder.parameters())
    assert not any(g["params"] for g in groups if g["lr"] == 1e-5)


def test_singleton_replacement_only_while_training():
    m = word_model(word_singleton_unk=1.0)
    b = batch(m, posts(["Kolo", "in"]), labels=False)  # Kolo was seen once, in four times
    unk = batch(m, posts(["[UNK]", "in"]), labels=False)
    assert b["input_ids"][0, 0] != m.tokenizer.unk_token_id
    enc = m.text_encoder
    h_eval = enc(b["input_ids"]).last_hidden_state
    enc.train()
    h_train = enc(b["input_ids"]).last_hidden_state
    torch.testing.assert_close(h_train, enc(unk["input_ids"]).last_hidden_state)  # Kolo -> [UNK], in kept
    assert not torch.allclose(h_eval[0, 0], h_train[0, 0])
    torch.testing.assert_close(h_eval[0, 1], h_train[0, 1])


def test_multimodal_on_word_embeddings():
    """BFCL itself runs on the word encoder (an extra baseline, not in the paper)."""
    m = word_model(multimodal=True, bilstm=False, d_model=16, num_heads=4, ffn_dim=32, num_layers=2,
                   num_bottlenecks=2, image_dim=16, contrastive_dim=8, image_encoder="efficientnet-lite0")
    proc = BFCLProcessor.for_model(m)
    img = torch.randn(49, 16, generator=torch.Generator().manual_seed(0))
    items = proc.windows(SAMPLES[:2], [img, None], labels=LabelSet(LABELS))
    out = m.train()(**proc.collate(items))
    assert torch.isfinite(out.loss) and out.loss_vt is not None
    m.eval()
    a = m(**proc.collate(proc.windows(SAMPLES[:1], [img]))).emissions
    b = m(**proc.collate(proc.windows(SAMPLES[:1], [None]))).emissions
    assert not torch.allclose(a, b)


# ---- checkpoints and prediction ------------------------------------------------------------


def test_save_load_round_trip_predicts_the_same(tmp_path):
    m = word_model(char_cnn_dim=6)
    with torch.no_grad():  # a trained-looking model: emissions far from uniform
        m.emission.weight.normal_(0, 3.0)
    m.save_pretrained(tmp_path / "ck")
    files = {p.relative_to(tmp_path / "ck").as_posix() for p in (tmp_path / "ck").rglob("*") if p.is_file()}
    assert files == {"config.json", "model.safetensors", "manifest.json", "tokenizer/tokenizer.json",
                     "tokenizer/tokenizer_config.json"}
    payload = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert payload["text_encoder_config"]["model_type"] == MODEL_TYPE and payload["model"]["text_encoder"] == "words"
    loaded = BFCL.from_pretrained(tmp_path / "ck")
    text = "Kolo and Zanzibarian friends in Paris :) #travel"  # OOV words, raw text
    a, b = Predictor(m).predict(text), Predictor(loaded).predict(text)
    assert a.to_dict() == b.to_dict() and a.tokens[2].text == "Zanzibarian"
    b1, b2 = batch(m, posts(["Kolo", "Qwzx", "in", "Paris"])), batch(loaded, posts(["Kolo", "Qwzx", "in", "Paris"]))
    torch.testing.assert_close(m(**b1).emissions, loaded(**b2).emissions)
    # the processor reads the vocabulary back from the folder as well
    proc = BFCLProcessor.from_pretrained(tmp_path / "ck")
    assert proc.tokenizer.get_vocab() == m.tokenizer.get_vocab() and proc.config.char_cnn_dim == 6


def test_a_broken_word_encoder_config_is_a_checkpoint_error(tmp_path):
    word_model().save_pretrained(tmp_path / "ck")
    f = tmp_path / "ck" / "config.json"
    payload = json.loads(f.read_text())
    del payload["text_encoder_config"]["vocab_size"]
    f.write_text(json.dumps(payload))
    (tmp_path / "ck" / "manifest.json").unlink()  # an old-style folder: no manifest to catch the edit first
    with pytest.raises(CheckpointError, match="text_encoder_config does not describe an encoder"):
        BFCL.from_pretrained(tmp_path / "ck")


# ---- settings ------------------------------------------------------------------------------


def test_word_settings_are_refused_for_a_pretrained_encoder(tmp_path):
    for key, value in [("char_cnn_dim", 30), ("word_embedding_dim", 50), ("word_vectors", "v.txt"),
                       ("word_lowercase", "true"), ("word_min_count", 2), ("word_singleton_unk", 0.1)]:
        with pytest.raises(ConfigError, match=f"{key}.*only the word-level encoder"):
            load_run_config(None, [f"model.{key}={value}", "model.multimodal=false"])
    m, _ = load_run_config(None, ["model.text_encoder=words", "model.multimodal=false", "model.char_cnn_dim=30"])
    assert m.word_level and m.char_cnn_dim == 30 and m.text_dim == 130


def test_invalid_word_settings():
    with pytest.raises(ConfigError, match="word_singleton_unk"):
        word_config(word_singleton_unk=1.5)
    with pytest.raises(ConfigError, match="word_vectors is empty"):
        word_config(word_vectors=" ")
    with pytest.raises(ConfigError, match="char_cnn_dim"):
        word_config(char_cnn_dim=-1)
    with pytest.raises(ConfigError, match="needs a \\[CLS\\] token"):
        word_config(multimodal=True, bilstm=False, text_pooling="cls", image_dim=16)
    word_config(multimodal=True, bilstm=False, text_pooling="cls", image_dim=16, lambda_vt=0.0, lambda_tv=0.0)


def test_words_has_no_pretrained_tokenizer_or_model():
    with pytest.raises(ConfigError, match="vocabulary is built from the training"):
        load_tokenizer("words")
    with pytest.raises(ConfigError, match="vocabulary from the training data"):
        build_model(word_config())
    with pytest.raises(ConfigError, match="not one"):
        build_model(word_config(), tokenizer=load_tokenizer("minilm"))


def test_shipped_baseline_configs():
    bilstm, t1 = load_run_config(ROOT / "configs" / "baselines" / "bilstm-crf-twitter2017.yaml")
    cnn, t2 = load_run_config(ROOT / "configs" / "baselines" / "cnn-bilstm-crf-twitter2017.yaml")
    for m in (bilstm, cnn):
        assert (m.multimodal, m.text_encoder, m.bilstm, m.decoder) == (False, "words", True, "crf")
    assert bilstm.char_cnn_dim == 0 and cnn.char_cnn_dim == 30
    for f in sorted((ROOT / "configs" / "baselines").glob("*.yaml")):
        load_run_config(f)


# ---- bfcl train / evaluate / predict ---------------------------------------------------------


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("probe")
    make_probe(d, seed=1, n_train=32, n_dev=12, n_test=12)
    return d


def test_cli_train_evaluate_predict(probe_dir, tmp_path):
    """`bfcl train` builds the vocabulary (with vectors) from the training split, `bfcl evaluate`
    scores the checkpoint as training did, `bfcl predict` labels raw text with unseen words."""
    from bfcl.cli import app
    from bfcl.data.umt import find_split

    vectors = write_vectors(tmp_path / "vec.txt", {"Lisbon": [0.1] * 8, "Unseenword": [0.2] * 8})
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "model:\n  text_encoder: words\n  multimodal: false\n  bilstm: true\n  bilstm_hidden: 16\n"
        f"  word_embedding_dim: 8\n  char_cnn_dim: 6\n  word_vectors: {vectors}\n"
        f"train:\n  data_dir: {probe_dir}\n  epochs: 2\n  batch_size: 8\n  head_lr: 0.01\n  progress: false\n"
        f"  map_other_to_misc: false\n  output_dir: {tmp_path / 'run'}\n"
    )
    runner = CliRunner()
    r = runner.invoke(app, ["train", "-c", str(cfg), "--results", str(tmp_path / "res.json")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "res.json").read_text())
    best = tmp_path / "run" / "best"
    tok_meta = json.loads((best / "tokenizer" / "tokenizer_config.json").read_text())["bfcl_words"]
    assert tok_meta["vector_words"] >= 1 and tok_meta["train_words"] > 10

    r = runner.invoke(app, ["evaluate", "--model", str(best), "--data", str(find_split(probe_dir, "test")), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output[r.output.index("{"):])["f1"] == pytest.approx(res["test"]["f1"])

    r = runner.invoke(app, ["predict", "--model", str(best), "--text", "Qwzxv met Unseenword in Lisbon", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output[r.output.index("{"):])
    assert d["tokens"] == ["Qwzxv", "met", "Unseenword", "in", "Lisbon"] and len(d["labels"]) == 5


def test_train_refuses_a_bad_vectors_file_before_training(probe_dir, tmp_path):
    bad = tmp_path / "bad.vec"
    bad.write_text("1 4\nword 1 2 3\n", encoding="utf-8")
    model = word_config(word_embedding_dim=4, word_vectors=str(bad), labels=["O"])
    tc = TrainConfig(data_dir=str(probe_dir), epochs=1, output_dir=str(tmp_path / "run"), progress=False)
    with pytest.raises(DataFormatError, match=f"{bad}:2: 'word' has 3 values"):
        train(model, tc)
    assert not (tmp_path / "run" / "last").exists()
    with pytest.raises(ConfigError, match="no such file"):
        train(replace(model, word_vectors=str(tmp_path / "missing.vec")), tc)


def test_resume_rebuilds_the_same_vocabulary_and_continues_exactly(probe_dir, tmp_path, monkeypatch):
    """The vocabulary is rebuilt from the training split on resume: same ids, same weights as a
    straight run (dropout and singleton replacement off, fixed seeds)."""
    import bfcl.training.trainer as trainer
    from safetensors.torch import load_file

    model = word_config(char_cnn_dim=4, word_embedding_dim=8, word_singleton_unk=0.0, labels=["O"])

    def tc(out: str) -> TrainConfig:
        return TrainConfig(data_dir=str(probe_dir), epochs=2, batch_size=8, head_lr=1e-2, output_dir=str(tmp_path / out),
                           progress=False, map_other_to_misc=False, evaluate_test=False)

    train(model, tc("straight"))

    def die(record):  # called once epoch 1 is saved and logged
        raise KeyboardInterrupt("killed after the first epoch")

    monkeypatch.setattr(trainer, "_print_epoch", die)
    with pytest.raises(KeyboardInterrupt):
        train(model, tc("resumed"))
    monkeypatch.undo()
    train(model, tc("resumed"), resume=True)
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and "text_encoder.char_cnn.conv.weight" in a
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
