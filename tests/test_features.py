"""`bfcl features` / bfcl.encoders.parallel: the cache filled by worker processes equals the serial one."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bfcl.cli import app
from bfcl.encoders.cache import FeatureCache
from bfcl.encoders.image import build_image_encoder
from bfcl.encoders.parallel import fill_cache, list_images
from test_feature_cache import TinyEncoder, make_png

TINY = partial(TinyEncoder, "tiny@1")  # picklable: spawned workers import it by name


def cache_tensors(root: Path) -> dict[str, torch.Tensor]:
    """Every entry of a cache folder: relative path -> stored tensor."""
    from safetensors.torch import load_file

    return {str(p.relative_to(root)): load_file(p)["features"] for p in sorted(root.rglob("*.safetensors"))}


def assert_same_cache(a: Path, b: Path) -> None:
    ta, tb = cache_tensors(a), cache_tensors(b)
    assert ta and ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


@pytest.fixture
def image_dir(tmp_path) -> Path:
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    for i in range(7):
        make_png(d / f"{i}.png", seed=i)
    make_png(d / "sub" / "again.png", seed=2)  # same content as 2.png: one entry
    (d / "broken.jpg").write_bytes(b"not a jpeg")
    (d / "notes.txt").write_text("not an image")
    return d


def test_list_images(image_dir):
    images, others = list_images(image_dir)
    assert [p.name for p in images] == ["0.png", "1.png", "2.png", "3.png", "4.png", "5.png", "6.png", "broken.jpg", "again.png"]
    assert [p.name for p in others] == ["notes.txt"]
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_images(image_dir / "absent")


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_fill_the_serial_cache_and_resume(image_dir, tmp_path, workers):
    images, _ = list_images(image_dir)
    serial = tmp_path / "serial"
    FeatureCache(serial, TINY()).encode_images([str(p) for p in images])

    root = tmp_path / "parallel"
    report = fill_cache(images, root, TINY, workers=workers, chunk_images=3)
    # again.png has 2.png's content: one entry. One worker finds it cached; two workers may encode both
    # copies at once (they sit in different chunks), which writes the same entry twice, harmlessly
    assert report.total == 9 and report.encoded + report.cached == 8
    assert (report.encoded, report.cached) == (7, 1) if workers == 1 else report.encoded in (7, 8)
    assert [Path(p).name for p, _ in report.failed] == ["broken.jpg"]
    assert "broken.jpg" in report.failed[0][1] and "not an image file" in report.failed[0][1]
    assert_same_cache(serial, root)

    again = fill_cache(images, root, TINY, workers=workers, chunk_images=3)
    assert (again.encoded, again.cached, len(again.failed)) == (0, 8, 1)
    assert_same_cache(serial, root)


def test_resume_after_partial_run(image_dir, tmp_path):
    images, _ = list_images(image_dir)
    root = tmp_path / "cache"
    first = fill_cache(images[:3], root, TINY, workers=1)  # as if killed after three
    assert first.encoded == 3
    rest = fill_cache(images, root, TINY, workers=1)
    assert (rest.encoded, rest.cached) == (4, 4)


def test_an_encoder_that_cannot_be_built_is_a_config_error(image_dir, tmp_path):
    from bfcl.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown image encoder 'nope'"):
        fill_cache(list_images(image_dir)[0], tmp_path, partial(build_image_encoder, "nope"), workers=1)


def test_cli_usage_errors(tmp_path):
    r = CliRunner().invoke(app, ["features", "--images", str(tmp_path / "absent"), "--cache", str(tmp_path / "c")])
    assert r.exit_code == 2 and "image folder not found" in r.output
    r = CliRunner().invoke(app, ["features", "--images", str(tmp_path), "--encoder", "none"])
    assert r.exit_code == 2 and "reads no images" in r.output
    r = CliRunner().invoke(app, ["features", "--images", str(tmp_path), "--cache", str(tmp_path / "c")])
    assert r.exit_code == 1 and "no image files" in r.output


def test_cli_on_real_images(shared_data, tmp_path):
    """The default encoder over the real tweet images and one bad file, with 2 workers, then a resumed run."""
    folder = tmp_path / "images"
    shutil.copytree(shared_data / "twitter2015" / "images_sample", folder)
    (folder / "truncated.jpg").write_bytes((folder / "102.jpg").read_bytes()[:300])
    images, _ = list_images(folder)
    serial = tmp_path / "serial"
    FeatureCache(serial, build_image_encoder("efficientnet-lite0")).encode_images([str(p) for p in images])

    root = tmp_path / "cache"
    args = ["features", "--images", str(folder), "--encoder", "efficientnet-lite0", "--workers", "2", "--cache", str(root)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    n = len(images) - 1
    assert f"{n + 1} image(s): encoded {n}, already cached 0, failed 1" in r.output
    assert "skipped" in r.output and "truncated.jpg" in r.output
    assert_same_cache(serial, root)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and f"encoded 0, already cached {n}, failed 1" in r.output
