"""The demo probe: deterministic, valid BIO2, and built so that text alone cannot type image-decided names."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from bfcl.data.types import Sample
from bfcl.demo.probe import (
    AMBIGUOUS_NAMES,
    CLASS_TO_TYPE,
    IMAGE_CLASSES,
    IMAGE_SIZE,
    KINDS,
    TEXT_NAMES,
    TYPES,
    Probe,
    draw_image,
    make_probe,
    probe_image_class,
)

SMALL = {"n_train": 60, "n_dev": 20, "n_test": 40}


@pytest.fixture(scope="module")
def default_probe() -> Probe:
    return make_probe()


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Probe, Path]:
    out = tmp_path_factory.mktemp("probe")
    return make_probe(out, seed=3, **SMALL), out


def _content(s: Sample) -> tuple:
    return (s.id, s.tokens, s.labels, s.image_id, s.meta)


def _all(probe: Probe) -> list[Sample]:
    return probe.train + probe.dev + probe.test


def _spans(labels: list[str]) -> list[tuple[int, int, str]]:
    """Entity spans of a BIO2 sequence (assumed valid)."""
    spans: list[tuple[int, int, str]] = []
    for i, lab in enumerate(labels):
        if lab.startswith("B-"):
            spans.append((i, i + 1, lab[2:]))
        elif lab.startswith("I-"):
            start, _, t = spans[-1]
            spans[-1] = (start, i + 1, t)
    return spans


def _read_umt(path: Path) -> list[tuple[str, list[str], list[str], int]]:
    """(image id, tokens, labels, line of the IMGID line) per sample, parsed independently of bfcl."""
    out: list[tuple[str, list[str], list[str], int]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if line.startswith("IMGID:"):
            out.append((line[len("IMGID:") :], [], [], n))
        elif line:
            token, label = line.split("\t")
            out[-1][1].append(token)
            out[-1][2].append(label)
    return out


# ------------------------------------------------------------------ determinism


def test_same_seed_same_samples_and_image_pixels():
    a, b = make_probe(seed=7, **SMALL), make_probe(seed=7, **SMALL)
    assert [_content(s) for s in _all(a)] == [_content(s) for s in _all(b)]
    assert a.images.keys() == b.images.keys()
    for k in a.images:
        assert a.images[k].tobytes() == b.images[k].tobytes(), k


def test_same_seed_same_png_bytes(tmp_path: Path):
    make_probe(tmp_path / "a", seed=7, **SMALL)
    make_probe(tmp_path / "b", seed=7, **SMALL)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 3 + sum(SMALL.values())
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_different_seed_differs():
    a, b = make_probe(seed=0, **SMALL), make_probe(seed=1, **SMALL)
    assert [s.tokens for s in a.train] != [s.tokens for s in b.train]
    assert all(a.images[k].tobytes() != b.images[k].tobytes() for k in a.images)


def test_split_sizes_do_not_change_other_splits():
    """Each split has its own generator: a bigger train split leaves test as it was."""
    a, b = make_probe(seed=2, **SMALL), make_probe(seed=2, n_train=90, n_dev=20, n_test=40)
    assert [_content(s) for s in a.test] == [_content(s) for s in b.test]


def test_draw_image_is_deterministic_and_sized():
    for c in IMAGE_CLASSES:
        img = draw_image(c, 123)
        assert img.size == (IMAGE_SIZE, IMAGE_SIZE) and img.mode == "RGB"
        assert img.tobytes() == draw_image(c, 123).tobytes()
        assert img.tobytes() != draw_image(c, 124).tobytes()
    with pytest.raises(ValueError, match="unknown image class"):
        draw_image("cat", 0)


# ------------------------------------------------------------------ labels and meta


def test_labels_are_valid_bio2_and_match_meta(default_probe: Probe):
    allowed = {"O"} | {f"{p}-{t}" for p in "BI" for t in TYPES}
    for s in _all(default_probe):
        assert s.labels is not None and len(s.labels) == len(s.tokens) > 0
        assert set(s.labels) <= allowed, s
        for prev, lab in zip(["O", *s.labels], s.labels):
            if lab.startswith("I-"):
                assert prev in (f"B-{lab[2:]}", lab), (s.id, s.labels)
        ents = s.meta["entities"]
        assert _spans(s.labels) == [(e["start"], e["end"], e["type"]) for e in ents]
        assert [" ".join(s.tokens[e["start"] : e["end"]]) for e in ents] == [e["text"] for e in ents]
        assert all(t.strip() == t and t for t in s.tokens)


def test_meta_kinds_and_image_classes(default_probe: Probe):
    for s in _all(default_probe):
        kind, cls = s.meta["kind"], probe_image_class(s)
        assert kind in KINDS and cls in IMAGE_CLASSES
        by_image = [e for e in s.meta["entities"] if e["decided_by"] == "image"]
        by_text = [e for e in s.meta["entities"] if e["decided_by"] == "text"]
        if kind == "image-decided":
            # One image per post: every image-decided entity has the type the picture shows.
            assert by_image and all(e["type"] == CLASS_TO_TYPE[cls] for e in by_image)
            assert all(e["text"] in AMBIGUOUS_NAMES for e in by_image)
            assert len(by_text) <= 1
        else:
            assert not by_image and len(by_text) == 1
            # The picture is unrelated or points at another type: it must be overruled.
            assert CLASS_TO_TYPE[cls] != by_text[0]["type"]
        for e in by_text:
            assert e["text"] in TEXT_NAMES[e["type"]]


def test_probe_image_class_rejects_foreign_samples():
    with pytest.raises(KeyError, match="not a probe sample"):
        probe_image_class(Sample(id="x", tokens=["a"], labels=["O"]))


# ------------------------------------------------------------------ text cannot decide image-decided types


def test_image_decided_names_and_templates_occur_with_several_types(default_probe: Probe):
    name_types: dict[str, set[str]] = defaultdict(set)
    template_types: dict[str, set[str]] = defaultdict(set)
    type_counts: dict[str, int] = defaultdict(int)
    for s in default_probe.train:
        if s.meta["kind"] != "image-decided":
            continue
        for e in s.meta["entities"]:
            if e["decided_by"] == "image":
                name_types[e["text"]].add(e["type"])
                template_types[s.meta["template"]].add(e["type"])
                type_counts[e["type"]] += 1
    assert set(name_types) == set(AMBIGUOUS_NAMES)
    assert all(len(t) > 1 for t in name_types.values()), name_types
    assert all(len(t) == len(TYPES) for t in name_types.values()), "every name should carry every type"
    assert all(len(t) > 1 for t in template_types.values()), template_types
    # Balanced types: a text-only model's best guess (the majority type) stays near 1/4.
    assert set(type_counts) == set(TYPES)
    assert max(type_counts.values()) / sum(type_counts.values()) < 0.3


def test_text_decided_names_are_not_ambiguous_names():
    flat = {w for names in TEXT_NAMES.values() for n in names for w in n.split()}
    assert not flat & {w for n in AMBIGUOUS_NAMES for w in n.split()}
    for t, names in TEXT_NAMES.items():
        for u, other in TEXT_NAMES.items():
            if t != u:
                assert not set(names) & set(other)


# ------------------------------------------------------------------ sizes


def test_default_split_sizes_and_kind_mix(default_probe: Probe):
    assert (len(default_probe.train), len(default_probe.dev), len(default_probe.test)) == (600, 150, 300)
    for split in (default_probe.train, default_probe.dev, default_probe.test):
        share = sum(s.meta["kind"] == "image-decided" for s in split) / len(split)
        assert share == pytest.approx(0.6, abs=0.01)
    ids = [s.id for s in _all(default_probe)]
    image_ids = [s.image_id for s in _all(default_probe)]
    assert len(set(ids)) == len(ids) and len(set(image_ids)) == len(image_ids)


def test_custom_and_empty_sizes():
    p = make_probe(n_train=10, n_dev=0, n_test=3)
    assert (len(p.train), len(p.dev), len(p.test)) == (10, 0, 3)
    assert p.split("valid") is p.dev
    with pytest.raises(ValueError):
        make_probe(n_train=-1)


def test_an_empty_split_gets_no_file(tmp_path: Path):
    # data readers refuse an empty file, so a probe without a test split must not write one
    make_probe(tmp_path, n_train=4, n_dev=2, n_test=0)
    assert (tmp_path / "train.txt").is_file() and (tmp_path / "valid.txt").is_file()
    assert not (tmp_path / "test.txt").exists()


def test_every_sample_has_its_image_in_memory(default_probe: Probe):
    assert set(default_probe.images) == {s.image_id for s in _all(default_probe)}
    for s in default_probe.test[:20]:
        img = default_probe.image(s.image_id)
        assert isinstance(img, Image.Image) and img.size == (IMAGE_SIZE, IMAGE_SIZE)


# ------------------------------------------------------------------ written UMT files


def test_written_files_reread_equal_samples(written: tuple[Probe, Path]):
    probe, out = written
    for split, fname in (("train", "train.txt"), ("dev", "valid.txt"), ("test", "test.txt")):
        samples = probe.split(split)
        parsed = _read_umt(out / fname)
        assert [(s.image_id, s.tokens, s.labels) for s in samples] == [p[:3] for p in parsed]
        # Written samples point at their IMGID line, for error messages.
        assert [(s.source, s.line) for s in samples] == [(str(out / fname), p[3]) for p in parsed]


def test_written_images_exist_and_match_memory(written: tuple[Probe, Path]):
    probe, out = written
    in_memory = make_probe(seed=3, **SMALL)
    for s in _all(probe):
        path = out / "images" / f"{s.image_id}.png"
        assert probe.images[s.image_id] == path and path.is_file()
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (IMAGE_SIZE, IMAGE_SIZE) and img.mode == "RGB"
            assert img.tobytes() == in_memory.images[s.image_id].tobytes()
        assert probe.image(s.image_id).tobytes() == in_memory.images[s.image_id].tobytes()
