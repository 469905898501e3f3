from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from bfcl.data.labels import LabelSet
from bfcl.data.types import Sample
from bfcl.data.umt import (
    DataFormatError,
    detect_format,
    find_split,
    find_splits,
    format_samples,
    image_path,
    parse_samples,
    read_conll,
    read_samples,
    read_umt,
    write_samples,
)

UMT = "IMGID:1\nRT\tO\nJohn\tB-PER\nSmith\tI-PER\n\nIMGID:17_06_2\nParis\tB-LOC\n!\tO\n"


def _write(tmp_path: Path, text: str | bytes, name: str = "data.txt") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_bytes(text.encode("utf-8"))
    else:
        path.write_bytes(text)
    return path


def _error(path: Path, line: int, **kwargs) -> DataFormatError:
    with pytest.raises(DataFormatError) as info:
        read_samples(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert path.name in message
    assert info.value.line == line and info.value.source == str(path)
    assert isinstance(info.value, ValueError)
    return info.value


# ---- reading ----------------------------------------------------------------


def test_read_umt_basic(tmp_path):
    path = _write(tmp_path, UMT)
    samples = read_samples(path)
    assert [s.id for s in samples] == ["1", "17_06_2"]
    assert [s.image_id for s in samples] == ["1", "17_06_2"]
    assert samples[0].tokens == ["RT", "John", "Smith"]
    assert samples[0].labels == ["O", "B-PER", "I-PER"]
    assert [s.line for s in samples] == [1, 6]
    assert all(s.source == str(path) for s in samples)
    assert read_umt(path) == samples


@pytest.mark.parametrize("ending", ["", "\n", "\n\n", "\n\n\n"])
def test_last_sample_may_end_at_eof(tmp_path, ending):
    path = _write(tmp_path, UMT.rstrip("\n") + ending)
    samples = read_samples(path)
    assert len(samples) == 2 and samples[1].tokens == ["Paris", "!"]


def test_several_blank_lines_between_samples(tmp_path):
    path = _write(tmp_path, "\n\nIMGID:1\na\tO\n\n\n\nIMGID:2\nb\tO\n")
    samples = read_samples(path)
    assert [(s.id, s.line) for s in samples] == [("1", 3), ("2", 8)]


def test_crlf_and_bom(tmp_path):
    path = _write(tmp_path, b"\xef\xbb\xbf" + UMT.replace("\n", "\r\n").encode())
    samples = read_samples(path)
    assert [s.id for s in samples] == ["1", "17_06_2"]
    assert samples[0].labels == ["O", "B-PER", "I-PER"]
    assert samples[1].tokens == ["Paris", "!"]


def test_bom_with_conll(tmp_path):
    path = _write(tmp_path, b"\xef\xbb\xbfa\tO\n")
    assert read_samples(path)[0].tokens == ["a"]


@pytest.mark.parametrize("token", ["\ufe0f", "\u200b", "\u00a0", "\u200d", "\u00ad", "\u2028", "\u0085", "\ufeff", " "])
def test_invisible_tokens_are_kept(tmp_path, token):
    path = _write(tmp_path, f"IMGID:1\nhi\tO\n{token}\tO\nthere\tO\n")
    sample = read_samples(path)[0]
    assert sample.tokens == ["hi", token, "there"]
    out = tmp_path / "out.txt"
    write_samples(out, [sample])
    assert read_samples(out)[0].tokens == ["hi", token, "there"]


def test_conll_without_imgid(tmp_path):
    path = _write(tmp_path, "a\tB-PER\nb\tI-PER\n\nc\tO\n", name="mydata.conll")
    samples = read_samples(path)
    assert [s.id for s in samples] == ["mydata-1", "mydata-2"]
    assert [s.image_id for s in samples] == [None, None]
    assert [s.line for s in samples] == [1, 4]
    assert read_conll(path) == samples


def test_detect_format():
    assert detect_format(UMT) == "umt"
    assert detect_format("\n\ufeffIMGID:1\na\tO\n") == "conll"  # BOM only counts at the very start
    assert detect_format("\ufeffIMGID:1\na\tO\n") == "umt"
    assert detect_format("a\tO\n") == "conll"
    assert detect_format("") == "conll"


def test_empty_file_has_no_samples(tmp_path):
    assert read_samples(_write(tmp_path, "")) == []
    assert read_samples(_write(tmp_path, "\n\n")) == []


def test_labels_argument_accepts_labelset_and_list(tmp_path):
    path = _write(tmp_path, UMT)
    ls = LabelSet.from_types(["PER", "LOC"])
    assert len(read_samples(path, labels=ls)) == 2
    assert len(read_samples(path, labels=list(ls))) == 2


def test_parse_samples_in_memory():
    samples = parse_samples("a\tO\n", fmt="conll")
    assert samples[0].id == "sample-1" and samples[0].source == "<memory>"
    with pytest.raises(ValueError, match="unknown format"):
        parse_samples("a\tO\n", fmt="json")  # type: ignore[arg-type]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_samples(tmp_path / "nope.txt")
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        read_samples(tmp_path)


# ---- malformed input: every error names file and line -------------------------


def test_one_field(tmp_path):
    e = _error(_write(tmp_path, "IMGID:1\na\tO\nlonely\n"), 3)
    assert "2 fields" in str(e) and "found 1 field" in str(e) and "'lonely'" in str(e)


def test_three_fields_token_with_tab(tmp_path):
    e = _error(_write(tmp_path, "IMGID:1\na\tO\nto\tken\tO\n"), 3)
    assert "found 3 field" in str(e) and "may not contain a tab" in str(e)


def test_empty_token_is_refused_when_strict(tmp_path):
    e = _error(_write(tmp_path, "IMGID:1\na\tO\n\tB-PER\n"), 3, strict=True)
    assert "empty token" in str(e)


def test_whitespace_only_line_separates_samples(tmp_path):
    samples = read_samples(_write(tmp_path, "IMGID:1\na\tO\n   \nIMGID:2\nb\tO\n"))
    assert [s.tokens for s in samples] == [["a"], ["b"]]


@pytest.mark.parametrize("label", ["B-", "X-PER", "b-PER", "O ", "PER", "", "E-PER"])
def test_label_not_bio(tmp_path, label):
    e = _error(_write(tmp_path, f"IMGID:1\na\tO\nb\t{label}\n"), 3)
    assert repr(label) in str(e) and "is not O, B-<type> or I-<type>" in str(e)


def test_unknown_label_with_fixed_set(tmp_path):
    path = _write(tmp_path, "IMGID:1\na\tO\nb\tB-PER\n\nIMGID:2\nc\tB-OTHER\n")
    e = _error(path, 6, labels=LabelSet.from_types(["PER", "MISC"]))
    assert "unknown label 'B-OTHER'" in str(e) and "B-MISC" in str(e)
    assert len(read_samples(path)) == 2  # without a fixed set any BIO label is fine


def test_token_before_imgid(tmp_path):
    e = _error(_write(tmp_path, "IMGID:1\na\tO\n\nb\tO\n"), 4)
    assert "before any IMGID" in str(e)
    with pytest.raises(DataFormatError, match=r"data.txt:1: token line before any IMGID"):
        read_umt(_write(tmp_path, "a\tO\n"))


def test_empty_imgid(tmp_path):
    e = _error(_write(tmp_path, "IMGID:\na\tO\n"), 1)
    assert "bad image id" in str(e)
    _error(_write(tmp_path, "IMGID: 12\na\tO\n"), 1)


def test_imgid_without_tokens(tmp_path):
    e = _error(_write(tmp_path, "IMGID:1\na\tO\n\nIMGID:2\n\nIMGID:3\nb\tO\n"), 4)
    assert "IMGID:2 has no tokens" in str(e)
    _error(_write(tmp_path, "IMGID:1\na\tO\n\nIMGID:9"), 4)  # at EOF too


def test_duplicate_imgid(tmp_path):
    e = _error(_write(tmp_path, "IMGID:1\na\tO\n\nIMGID:1\nb\tO\n"), 4)
    assert "duplicate sample id '1'" in str(e) and "first at line 1" in str(e)


def test_imgid_line_in_conll_file(tmp_path):
    e = _error(_write(tmp_path, "a\tO\n\nIMGID:5\nb\tO\n"), 3)
    assert "IMGID line in a CoNLL file" in str(e)


def test_invalid_utf8(tmp_path):
    e = _error(_write(tmp_path, b"IMGID:1\na\tO\n\xff\xfe\tO\n"), 3)
    assert "not valid UTF-8" in str(e)


def test_sample_line_numbers_with_crlf(tmp_path):
    path = _write(tmp_path, "IMGID:1\r\na\tO\r\n\r\nIMGID:2\r\nb\tO\r\nc\tQ\r\n")
    _error(path, 6)


# ---- writing ----------------------------------------------------------------


def test_write_roundtrip_umt_and_conll(tmp_path):
    samples = read_samples(_write(tmp_path, UMT))
    out = tmp_path / "out.txt"
    write_samples(out, samples)
    assert out.read_text(encoding="utf-8") == UMT + "\n"
    again = read_samples(out)
    assert [(s.id, s.tokens, s.labels, s.image_id) for s in again] == [
        (s.id, s.tokens, s.labels, s.image_id) for s in samples
    ]
    write_samples(out, samples, final_blank_line=False)
    assert out.read_text(encoding="utf-8") == UMT
    conll = tmp_path / "out.conll"
    write_samples(conll, samples, fmt="conll")
    assert conll.read_text(encoding="utf-8").startswith("RT\tO\nJohn\tB-PER\n")
    assert [s.image_id for s in read_samples(conll)] == [None, None]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp files


def test_write_label_override(tmp_path):
    samples = read_samples(_write(tmp_path, UMT))
    out = tmp_path / "pred.txt"
    write_samples(out, samples, labels=[["O", "O", "O"], ["B-ORG", "O"]])
    pred = read_samples(out)
    assert pred[0].labels == ["O", "O", "O"] and pred[1].labels == ["B-ORG", "O"]
    assert samples[0].labels == ["O", "B-PER", "I-PER"]  # originals untouched


def test_write_sample_without_image_id_uses_id(tmp_path):
    out = tmp_path / "o.txt"
    write_samples(out, [Sample(id="abc", tokens=["x"], labels=["O"])])
    assert out.read_text() == "IMGID:abc\nx\tO\n\n"


@pytest.mark.parametrize(
    ("samples", "labels", "message"),
    [
        ([Sample(id="a", tokens=["x"])], None, "has no labels"),
        ([Sample(id="a", tokens=["x"], labels=["O"])], [["O", "O"]], "1 tokens but 2 labels"),
        ([Sample(id="a", tokens=["x"], labels=["O"])], [], "0 label sequences for 1 samples"),
        ([Sample(id="a", tokens=["x\ty"], labels=["O"])], None, "cannot be written"),
        ([Sample(id="a", tokens=[""], labels=["O"])], None, "cannot be written"),
        ([Sample(id="a", tokens=["x\ny"], labels=["O"])], None, "cannot be written"),
        ([Sample(id="a", tokens=["x"], labels=["Z"])], None, "label 'Z'"),
        ([Sample(id="a", tokens=[], labels=[])], None, "has no tokens"),
        ([Sample(id="a\tb", tokens=["x"], labels=["O"])], None, "IMGID line"),
    ],
)
def test_write_rejects_unwritable(tmp_path, samples, labels, message):
    out = tmp_path / "o.txt"
    with pytest.raises(ValueError, match=message):
        write_samples(out, samples, labels=labels)
    assert not out.exists()


def test_format_samples_rejects_unknown_format():
    with pytest.raises(ValueError, match="unknown format"):
        format_samples([], fmt="json")  # type: ignore[arg-type]


# ---- dataset directories ----------------------------------------------------


def test_find_split_names(tmp_path):
    for name in ("train.txt", "dev.txt", "test.conll"):
        (tmp_path / name).write_text("a\tO\n")
    assert find_split(tmp_path, "train").name == "train.txt"
    assert find_split(tmp_path, "valid").name == "dev.txt"
    assert find_split(tmp_path, "dev").name == "dev.txt"
    assert find_split(tmp_path, "test").name == "test.conll"
    assert list(find_splits(tmp_path)) == ["train", "dev", "test"]


def test_find_split_errors(tmp_path):
    (tmp_path / "valid.txt").write_text("a\tO\n")
    (tmp_path / "dev.txt").write_text("a\tO\n")
    with pytest.raises(ValueError, match="ambiguous valid split.*valid.txt, dev.txt"):
        find_split(tmp_path, "valid")
    with pytest.raises(FileNotFoundError, match="no train split"):
        find_split(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split 'eval'"):
        find_split(tmp_path, "eval")
    with pytest.raises(FileNotFoundError, match="dataset directory not found"):
        find_split(tmp_path / "missing", "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no train/valid/dev/test files"):
        find_splits(empty)


def test_image_path(tmp_path):
    (tmp_path / "12.jpg").write_bytes(b"x")
    (tmp_path / "13.png").write_bytes(b"x")
    assert image_path(tmp_path, "12") == tmp_path / "12.jpg"
    assert image_path(tmp_path, "13") is None
    assert image_path(tmp_path, "13", extensions=(".jpg", ".png")) == tmp_path / "13.png"
    assert image_path(tmp_path, "99") is None
    assert image_path(tmp_path, None) is None
    for bad in ("../12", "a/b", "..", "", "a\\b"):
        with pytest.raises(ValueError, match="not a plain file name"):
            image_path(tmp_path, bad)


# ---- real data --------------------------------------------------------------

COUNTS = {
    "twitter2015": {"train": 4000, "valid": 1000, "test": 3257},
    "twitter2017": {"train": 3373, "valid": 723, "test": 723},
}


def _invisible(token: str) -> bool:
    """Format/control/combining/space characters only (U+FE0F, U+200B, U+0092, U+00A0...)."""
    return all(unicodedata.category(ch) in ("Cf", "Cc", "Mn", "Zs") for ch in token)


@pytest.mark.parametrize("dataset", ["twitter2015", "twitter2017"])
def test_real_files_roundtrip_byte_identical(shared_data, tmp_path, dataset):
    for split, n in COUNTS[dataset].items():
        src = shared_data / dataset / f"{split}.txt"
        samples = read_samples(src)
        assert len(samples) == n
        out = tmp_path / f"{dataset}-{split}.txt"
        # Twitter-2017 ends with a blank line, Twitter-2015 right after the last token.
        write_samples(out, samples, final_blank_line=dataset == "twitter2017")
        assert out.read_bytes() == src.read_bytes()
        again = read_samples(out)
        assert [(s.id, s.tokens, s.labels, s.image_id, s.line) for s in again] == [
            (s.id, s.tokens, s.labels, s.image_id, s.line) for s in samples
        ]


def test_real_invisible_tokens_kept(shared_data):
    expected = {"train": 112, "valid": 16, "test": 26}
    for split, n in expected.items():
        samples = read_samples(shared_data / "twitter2017" / f"{split}.txt")
        invisible = [t for s in samples for t in s.tokens if _invisible(t)]
        assert len(invisible) == n
    valid15 = read_samples(shared_data / "twitter2015" / "valid.txt")
    assert [t for s in valid15 for t in s.tokens if _invisible(t)] == ["\u00a0"]
