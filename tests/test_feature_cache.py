"""FeatureCache: content-keyed on-disk cache of frozen image-encoder grid features."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from bfcl.data.images import ImageLoadError
from bfcl.encoders.cache import FeatureCache, content_key, sanitize_name
from bfcl.encoders.image import ImageEncoder, build_image_encoder


class TinyEncoder(ImageEncoder):
    """Cheap deterministic encoder with the real contract: 224 -> 7x7 grid of 8 features."""

    num_regions = 49
    feature_dim = 8
    image_size = 224

    def __init__(self, name: str = "tiny@1") -> None:
        super().__init__()
        torch.manual_seed(3)
        self.pool = nn.AvgPool2d(32)
        self.proj = nn.Conv2d(3, 8, 1)
        self.name = name
        self._freeze()

    def normalize(self, pixels: Tensor) -> Tensor:
        return pixels * 2 - 1

    def feature_map(self, x: Tensor) -> Tensor:
        return torch.tanh(self.proj(self.pool(x))) * 3.3333


def pil_loader(data: bytes) -> Tensor | None:
    """Test loader: decode -> RGB -> 224x224 -> float [0, 1]; None when undecodable."""
    try:
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.BILINEAR)
    except Exception:
        return None
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(224, 224, 3).permute(2, 0, 1).float() / 255


def make_png(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    g = torch.Generator().manual_seed(seed)
    arr = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
    Image.fromarray(arr).save(path)
    return path


class Spy:
    """Counts forward calls and images through an encoder (replaces its bound forward)."""

    def __init__(self, enc: ImageEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.images = 0
        real = enc.forward

        def forward(pixels: Tensor) -> Tensor:
            self.calls += 1
            self.images += pixels.shape[0]
            return real(pixels)

        monkeypatch.setattr(enc, "forward", forward)


@pytest.fixture
def enc() -> TinyEncoder:
    return TinyEncoder()


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    d = tmp_path / "imgs"
    d.mkdir()
    return [make_png(d / f"{i}.png", seed=i) for i in range(5)]


def cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_roundtrip_exact_and_counted(tmp_path: Path, enc: TinyEncoder, images: list[Path], monkeypatch) -> None:
    root = tmp_path / "cache"
    # the cache encodes all five in one batch; compare with exactly that computation
    expected = list(enc(torch.stack([pil_loader(p.read_bytes()) for p in images])).to(torch.float16).float())

    cache = FeatureCache(root, enc)
    first = cache.encode_images(images, loader=pil_loader, batch_size=32)
    assert (cache.hits, cache.misses, cache.failed) == (0, 5, 0)
    assert cache.encoder_seconds > 0
    for got, exp in zip(first, expected):
        assert got.dtype == torch.float32 and got.shape == (49, 8)
        assert torch.equal(got, exp)  # cold path already rounded through float16

    # a new process: memory empty, everything served from disk, CNN never called
    fresh = FeatureCache(root, enc)
    spy = Spy(enc, monkeypatch)
    second = fresh.encode_images(images, loader=pil_loader)
    assert spy.calls == 0
    assert (fresh.hits, fresh.misses, fresh.encoder_seconds) == (5, 0, 0.0)
    for got, exp in zip(second, expected):
        assert torch.equal(got, exp)

    # float16 on disk, one file per image under <encoder>/<sha[:2]>/<sha>.safetensors
    files = cache_files(root)
    assert len(files) == 5
    key = content_key(images[0].read_bytes())
    path = root / sanitize_name(enc.name) / key[:2] / f"{key}.safetensors"
    assert path in files and cache.path_for(key) == path
    from safetensors.torch import load_file

    assert load_file(path)["features"].dtype == torch.float16


def test_returned_tensors_are_independent_copies(tmp_path: Path, enc: TinyEncoder, images: list[Path]) -> None:
    cache = FeatureCache(tmp_path, enc)
    a = cache.encode_images(images[:1], loader=pil_loader)[0]
    a.zero_()
    b = cache.encode_images(images[:1], loader=pil_loader)[0]
    assert b.abs().sum() > 0


def test_keyed_by_content_not_path(tmp_path: Path, enc: TinyEncoder, images: list[Path], monkeypatch) -> None:
    copy = tmp_path / "elsewhere" / "renamed.png"
    copy.parent.mkdir()
    copy.write_bytes(images[0].read_bytes())
    spy = Spy(enc, monkeypatch)
    cache = FeatureCache(tmp_path / "cache", enc)
    a, b, c = cache.encode_images([images[0], copy, images[0].read_bytes()], loader=pil_loader)
    assert spy.images == 1  # identical bytes encoded once, even within one call
    assert (cache.misses, cache.hits) == (1, 2)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert len(cache_files(tmp_path / "cache")) == 1


def test_different_encoder_name_is_a_different_entry(tmp_path: Path, images: list[Path], monkeypatch) -> None:
    root = tmp_path / "cache"
    one, two = TinyEncoder("tiny@1"), TinyEncoder("tiny@2")
    FeatureCache(root, one).encode_images(images[:2], loader=pil_loader)
    cache2 = FeatureCache(root, two)
    spy = Spy(two, monkeypatch)
    cache2.encode_images(images[:2], loader=pil_loader)
    assert spy.images == 2 and cache2.misses == 2 and cache2.hits == 0
    assert len(cache_files(root)) == 4
    assert {p.parent.parent.name for p in cache_files(root)} == {sanitize_name("tiny@1"), sanitize_name("tiny@2")}
    # a preprocessing tag separates caches of the same weights too
    tagged = FeatureCache(root, one, tag="letterbox")
    assert tagged.directory != FeatureCache(root, one).directory


def test_sanitize_name_is_safe_and_injective() -> None:
    a, b = sanitize_name("hf:/models/resnet-152@abc"), sanitize_name("hf_/models/resnet-152@abc")
    assert a != b
    assert all(ch.isalnum() or ch in "._-" for ch in a)
    assert "/" not in sanitize_name("../../etc") and not sanitize_name("../../etc").startswith(".")


def test_none_and_unloadable_inputs(tmp_path: Path, enc: TinyEncoder, images: list[Path]) -> None:
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"this is not a jpeg")
    missing = tmp_path / "missing.jpg"
    cache = FeatureCache(tmp_path / "cache", enc)
    out = cache.encode_images([None, images[0], bad, missing, None, images[1]], loader=pil_loader, batch_size=1)
    assert [o is None for o in out] == [True, False, True, True, True, False]
    assert (cache.misses, cache.failed) == (2, 2)
    assert len(cache_files(tmp_path / "cache")) == 2  # failures are not cached
    with pytest.raises(ValueError, match="could not be decoded"):
        cache.encode_images([bad], loader=pil_loader, on_error="error")
    with pytest.raises(ImageLoadError, match="cannot read image .*No such file"):
        cache.encode_images([missing], loader=pil_loader, on_error="error")

    def exploding(data: bytes) -> Tensor:
        raise RuntimeError("decoder crashed")

    assert cache.encode_images([images[2]], loader=exploding) == [None]
    with pytest.raises(RuntimeError, match="decoder crashed"):
        cache.encode_images([images[2]], loader=exploding, on_error="error")
    with pytest.raises(ValueError, match="on_error"):
        cache.encode_images([images[0]], loader=pil_loader, on_error="raise")  # type: ignore[arg-type]
    assert cache.encode_images([], loader=pil_loader) == []


def test_loader_output_is_validated(tmp_path: Path, enc: TinyEncoder, images: list[Path]) -> None:
    cache = FeatureCache(tmp_path, enc)
    with pytest.raises(ValueError, match=r"\(3, 224, 224\)"):
        cache.encode_images(images[:1], loader=lambda data: torch.zeros(3, 100, 100))


def test_batches_and_order(tmp_path: Path, enc: TinyEncoder, images: list[Path], monkeypatch) -> None:
    cache = FeatureCache(tmp_path, enc)
    cache.encode_images(images[1:2], loader=pil_loader)  # one warm entry
    spy = Spy(enc, monkeypatch)
    srcs = [images[0], None, images[1], images[2], images[3], images[4]]
    out = cache.encode_images(srcs, loader=pil_loader, batch_size=2)
    assert spy.calls == 2 and spy.images == 4  # 4 misses in batches of 2; the warm one skipped
    ref = FeatureCache(tmp_path / "ref", enc, memory_items=0)
    for src, got in zip(srcs, out):
        if src is None:
            assert got is None
        else:
            # batch of 2 vs batch of 1 may differ in the last bits, then by one float16 step
            torch.testing.assert_close(got, ref.encode_images([src], loader=pil_loader)[0], atol=2e-3, rtol=2e-3)


def test_default_batch_size_is_small_on_cpu(tmp_path: Path, enc: TinyEncoder, images: list[Path], monkeypatch) -> None:
    spy = Spy(enc, monkeypatch)
    FeatureCache(tmp_path, enc).encode_images(images, loader=pil_loader)
    assert spy.calls == 2 and spy.images == 5  # batches of 4 + 1
    with pytest.raises(ValueError, match="batch_size"):
        FeatureCache(tmp_path, enc).encode_images(images, loader=pil_loader, batch_size=0)


def test_corrupted_entries_are_recomputed(tmp_path: Path, enc: TinyEncoder, images: list[Path], monkeypatch) -> None:
    root = tmp_path / "cache"
    good = FeatureCache(root, enc).encode_images(images[:3], loader=pil_loader)
    keys = [content_key(p.read_bytes()) for p in images[:3]]
    paths = [FeatureCache(root, enc).path_for(k) for k in keys]
    paths[0].write_bytes(paths[0].read_bytes()[:50])  # truncated
    raw = bytearray(paths[1].read_bytes())
    raw[-10] ^= 0xFF  # silent bit flip inside the tensor data: only the checksum sees it
    paths[1].write_bytes(bytes(raw))
    paths[2].write_bytes(b"")  # empty

    cache = FeatureCache(root, enc)
    assert cache.get(keys[1]) is None
    spy = Spy(enc, monkeypatch)
    again = cache.encode_images(images[:3], loader=pil_loader)
    assert spy.images == 3 and cache.misses == 3
    for a, b in zip(good, again):
        assert torch.equal(a, b)
    # repaired on disk
    fresh = FeatureCache(root, enc)
    assert all(torch.equal(fresh.get(k), g) for k, g in zip(keys, good))


def test_entry_of_wrong_shape_is_recomputed(tmp_path: Path, images: list[Path]) -> None:
    """Same name, different grid (e.g. a renamed but changed encoder): never serve mismatched features."""
    root = tmp_path / "cache"
    FeatureCache(root, TinyEncoder("same")).encode_images(images[:1], loader=pil_loader)

    class Wider(TinyEncoder):
        feature_dim = 4

        def feature_map(self, x: Tensor) -> Tensor:
            return super().feature_map(x)[:, :4]

    cache = FeatureCache(root, Wider("same"))
    out = cache.encode_images(images[:1], loader=pil_loader)[0]
    assert out.shape == (49, 4) and cache.misses == 1


def test_get_put_api(tmp_path: Path, enc: TinyEncoder) -> None:
    cache = FeatureCache(tmp_path, enc)
    key = content_key(b"some image bytes")
    assert cache.get(key) is None and key not in cache
    feats = torch.randn(49, 8)
    returned = cache.put(key, feats)
    assert torch.equal(returned, feats.to(torch.float16).float())
    assert key in cache
    assert torch.equal(cache.get(key), returned)
    assert torch.equal(FeatureCache(tmp_path, enc).get(key), returned)  # from disk
    with pytest.raises(ValueError, match="sha256"):
        cache.get("../../etc/passwd")
    with pytest.raises(ValueError, match="sha256"):
        cache.put(key.upper(), feats)
    with pytest.raises(ValueError, match=r"shape \(49, 8\)"):
        cache.put(key, torch.randn(49, 9))


def test_atomic_writes_leave_no_temp_files(tmp_path: Path, enc: TinyEncoder, images: list[Path], monkeypatch) -> None:
    root = tmp_path / "cache"
    cache = FeatureCache(root, enc)
    cache.encode_images(images, loader=pil_loader)
    names = [p.name for p in cache_files(root)]
    assert all(n.endswith(".safetensors") and not n.startswith(".") for n in names)

    # a crash while writing leaves neither a partial entry nor a temp file
    import bfcl.encoders.cache as cache_mod

    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod, "save_file", failing_save)
    key = content_key(b"x")
    with pytest.raises(OSError, match="disk full"):
        cache.put(key, torch.zeros(49, 8))
    assert not cache.path_for(key).exists()
    assert not [p for p in cache_files(root) if p.name.endswith(".tmp")]


def test_memory_lru_in_front_of_disk(tmp_path: Path, enc: TinyEncoder, images: list[Path]) -> None:
    cache = FeatureCache(tmp_path, enc, memory_items=2)
    cache.encode_images(images[:3], loader=pil_loader)
    keys = [content_key(p.read_bytes()) for p in images[:3]]
    for p in cache_files(tmp_path):
        p.unlink()
    # the two most recent stay in memory, the oldest was evicted (and its file is gone)
    assert cache.get(keys[0]) is None
    assert cache.get(keys[1]) is not None and cache.get(keys[2]) is not None
    no_mem = FeatureCache(tmp_path / "b", enc, memory_items=0)
    no_mem.encode_images(images[:1], loader=pil_loader)
    for p in cache_files(tmp_path / "b"):
        p.unlink()
    assert no_mem.get(keys[0]) is None


def test_float32_storage_is_exact(tmp_path: Path, enc: TinyEncoder, images: list[Path]) -> None:
    cache = FeatureCache(tmp_path, enc, dtype=torch.float32)
    out = cache.encode_images(images[:2], loader=pil_loader)
    exact = list(enc(torch.stack([pil_loader(p.read_bytes()) for p in images[:2]])))
    assert torch.equal(out[0], exact[0])
    # float32 entries are lossless, so a float16 cache over the same root reuses them ...
    half = FeatureCache(tmp_path, enc)
    assert torch.equal(half.encode_images(images[:1], loader=pil_loader)[0], exact[0].half().float())
    assert half.hits == 1 and half.misses == 0
    # ... but float16 entries are never served as float32
    cache.put(content_key(images[1].read_bytes()), exact[1])
    half.put(content_key(images[1].read_bytes()), exact[1])
    again = FeatureCache(tmp_path, enc, dtype=torch.float32)
    single = enc(pil_loader(images[1].read_bytes())[None])[0]
    assert torch.equal(again.encode_images(images[1:2], loader=pil_loader)[0], single)
    assert again.misses == 1
    with pytest.raises(ValueError, match="floating point"):
        FeatureCache(tmp_path, enc, dtype=torch.int8)


def test_default_loader_is_bfcl_data_images(tmp_path: Path, enc: TinyEncoder, images: list[Path]) -> None:
    images_mod = pytest.importorskip("bfcl.data.images")
    cache = FeatureCache(tmp_path, enc)
    out = cache.encode_images([images[0], None], on_error="none")
    assert out[1] is None and out[0].shape == (49, 8)
    ref = images_mod.load_image(images[0], size=224)
    assert torch.equal(out[0], enc(ref[None])[0].to(torch.float16).float())


@pytest.mark.integration
def test_cache_with_real_lite0(tmp_path: Path, images: list[Path], monkeypatch) -> None:
    lite0 = build_image_encoder("efficientnet-lite0")
    cache = FeatureCache(tmp_path, lite0)
    first = cache.encode_images(images[:2], loader=pil_loader)
    expected = lite0(torch.stack([pil_loader(p.read_bytes()) for p in images[:2]])).to(torch.float16).float()
    assert torch.equal(torch.stack(first), expected)
    spy = Spy(lite0, monkeypatch)
    second = FeatureCache(tmp_path, lite0).encode_images(images[:2], loader=pil_loader)
    assert spy.calls == 0 and torch.equal(torch.stack(second), expected)
    assert os.path.getsize(cache.path_for(content_key(images[0].read_bytes()))) < 49 * 1280 * 2 + 1024
