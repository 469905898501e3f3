from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from bfcl.data.images import ImageLoadError, load_image, load_image_batch, to_rgb

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _px(t: torch.Tensor, y: int, x: int) -> list[float]:
    return [round(float(v), 2) for v in t[:, y, x]]


def _close(t: torch.Tensor, y: int, x: int, rgb: tuple[float, float, float], tol: float = 0.08) -> bool:
    return all(abs(float(t[c, y, x]) - rgb[c]) <= tol for c in range(3))


def _check(t: torch.Tensor | None, size: int = 224) -> torch.Tensor:
    assert t is not None
    assert t.shape == (3, size, size) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    return t


@pytest.fixture(autouse=True)
def _strict_truncation(monkeypatch):
    # A truncated file must fail here even if something else relaxed PIL globally.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)


# ---- modes ------------------------------------------------------------------


def test_rgb_path_bytes_and_pil_agree(tmp_path):
    img = Image.new("RGB", (30, 20), RED)
    path = tmp_path / "red.png"
    img.save(path)
    a = _check(load_image(path, size=16), 16)
    b = _check(load_image(path.read_bytes(), size=16), 16)
    c = _check(load_image(img, size=16), 16)
    d = _check(load_image(str(path), size=16), 16)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)
    assert _close(a, 8, 8, (1, 0, 0), tol=0.0)


def test_no_normalisation_and_matches_plain_bicubic_resize(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    expected = np.asarray(img.resize((24, 24), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    got = _check(load_image(img, size=24), 24)
    assert torch.allclose(got, torch.from_numpy(expected).permute(2, 0, 1))
    assert torch.equal(got, load_image(img, size=24))  # deterministic


def test_grayscale_L(tmp_path):
    path = tmp_path / "g.png"
    Image.new("L", (10, 10), 128).save(path)
    t = _check(load_image(path, size=8), 8)
    assert _close(t, 4, 4, (128 / 255,) * 3, tol=1e-6)


def test_mode_1_bilevel(tmp_path):
    path = tmp_path / "b.png"
    Image.new("1", (10, 10), 1).save(path)
    assert _close(_check(load_image(path, size=8), 8), 4, 4, (1, 1, 1), tol=0.0)


def test_palette_P(tmp_path):
    img = Image.new("RGB", (10, 10), BLUE).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert img.mode == "P"
    path = tmp_path / "p.gif"
    img.save(path)
    assert _close(_check(load_image(path, size=8), 8), 4, 4, (0, 0, 1), tol=0.02)


def test_palette_with_transparency_goes_white(tmp_path):
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 5, 10))  # left half palette index 1 = red, right half index 0 = black
    img.info["transparency"] = 0  # ... but black is transparent
    path = tmp_path / "pt.png"
    img.save(path, transparency=0)
    t = _check(load_image(path, size=10), 10)
    assert _close(t, 5, 1, (1, 0, 0), tol=0.02)
    assert _close(t, 5, 8, (1, 1, 1), tol=0.02)


def test_rgba_composited_on_white(tmp_path):
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # fully transparent black
    img.paste((255, 0, 0, 128), (0, 0, 5, 10))  # half-transparent red on the left
    path = tmp_path / "a.png"
    img.save(path)
    t = _check(load_image(path, size=10), 10)
    assert _close(t, 5, 8, (1, 1, 1), tol=0.02)  # not black
    assert _close(t, 5, 1, (1, 127 / 255, 127 / 255), tol=0.03)


def test_LA_composited_on_white(tmp_path):
    path = tmp_path / "la.png"
    Image.new("LA", (10, 10), (0, 0)).save(path)
    assert _close(_check(load_image(path, size=8), 8), 4, 4, (1, 1, 1), tol=0.0)


def test_cmyk(tmp_path):
    path = tmp_path / "c.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    assert _close(_check(load_image(path, size=8), 8), 4, 4, (1, 0, 0), tol=0.06)


def test_16bit_png(tmp_path):
    arr = np.zeros((10, 20), dtype=np.uint16)
    arr[:, :10] = 65535
    arr[:, 10:] = 32768
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # I;16 (or I on older Pillow)
    t = _check(load_image(path, size=20), 20)
    assert _close(t, 5, 2, (1, 1, 1), tol=0.01)
    assert _close(t, 5, 17, (0.5, 0.5, 0.5), tol=0.01)  # not clipped to white, not 256x too bright


def test_32bit_I_and_float_F():
    i8 = Image.fromarray(np.full((6, 6), 200, dtype=np.int32))  # mode I holding 8-bit values
    assert i8.mode == "I"
    assert _close(_check(load_image(i8, size=4), 4), 1, 1, (200 / 255,) * 3, tol=0.01)
    f = Image.fromarray(np.full((6, 6), 0.25, dtype=np.float32))
    assert f.mode == "F"
    assert _close(_check(load_image(f, size=4), 4), 1, 1, (0.25,) * 3, tol=0.01)
    wide = Image.fromarray(np.array([[-5.0, 5.0]] * 2, dtype=np.float32))
    _check(load_image(wide, size=4), 4)  # stretched into [0, 1]
    assert to_rgb(f).mode == "RGB"


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (20, 10), BLUE)
    img.paste(RED, (0, 0, 10, 10))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = tmp_path / "rot.jpg"
    img.save(rotated, exif=exif.tobytes(), quality=95)
    plain = tmp_path / "plain.jpg"
    img.save(plain, quality=95)

    p = _check(load_image(plain, size=20), 20)
    assert _close(p, 10, 2, (1, 0, 0), tol=0.15) and _close(p, 10, 17, (0, 0, 1), tol=0.15)
    r = _check(load_image(rotated, size=20), 20)
    # Turned clockwise, the left (red) half is now on top, the blue half below.
    assert _close(r, 2, 10, (1, 0, 0), tol=0.15), _px(r, 2, 10)
    assert _close(r, 17, 10, (0, 0, 1), tol=0.15), _px(r, 17, 10)


# ---- failures -----------------------------------------------------------------


def _truncated_jpeg(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[object, str]]:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    sub = tmp_path / "adir.jpg"
    sub.mkdir()
    return {
        "missing": (tmp_path / "missing.jpg", "file not found"),
        "empty": (empty, "empty file"),
        "text": (text, "not an image file"),
        "directory": (sub, "not a regular file"),
        "truncated": (_truncated_jpeg(tmp_path), "truncated or corrupt"),
        "empty bytes": (b"", "no data"),
        "garbage bytes": (b"\x00\x01garbage", "not an image file"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "text", "directory", "truncated", "empty bytes", "garbage bytes"])
def test_bad_input_raises_naming_input(tmp_path, case):
    source, reason = _bad_inputs(tmp_path)[case]
    with pytest.raises(ImageLoadError) as info:
        load_image(source)
    message = str(info.value)
    assert reason in message
    if isinstance(source, Path):
        assert str(source) in message
    else:
        assert f"<{len(source)} bytes>" in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("case", ["missing", "empty", "text", "directory", "truncated", "empty bytes", "garbage bytes"])
def test_bad_input_none_mode_warns_and_returns_none(tmp_path, case, caplog):
    source, reason = _bad_inputs(tmp_path)[case]
    with caplog.at_level(logging.WARNING, logger="bfcl.data.images"):
        assert load_image(source, on_error="none") is None
    [record] = [r for r in caplog.records if r.name == "bfcl.data.images"]
    assert record.levelno == logging.WARNING
    assert reason in record.getMessage() and "using no image" in record.getMessage()
    if isinstance(source, Path):
        assert str(source) in record.getMessage()


def test_name_labels_bytes_in_messages():
    with pytest.raises(ImageLoadError, match="upload.png: no data"):
        load_image(b"", name="upload.png")


def test_bomb_over_own_pixel_cap(tmp_path, caplog):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 50), RED).save(path)
    with pytest.raises(ImageLoadError, match=r"big.png: 100x50 = 5000 pixels exceeds the limit of 4999"):
        load_image(path, max_pixels=4999)
    with caplog.at_level(logging.WARNING):
        assert load_image(path, max_pixels=4999, on_error="none") is None
    assert "decompression bomb" in caplog.text
    _check(load_image(path, max_pixels=5000))
    with pytest.raises(ImageLoadError, match="exceeds"):
        load_image(Image.new("RGB", (100, 50)), max_pixels=10)


@pytest.mark.parametrize("pil_limit", [3000, 1000])  # 3000: PIL's warning; 1000: PIL's error (> 2x limit)
def test_pil_bomb_warning_and_error_become_ours(tmp_path, monkeypatch, pil_limit):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 50), RED).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil_limit)
    with pytest.raises(ImageLoadError, match=r"big.png: refused as a decompression bomb"):
        load_image(path)
    assert load_image(path, on_error="none") is None


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        load_image(b"x", on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        load_image(b"x", size=0)
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(b"x", max_pixels=0)
    with pytest.raises(TypeError, match="path, bytes or PIL image"):
        load_image(42)  # type: ignore[arg-type]
    assert load_image(None) is None


def test_batch_masks_missing(tmp_path):
    path = tmp_path / "r.png"
    Image.new("RGB", (10, 10), RED).save(path)
    pixels, mask = load_image_batch([path, None, tmp_path / "gone.jpg"], size=8)
    assert pixels.shape == (3, 3, 8, 8) and mask.tolist() == [True, False, False]
    assert float(pixels[1:].abs().sum()) == 0.0
    with pytest.raises(ImageLoadError):
        load_image_batch([tmp_path / "gone.jpg"], on_error="error")


# ---- real photos --------------------------------------------------------------


def test_real_photo_grace_hopper():
    matplotlib = pytest.importorskip("matplotlib")
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not shipped with this matplotlib")
    t = _check(load_image(path))
    assert float(t.std()) > 0.1  # a real picture, not a flat fill
    with Image.open(path) as img:
        ref = np.asarray(img.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    assert torch.allclose(t, torch.from_numpy(ref).permute(2, 0, 1))


def test_real_tweet_images(shared_data):
    folder = shared_data / "twitter2015" / "images_sample"
    paths = sorted(folder.glob("*.jpg"))
    assert len(paths) == 15
    for path in paths:
        t = _check(load_image(path))
        assert float(t.std()) > 0.01, path
