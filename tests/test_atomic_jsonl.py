"""bfcl.data.atomic (one atomic-write helper) and bfcl.data.jsonl (the JSONL post reader)."""

from __future__ import annotations

import pytest

from bfcl.data.atomic import atomic_path, atomic_write
from bfcl.data.jsonl import is_jsonl, read_jsonl
from bfcl.errors import DataFormatError


def test_atomic_write_replaces_only_when_complete(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half")
            assert target.read_text(encoding="utf-8") == "old\n"  # not visible mid-write
            raise RuntimeError("crash")
    assert target.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temporary file left
    with atomic_write(target) as f:
        f.write("new\r\nline\u2028\n")
    assert target.read_bytes() == "new\r\nline\u2028\n".encode("utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_atomic_path_gives_a_file_name_beside_the_target(tmp_path):
    target = tmp_path / "x.bin"
    with atomic_path(target, durable=False, prefix=".abc.") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".abc.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"\x00\x01")
        assert not target.exists()
    assert target.read_bytes() == b"\x00\x01" and not tmp.exists()
    with pytest.raises(FileNotFoundError):  # the folder must exist: nothing is created silently
        with atomic_path(tmp_path / "missing" / "y.bin"):
            pass


def test_jsonl_reader_names_file_and_line(tmp_path):
    path = tmp_path / "posts.jsonl"
    path.write_bytes(b'{"id": 1, "text": "Obama in Paris"}\n\n{"id": 2, "text": "caf\xe9"}\n')
    assert is_jsonl(path)
    with pytest.raises(DataFormatError, match=rf"^{path}:3: not valid UTF-8") as info:
        read_jsonl(path, None, "none")
    assert (info.value.source, info.value.line) == (str(path), 3)
    path.write_text('{"id": 1, "tokens": ["Obama", " "]}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r":1: 'tokens' contains an empty"):
        read_jsonl(path, None, "none")
    path.write_text('{"id": "a", "text": "Obama\u2028Paris", "image": "nope.jpg"}\n', encoding="utf-8")
    records, warnings = read_jsonl(path, None, "none")
    assert [(r.id, r.content, r.image) for r in records] == [("a", "Obama\u2028Paris", None)]
    assert len(warnings) == 1 and "image file not found" in warnings[0] and f"{path}:1" in warnings[0]
    with pytest.raises(DataFormatError, match="image file not found"):
        read_jsonl(path, None, "error")
