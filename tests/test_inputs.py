"""Real-world input files and the errors a newcomer sees: data files, split folders,
labels, evaluation alignment, image formats, and the CLI's one-line errors."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from bfcl.cli import app, describe_error
from bfcl.data.images import ALLOWED_FORMATS, ImageLoadError, load_image, sniff_format
from bfcl.data.labels import (
    LabelSet,
    count_stray_i,
    map_other_to_misc,
    map_sample_types,
    repair_stray_i,
    repair_stray_i_counted,
)
from bfcl.data.splits import check_split_files, read_split, resolve_split_files
from bfcl.data.types import Sample
from bfcl.data.umt import DataFormatError, find_splits, parse_samples, read_samples
from bfcl.errors import ConfigError
from bfcl.metrics import check_aligned

runner = CliRunner()


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


# ---- data reader: real-world CoNLL variants ------------------------------------------


@pytest.mark.parametrize("separator", ["\t", "  ", " \t ", "\t\t", "\f"])
def test_whitespace_only_line_separates_samples(tmp_path, separator):
    conll = _write(tmp_path / "a.conll", f"John\tB-PER\nsays\tO\n{separator}\nhi\tO\n")
    assert [s.tokens for s in read_samples(conll)] == [["John", "says"], ["hi"]]
    umt = _write(tmp_path / "a.txt", f"IMGID:1\nJohn\tB-PER\n{separator}\nIMGID:2\nhi\tO\n{separator}\n")
    assert [(s.image_id, s.tokens) for s in read_samples(umt)] == [("1", ["John"]), ("2", ["hi"])]


def test_empty_tokens_and_single_space_lines_are_skipped_with_a_counted_warning(tmp_path, caplog):
    text = "Obama\tB-PER\n\tO\nvisits\tO\n \nParis\tB-LOC\n\tO\n\nnext\tO\n"
    path = _write(tmp_path / "wild.conll", text)
    with caplog.at_level(logging.WARNING, logger="bfcl.data.umt"):
        samples = read_samples(path)
    # the skipped lines do not split the sample, and nothing else is dropped
    assert [s.tokens for s in samples] == [["Obama", "visits", "Paris"], ["next"]]
    assert samples[0].labels == ["B-PER", "O", "B-LOC"]
    [record] = [r for r in caplog.records if r.name == "bfcl.data.umt"]
    message = record.getMessage()
    assert str(path) in message and "skipped 3 line(s)" in message
    assert "2 with an empty token (label O) (lines 2, 6)" in message
    assert "1 with a line holding a single space (line 4)" in message


def test_strict_reading_refuses_what_it_would_skip(tmp_path):
    path = _write(tmp_path / "wild.conll", "Obama\tB-PER\n\tO\n")
    with pytest.raises(DataFormatError, match=rf"^{path}:2: an empty token \(label O\)"):
        read_samples(path, strict=True)
    path = _write(tmp_path / "space.conll", "Obama\tB-PER\n \nvisits\tO\n")
    with pytest.raises(DataFormatError, match=rf"^{path}:2: a line holding a single space"):
        read_samples(path, strict=True)
    with pytest.raises(DataFormatError, match=":2: an empty token"):
        parse_samples("a\tO\n\tB-PER\n", strict=True)


def test_empty_token_with_a_bad_label_is_still_an_error(tmp_path):
    with pytest.raises(DataFormatError, match="label 'X-LOC' is not O"):
        read_samples(_write(tmp_path / "d.conll", "a\tO\n\tX-LOC\n"))


def test_sample_of_skipped_lines_only_is_an_error(tmp_path):
    with pytest.raises(DataFormatError, match="has no tokens"):
        read_samples(_write(tmp_path / "d.txt", "IMGID:1\n\tO\n\nIMGID:2\na\tO\n"))


@pytest.mark.parametrize(
    ("encoding", "bom", "expected"),
    [
        ("utf-16-le", b"", "looks like UTF-16 (little-endian"),
        ("utf-16-be", b"", "looks like UTF-16 (big-endian"),
        ("utf-16-le", b"\xff\xfe", "UTF-16 byte-order mark"),
        ("utf-16-be", b"\xfe\xff", "UTF-16 byte-order mark"),
    ],
)
def test_utf16_is_named(tmp_path, encoding, bom, expected):
    path = _write(tmp_path / "u16.txt", bom + "IMGID:1\nJohn\tB-PER\n\n".encode(encoding))
    with pytest.raises(DataFormatError) as info:
        read_samples(path)
    assert str(info.value).startswith(f"{path}:1: ") and expected in str(info.value)
    assert "UTF-8" in str(info.value)  # says what to convert it to


def test_nul_byte_in_utf8_file_names_its_line(tmp_path):
    path = _write(tmp_path / "nul.txt", b"IMGID:1\nJohn\tB-PER\nbad\x00token\tO\n" + b"x\tO\n" * 50)
    with pytest.raises(DataFormatError, match=rf"^{path}:3: NUL byte"):
        read_samples(path)


def test_error_on_a_huge_line_echoes_a_readable_part(tmp_path):
    path = _write(tmp_path / "huge.txt", "IMGID:1\n" + "x" * 10_000_000 + "\n")
    with pytest.raises(DataFormatError) as info:
        read_samples(path)
    message = str(info.value)
    assert len(message) < 300 and "…" in message and "10000000 characters" in message
    with pytest.raises(DataFormatError) as info:
        read_samples(_write(tmp_path / "label.txt", "IMGID:1\nx\tB-" + "P" * 5000 + " \n"))
    assert len(str(info.value)) < 300


def test_no_split_files_lists_the_accepted_names(tmp_path):
    (tmp_path / "training.txt").write_text("a\tO\n")
    with pytest.raises(FileNotFoundError) as info:
        find_splits(tmp_path)
    assert "train|valid|dev|val|test with .txt/.conll/.tsv/.bio or no extension" in str(info.value)


# ---- split files for training and evaluation --------------------------------------------


def test_resolve_split_files(tmp_path):
    _write(tmp_path / "train.conll", "a\tO\n")
    _write(tmp_path / "dev.txt", "a\tO\n")
    files = resolve_split_files(tmp_path)
    assert files == {"train": tmp_path / "train.conll", "dev": tmp_path / "dev.txt", "test": None}
    other = _write(tmp_path / "other.tsv", "b\tO\n")
    assert resolve_split_files(tmp_path, test_file=other)["test"] == other
    assert resolve_split_files(None, train_file=other)["train"] == other


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data_dir": "/nonexistent/bfcl-data"}, "train.data_dir /nonexistent/bfcl-data does not exist"),
        ({"train_file": "/nonexistent/train.txt"}, "train.train_file /nonexistent/train.txt does not exist"),
        ({}, "no training data: set train.data_dir or train.train_file"),
    ],
)
def test_resolve_split_files_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        resolve_split_files(**kwargs)


def test_data_dir_without_train_file_lists_names(tmp_path):
    _write(tmp_path / "valid.txt", "a\tO\n")
    with pytest.raises(ConfigError, match=r"no training file in .* \(accepted names: train\|valid\|dev\|val\|test"):
        resolve_split_files(tmp_path)


@pytest.mark.parametrize("content", ["", "\n\n", " \t\n\n"])
def test_empty_split_files_are_refused(tmp_path, content):
    _write(tmp_path / "train.txt", content)
    with pytest.raises(DataFormatError, match=r"train.txt:1: the train file is empty"):
        check_split_files(tmp_path)
    with pytest.raises(DataFormatError, match="the train file is empty"):
        read_split(tmp_path / "train.txt", split="train")
    _write(tmp_path / "train.txt", "a\tO\n")
    _write(tmp_path / "test.txt", content)
    with pytest.raises(DataFormatError, match=r"test.txt:1: the test file is empty"):
        check_split_files(tmp_path)


def test_check_split_files_strict_parses(tmp_path):
    _write(tmp_path / "train.txt", "a\tO\n\tO\n")
    assert check_split_files(tmp_path)["train"] == tmp_path / "train.txt"  # skipped later, with a warning
    with pytest.raises(DataFormatError, match=r"train.txt:2: an empty token"):
        check_split_files(tmp_path, strict=True)


def test_read_split_maps_other_and_logs_the_count(tmp_path, caplog):
    path = _write(tmp_path / "t.txt", "IMGID:1\nBig\tB-OTHER\nApple\tI-OTHER\nx\tO\n")
    with caplog.at_level(logging.INFO, logger="bfcl.data.splits"):
        samples = read_split(path)
    assert samples[0].labels == ["B-MISC", "I-MISC", "O"]
    assert any("2 OTHER label(s) read as MISC" in r.getMessage() for r in caplog.records)


# ---- labels ------------------------------------------------------------------------------


def test_label_changes_are_counted():
    samples = [Sample("1", ["a", "b", "c"], ["B-OTHER", "I-OTHER", "O"]), Sample("2", ["d"], ["B-PER"]),
               Sample("3", ["e"], None)]
    assert map_other_to_misc(samples) == 2 and samples[0].labels == ["B-MISC", "I-MISC", "O"]
    assert map_other_to_misc(samples) == 0
    assert map_sample_types(samples, {"PER": "PERSON"}) == 1 and samples[1].labels == ["B-PERSON"]
    stray = ["O", "I-PER", "I-PER", "O", "I-LOC", "B-ORG", "I-ORG"]
    fixed, n = repair_stray_i_counted(stray)
    assert n == 2 and fixed == repair_stray_i(stray) == ["O", "B-PER", "I-PER", "O", "B-LOC", "B-ORG", "I-ORG"]
    assert count_stray_i([Sample("x", ["t"] * 7, stray), Sample("y", ["t"], ["O"])]) == 2


def test_malformed_labels_are_refused_when_read(tmp_path):
    with pytest.raises(DataFormatError, match=r":3: label 'X-LOC' is not O, B-<type> or I-<type>"):
        read_samples(_write(tmp_path / "d.txt", "IMGID:1\nParis\tB-LOC\nFrance\tX-LOC\n"))
    with pytest.raises(ValueError, match="'X-LOC'"):
        LabelSet(["O", "B-LOC", "I-LOC", "X-LOC"])


# ---- evaluation ----------------------------------------------------------------------------


def test_alignment_compares_tokens_not_only_counts():
    gold = [Sample("1", ["Obama", "in", "Paris"], ["B-PER", "O", "B-LOC"], source="g.txt", line=1)]
    pred = [Sample("1", ["Obama", "in", "Berlin"], ["B-PER", "O", "B-LOC"], source="p.txt", line=1)]
    with pytest.raises(ValueError, match=r"sample 1 .*g.txt:1.*token 3 differs: gold 'Paris' but prediction 'Berlin'"):
        check_aligned(gold, pred)


def test_cli_evaluate_token_mismatch_is_an_error(tmp_path):
    g = _write(tmp_path / "gold.txt", "IMGID:1\nJohn\tB-PER\nin\tO\n\nIMGID:2\nBig\tB-ORG\nApple\tI-ORG\n")
    p = _write(tmp_path / "pred.txt", "IMGID:1\nJohn\tB-PER\nin\tO\n\nIMGID:2\nBig\tB-ORG\nBanana\tI-ORG\n")
    r = runner.invoke(app, ["evaluate", "--gold", str(g), "--pred", str(p), "--json"])
    assert r.exit_code == 1
    [line] = r.stderr.strip().splitlines()
    assert "sample 2" in line and "token 2 differs" in line and "'Apple'" in line and "'Banana'" in line


def test_cli_evaluate_empty_gold_is_an_error(tmp_path):
    g = _write(tmp_path / "gold.txt", "\n")
    p = _write(tmp_path / "pred.txt", "\n")
    r = runner.invoke(app, ["evaluate", "--gold", str(g), "--pred", str(p)])
    assert r.exit_code == 1 and "gold file is empty" in r.stderr


def test_cli_evaluate_strict_data(tmp_path):
    g = _write(tmp_path / "gold.conll", "John\tB-PER\n\tO\nin\tO\n")
    r = runner.invoke(app, ["evaluate", "--gold", str(g), "--pred", str(g), "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", "--gold", str(g), "--pred", str(g), "--strict-data"])
    assert r.exit_code == 1 and f"{g}:2: an empty token" in r.stderr


@pytest.mark.parametrize(("name", "fmt_line"), [("test.conll", "John\tB-PER"), ("test.txt", "IMGID:7")])
def test_evaluate_model_output_keeps_the_input_format(tmp_path, monkeypatch, name, fmt_line):
    from bfcl.inference.predictor import Predictor
    from bfcl.inference.evaluate import evaluate_model

    class Labeller:  # stands in for a trained model: labels every word O
        def label_samples(self, samples, images_dir=None, batch_size=64):
            return [["O"] * len(s.tokens) for s in samples]

    monkeypatch.setattr(Predictor, "load", classmethod(lambda cls, *a, **k: Labeller()))
    body = "John\tB-PER\nin\tO\n"
    data = _write(tmp_path / name, body if name.endswith(".conll") else "IMGID:7\n" + body)
    out = tmp_path / "pred"
    scores = evaluate_model("unused", data, output=out)
    assert scores["f1"] == 0.0
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ("John\tO" if name.endswith(".conll") else "IMGID:7")
    assert [s.tokens for s in read_samples(out)] == [["John", "in"]]


# ---- images: a format whitelist checked before any decoder ------------------------------------


def _encoded(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    mode = "RGBA" if fmt == "ICO" else "RGB"
    Image.new(mode, (16, 16), (200, 10, 10)).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_allowed_formats_load(tmp_path, fmt):
    data = _encoded(fmt)
    assert sniff_format(data[:16]) == fmt and fmt in ALLOWED_FORMATS
    path = _write(tmp_path / "x.jpg", data)  # the extension does not matter, the content does
    assert load_image(path, size=8).shape == (3, 8, 8)
    assert load_image(data, size=8).shape == (3, 8, 8)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"


@pytest.fixture
def eps_decoder_spy(monkeypatch):
    """Replace Pillow's EPS plugin so any attempt to identify or decode EPS is recorded."""
    calls: list[str] = []

    def accept(prefix: bytes) -> bool:
        calls.append("accept")
        return True

    def factory(fp, filename=None):
        calls.append("decode")
        raise AssertionError("the EPS decoder was reached")

    Image.init()
    monkeypatch.setitem(Image.OPEN, "EPS", (factory, accept))
    return calls


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (EPS, "PostScript/EPS"),
        (b"\xc5\xd0\xd3\xc6" + b"\x00" * 28, "EPS"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "PDF"),
        (b'<?xml version="1.0"?><svg/>', "XML/SVG"),
        (b"8BPS\x00\x01" + b"\x00" * 30, "Photoshop PSD"),
    ],
)
def test_other_formats_named_jpg_never_reach_a_decoder(tmp_path, eps_decoder_spy, data, kind):
    path = _write(tmp_path / "photo.jpg", data)
    for source in (path, data):
        with pytest.raises(ImageLoadError) as info:
            load_image(source)
        assert f"looks like {kind}" in str(info.value) and "JPEG, PNG, GIF, WebP, BMP or TIFF" in str(info.value)
    assert eps_decoder_spy == []
    assert load_image(path, on_error="none") is None


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA", "PCX"])
def test_formats_pillow_could_read_are_refused(tmp_path, eps_decoder_spy, fmt):
    path = _write(tmp_path / "x.jpg", _encoded(fmt))
    with pytest.raises(ImageLoadError, match="not an image file in an allowed format"):
        load_image(path)
    assert eps_decoder_spy == []


def test_whitelist_holds_even_past_the_magic_check(tmp_path, eps_decoder_spy, monkeypatch):
    # If the magic check let a file through, Image.open(formats=...) would still not try EPS.
    import bfcl.data.images as images

    monkeypatch.setattr(images, "_refuse_format", lambda head, what: None)
    with pytest.raises(ImageLoadError, match="not an image file PIL can read"):
        load_image(_write(tmp_path / "x.jpg", EPS))
    assert eps_decoder_spy == []


# ---- the CLI: one line per error, tracebacks on request ---------------------------------------------


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    bad = _write(tmp_path / "train.txt", "IMGID:1\nJohn\tB-PER\nin\tO\tO\n")
    r = runner.invoke(app, ["data", "stats", str(bad)])
    assert r.exit_code == 1 and not isinstance(r.exception, DataFormatError)
    lines = r.stderr.strip().splitlines()
    assert lines == [f"Error: {bad}:3: expected 'token<TAB>label' (2 fields) but found 3 field(s): 'in\\tO\\tO' "
                     "(a token may not contain a tab)"]


def test_cli_debug_shows_the_exception(tmp_path, monkeypatch):
    bad = _write(tmp_path / "train.txt", "IMGID:1\nJohn\tX-PER\n")
    r = runner.invoke(app, ["--debug", "data", "stats", str(bad)])
    assert isinstance(r.exception, DataFormatError)
    r = runner.invoke(app, ["data", "stats", str(bad)], env={"BFCL_DEBUG": "1"})
    assert isinstance(r.exception, DataFormatError)
    r = runner.invoke(app, ["data", "stats", str(bad)], env={"BFCL_DEBUG": "0"})
    assert r.exit_code == 1 and not isinstance(r.exception, DataFormatError)


def test_describe_error_codes_and_lines(tmp_path):
    assert describe_error(ConfigError("--set: train.epochs=2.5: expected an integer")) == (
        2, ["Error: --set: train.epochs=2.5: expected an integer"])
    assert describe_error(ImageLoadError("image x.jpg: file not found"))[0] == 1
    try:
        open(tmp_path / "nope.txt")
    except OSError as e:
        assert describe_error(e) == (1, [f"Error: No such file or directory: {tmp_path / 'nope.txt'}"])
    code, lines = describe_error(RuntimeError("boom"))
    assert code == 1 and lines[0] == "Error: unexpected RuntimeError: boom" and "--debug" in lines[1]
    code, lines = describe_error(ValueError("x" * 5000))
    assert len(lines) == 1 and len(lines[0]) < 2100


def test_cli_stats_strict_data(tmp_path, caplog):
    wild = _write(tmp_path / "train.conll", "John\tB-PER\n\tO\nin\tO\n")
    with caplog.at_level(logging.WARNING, logger="bfcl.data.umt"):
        r = runner.invoke(app, ["data", "stats", str(wild), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["train"]["samples"] == 1
    assert any("skipped 1 line(s)" in rec.getMessage() for rec in caplog.records)
    r = runner.invoke(app, ["data", "stats", str(wild), "--strict-data"])
    assert r.exit_code == 1 and f"{wild}:2: an empty token" in r.stderr


def test_skipped_lines_warning_reaches_the_terminal(tmp_path):
    """Outside pytest's log capture: the real command prints the warning on stderr."""
    wild = _write(tmp_path / "train.conll", "John\tB-PER\n\tO\nin\tO\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-m", "bfcl.cli", "data", "stats", str(wild), "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"WARNING: {wild}: skipped 1 line(s): 1 with an empty token (label O) (line 2)" in r.stderr


def _train_yaml(tmp_path: Path, train: str) -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model:\n  image_encoder: none\n  d_model: 32\n  num_heads: 4\ntrain:\n{train}"
                   f"  output_dir: {tmp_path / 'out'}\n  progress: false\n")
    return cfg


def test_cli_train_input_errors_are_one_line(tmp_path):
    bad = _write(tmp_path / "bad.txt", "IMGID:1\nJohn\tB-PER\nParis\n")
    empty = _write(tmp_path / "empty.txt", "")
    wild = _write(tmp_path / "wild.txt", "a\tO\n\tO\n")
    cases = [
        (f"  train_file: {bad}\n", 1, f"Error: {bad}:3: expected 'token<TAB>label' (2 fields) but found 1 field(s)"),
        ("  data_dir: /nonexistent/bfcl\n", 2, "Error: train.data_dir /nonexistent/bfcl does not exist"),
        (f"  train_file: {empty}\n", 1, "the train file is empty"),
        (f"  train_file: {wild}\n  strict_data: true\n", 1, "wild.txt:2: an empty token"),
    ]
    for train, code, message in cases:
        r = runner.invoke(app, ["train", "-c", str(_train_yaml(tmp_path, train))])
        assert r.exit_code == code, (train, r.output)
        errors = [line for line in r.stderr.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and message in errors[0], (train, r.stderr)
        assert "Traceback" not in r.output


def test_predict_help_does_not_assume_twitter_labels():
    r = runner.invoke(app, ["predict", "--help"])
    assert r.exit_code == 0 and "PER/LOC" not in r.output
    assert "types the model was trained on" in " ".join(r.output.split())


def test_predict_jsonl_in_utf16_is_named(tmp_path):
    from bfcl.cli.predict import InputError, read_jsonl

    path = _write(tmp_path / "posts.jsonl", '{"id": 1, "text": "Obama in Paris"}\n'.encode("utf-16-le"))
    with pytest.raises(InputError, match=rf"^{path}:1: the file looks like UTF-16"):
        read_jsonl(path, None, "none")
