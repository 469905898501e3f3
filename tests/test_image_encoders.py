"""Image encoders: grid shapes, freezing, normalisation, the torchvision-layout ResNet, hf backend."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from bfcl.encoders import image as image_mod
from bfcl.encoders.image import (
    IMAGE_ENCODERS,
    RESMEM_PIP,
    EfficientNetLite0Encoder,
    ImageEncoder,
    MissingDependencyError,
    TorchvisionResNetEncoder,
    build_image_encoder,
    build_resmem_encoder,
    resnet,
)

TWITTER_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "twitter2015" / "images_sample"


def pil_to_pixels(img: Image.Image, size: int = 224) -> torch.Tensor:
    img = img.convert("RGB").resize((size, size), Image.BILINEAR)
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1).float() / 255.0


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0Encoder:
    enc = build_image_encoder("efficientnet-lite0")
    assert isinstance(enc, EfficientNetLite0Encoder)
    return enc


# --------------------------------------------------------------------------- factory


def test_registry_lists_backends() -> None:
    assert IMAGE_ENCODERS[0] == "efficientnet-lite0"
    assert {"resnet152-resmem", "none"} <= set(IMAGE_ENCODERS)
    assert any(n.startswith("hf:") for n in IMAGE_ENCODERS)


def test_none_is_text_only() -> None:
    assert build_image_encoder("none") is None
    assert build_image_encoder("None") is None


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown image encoder 'resnet9000'.*efficientnet-lite0.*resnet152-resmem"):
        build_image_encoder("resnet9000")
    with pytest.raises(ValueError, match="model name or local path"):
        build_image_encoder("hf:")


def test_missing_resmem_gives_exact_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(image_mod.importlib.util, "find_spec", lambda n, *a: None if n == "resmem" else real(n, *a))
    with pytest.raises(MissingDependencyError) as info:
        build_image_encoder("resnet152-resmem")
    assert "pip install --no-deps resmem==1.1.6" in str(info.value)
    assert RESMEM_PIP == "pip install --no-deps resmem==1.1.6"
    assert isinstance(info.value, ImportError)


def test_missing_lite0_package_gives_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match="pip install efficientnet-lite-pytorch"):
        build_image_encoder("efficientnet-lite0")


# --------------------------------------------------------------------------- efficientnet-lite0


def test_lite0_grid_shape_and_attributes(lite0: EfficientNetLite0Encoder) -> None:
    assert (lite0.num_regions, lite0.feature_dim, lite0.image_size) == (49, 1280, 224)
    # weights identity: sha256 prefix of the packaged weights file
    assert lite0.name == "efficientnet-lite0@57934424"
    out = lite0(torch.rand(2, 3, 224, 224))
    assert out.shape == (2, 49, 1280)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert torch.isfinite(out).all()


def test_lite0_grid_matches_feature_map_layout(lite0: EfficientNetLite0Encoder) -> None:
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        fmap = lite0.model.extract_features(lite0.normalize(x))  # (1, 1280, 7, 7)
    grid = lite0(x)
    # region r = row * 7 + col
    assert torch.equal(grid[0, 7 * 2 + 5], fmap[0, :, 2, 5])


def test_lite0_frozen_and_stays_eval(lite0: EfficientNetLite0Encoder) -> None:
    assert not any(p.requires_grad for p in lite0.parameters())
    lite0.train()
    assert not lite0.training and not any(m.training for m in lite0.modules())
    parent = torch.nn.Sequential(lite0)
    parent.train()
    assert not any(m.training for m in lite0.modules())
    # even an inner module switched to train directly must not update batch-norm statistics
    lite0.model.train()
    before = lite0.model._bn0.running_mean.clone()
    x = torch.rand(2, 3, 224, 224, requires_grad=True)
    out = lite0(x)
    assert torch.equal(lite0.model._bn0.running_mean, before)
    assert not out.requires_grad
    assert not any(m.training for m in lite0.modules())


def test_lite0_deterministic_and_batch_independent(lite0: EfficientNetLite0Encoder) -> None:
    x = torch.rand(3, 3, 224, 224)
    a, b = lite0(x), lite0(x)
    assert torch.equal(a, b)
    single = lite0(x[1:2])
    torch.testing.assert_close(single[0], a[1], atol=1e-4, rtol=1e-4)


def test_lite0_normalisation_is_inception_style(lite0: EfficientNetLite0Encoder) -> None:
    """(255x - 127)/128: the EfficientNet-Lite training preprocessing, not ImageNet mean/std."""
    x = torch.tensor([0.0, 127 / 255, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    y = lite0.normalize(x)
    torch.testing.assert_close(y[0, :, 0, 0], torch.tensor([-127 / 128, 0.0, 1.0]))


def test_input_validation(lite0: EfficientNetLite0Encoder) -> None:
    with pytest.raises(ValueError, match=r"224x224"):
        lite0(torch.rand(1, 3, 200, 224))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        lite0(torch.rand(3, 224, 224))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        lite0(torch.rand(1, 1, 224, 224))
    u8 = (torch.rand(1, 3, 224, 224) * 255).to(torch.uint8)
    assert torch.equal(lite0(u8), lite0(u8.float() / 255))


def _grace_hopper() -> Path:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        pytest.skip("matplotlib (its sample photo) is not installed")
    path = Path(spec.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.mark.integration
def test_lite0_top1_on_real_photo(lite0: EfficientNetLite0Encoder) -> None:
    """Grace Hopper in navy uniform: top-1 must be 'military uniform' (ImageNet class 652)."""
    x = pil_to_pixels(Image.open(_grace_hopper()))
    probs = lite0.classify(x[None]).softmax(-1)[0]
    assert int(probs.argmax()) == 652
    assert float(probs[652]) > 0.25
    # clothing classes dominate the top-5: suit 834, Windsor tie 906, bow tie 457, bulletproof vest 465
    assert len({652, 834, 906, 457, 465} & set(probs.topk(5).indices.tolist())) >= 4


@pytest.mark.integration
def test_lite0_normalisation_matches_stem_batchnorm_statistics(lite0: EfficientNetLite0Encoder) -> None:
    """On real photos the stem conv's activations match bn0's running statistics under the
    inception-style normalisation, and are far off under ImageNet mean/std."""
    files = sorted(TWITTER_SAMPLE.glob("*.jpg"))[:16] if TWITTER_SAMPLE.is_dir() else []
    if len(files) < 8:
        files = [_grace_hopper()]
    x = torch.stack([pil_to_pixels(Image.open(f)) for f in files])
    bn = lite0.model._bn0
    imagenet = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )

    def mean_error(inp: torch.Tensor) -> float:
        with torch.no_grad():
            y = lite0.model._conv_stem(inp)
        mu = y.mean((0, 2, 3))
        return float(((mu - bn.running_mean) ** 2).mean().sqrt() / bn.running_var.sqrt().mean())

    ours, theirs = mean_error(lite0.normalize(x)), mean_error(imagenet)
    assert ours < theirs / 2, (ours, theirs)


# --------------------------------------------------------------------------- torchvision-layout ResNet


def _expected_keys(blocks: int) -> int:
    # stem conv+bn (1+5), per bottleneck 3 convs + 3 bns (3+15), 4 downsamples (1+5 each), fc (2)
    return 6 + 18 * blocks + 4 * 6 + 2


@pytest.mark.parametrize("depth,blocks", [(50, 16), (101, 33), (152, 50), (200, 66)])
def test_resnet_state_dict_layout(depth: int, blocks: int) -> None:
    with torch.device("meta"):
        model = resnet(depth)
    sd = model.state_dict()
    assert len(sd) == _expected_keys(blocks)
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert sd["fc.weight"].shape == (1000, 2048)
    assert "layer2.1.downsample.0.weight" not in sd


def test_resnet152_key_names() -> None:
    with torch.device("meta"):
        sd = resnet(152).state_dict()
    assert len(sd) == 932
    for k in [
        "conv1.weight",
        "bn1.running_var",
        "layer2.7.conv2.weight",
        "layer3.35.conv3.weight",
        "layer3.35.bn3.num_batches_tracked",
        "layer4.0.downsample.1.running_mean",
    ]:
        assert k in sd, k
    assert "layer3.36.conv1.weight" not in sd and "layer2.8.conv1.weight" not in sd
    assert sd["layer3.35.conv3.weight"].shape == (1024, 256, 1, 1)
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: stride on the 3x3 conv
    with torch.device("meta"):
        assert len(resnet(152, num_classes=None).state_dict()) == 930
    with pytest.raises(ValueError, match="depth"):
        resnet(34)


def test_resnet_feature_stride_32() -> None:
    model = resnet(50).eval()
    with torch.no_grad():
        assert model.forward_features(torch.rand(1, 3, 64, 96)).shape == (1, 2048, 2, 3)
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1000)


@pytest.fixture(scope="module")
def fake_resmem_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A resmem-shaped checkpoint: ResNet-50 weights under 'features.' plus unrelated head keys."""
    torch.manual_seed(1)
    net = resnet(50)
    for m in net.modules():  # non-trivial batch-norm statistics, so loading them is observable
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    sd = {f"features.{k}": v for k, v in net.state_dict().items()}
    sd["conv1.weight"] = torch.zeros(48, 3, 11, 11)
    sd["fc12.bias"] = torch.zeros(1)
    path = tmp_path_factory.mktemp("resmem") / "model.pt"
    torch.save(sd, path)
    return path, sd


def test_torchvision_resnet_encoder_loads_prefixed_keys(fake_resmem_checkpoint) -> None:
    path, sd = fake_resmem_checkpoint
    enc = TorchvisionResNetEncoder(path, depth=50, prefix="features.", mean=None, std=None, name="fake")
    assert isinstance(enc, ImageEncoder)
    assert torch.equal(enc.model.layer3[5].conv3.weight, sd["features.layer3.5.conv3.weight"])
    assert torch.equal(enc.model.layer4[2].bn3.running_var, sd["features.layer4.2.bn3.running_var"])
    assert (enc.num_regions, enc.feature_dim, enc.name) == (49, 2048, "fake")
    x = torch.rand(2, 3, 224, 224)
    out = enc(x)
    assert out.shape == (2, 49, 2048)
    # no normalisation: the network sees the [0, 1] pixels as they are
    with torch.no_grad():
        ref = enc.model.forward_features(x)
    assert torch.equal(out, ref.flatten(2).transpose(1, 2))
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not any(m.training for m in enc.modules())


def test_resmem_builder_uses_raw_pixels_and_strict_keys(fake_resmem_checkpoint, tmp_path: Path) -> None:
    path, sd = fake_resmem_checkpoint
    # a ResNet-50 checkpoint is not a ResNet-152: the strict key check must refuse it
    with pytest.raises(ValueError, match=r"ResNet-152 layout; missing 612 key\(s\)"):
        build_resmem_encoder(path)
    broken = dict(sd)
    broken["features.layer9.0.conv1.weight"] = torch.zeros(1)
    p2 = tmp_path / "broken.pt"
    torch.save(broken, p2)
    with pytest.raises(ValueError, match=r"unexpected 1 key\(s\).*layer9"):
        TorchvisionResNetEncoder(p2, depth=50, prefix="features.")
    with pytest.raises(ValueError, match="no keys start with"):
        TorchvisionResNetEncoder(path, depth=50, prefix="backbone.")


def test_checkpoints_are_loaded_weights_only(tmp_path: Path) -> None:
    import argparse

    p = tmp_path / "evil.pt"  # any non-allowlisted class stands in for a malicious pickle
    torch.save({"features.conv1.weight": torch.zeros(1), "x": argparse.Namespace(a=1)}, p)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|global"):
        TorchvisionResNetEncoder(p, depth=50, prefix="features.")


@pytest.mark.integration
def test_real_resmem_encoder() -> None:
    # find_spec, not importorskip: importing resmem itself would import torchvision
    if importlib.util.find_spec("resmem") is None:
        pytest.skip(f"resmem not installed ({RESMEM_PIP})")
    enc = build_image_encoder("resnet152-resmem")
    assert enc is not None and enc.name.startswith("resnet152-resmem@")
    assert (enc.num_regions, enc.feature_dim) == (49, 2048)
    x = pil_to_pixels(Image.open(_grace_hopper()))
    out = enc(x[None])
    assert out.shape == (1, 49, 2048) and torch.isfinite(out).all()
    # raw [0, 1] input: bow tie / suit / military uniform / Windsor tie; with ImageNet
    # mean/std the same weights answer "stopwatch", so no normalisation is right here
    top1 = int(enc.classify(x[None]).argmax())
    assert top1 in {457, 834, 652, 906}


# --------------------------------------------------------------------------- transformers ResNet


@pytest.fixture(scope="module")
def tiny_hf_resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(2)
    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="bottleneck")
    path = tmp_path_factory.mktemp("hf") / "tiny-resnet"
    ResNetModel(cfg).save_pretrained(path)
    return path


def test_hf_resnet_backend(tiny_hf_resnet: Path) -> None:
    from transformers import ResNetModel

    enc = build_image_encoder(f"hf:{tiny_hf_resnet}")
    assert enc is not None
    assert (enc.num_regions, enc.feature_dim, enc.image_size) == (49, 32, 224)
    assert enc.name.startswith("hf:tiny-resnet@")
    x = torch.rand(2, 3, 224, 224)
    out = enc(x)
    assert out.shape == (2, 49, 32)
    ref_model = ResNetModel.from_pretrained(tiny_hf_resnet).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = ref_model(pixel_values=(x - mean) / std).last_hidden_state
    torch.testing.assert_close(out, ref.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not any(m.training for m in enc.modules())
    # same weights -> same name (stable cache key), wherever loaded from
    assert build_image_encoder(f"hf:{tiny_hf_resnet}/").name == enc.name


def test_hf_resnet_uses_preprocessor_mean_std(tiny_hf_resnet: Path, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "tiny-resnet"
    shutil.copytree(tiny_hf_resnet, other)
    (other / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    enc = build_image_encoder(f"hf:{other}")
    base = build_image_encoder(f"hf:{tiny_hf_resnet}")
    x = torch.rand(1, 3, 224, 224)
    torch.testing.assert_close(enc.normalize(x), x * 2 - 1)
    assert enc.name != base.name  # different preprocessing -> different cache entries


def test_hf_resnet_has_no_classifier(tiny_hf_resnet: Path) -> None:
    """The base class's classify() names the encoder when a backend has no ImageNet head."""
    enc = build_image_encoder(f"hf:{tiny_hf_resnet}")
    with pytest.raises(NotImplementedError, match="hf:tiny-resnet@.*no classifier head"):
        enc.classify(torch.rand(1, 3, 224, 224))


def test_backends_share_normalize_and_classify() -> None:
    """normalize/classify live once, in ImageEncoder; the ResNet has its own module, still importable here."""
    from bfcl.encoders import resnet as resnet_mod

    for cls in (EfficientNetLite0Encoder, TorchvisionResNetEncoder, image_mod.HFResNetEncoder):
        assert "normalize" not in vars(cls) and "classify" not in vars(cls), cls.__name__
    for name in ("RESNET_LAYERS", "Bottleneck", "ResNet", "resnet"):
        assert getattr(image_mod, name) is getattr(resnet_mod, name)
        assert name in image_mod.__all__


def test_user_state_dict_resnet_by_name(tmp_path: Path) -> None:
    """``resnet<depth>:<path>`` (Table 4's ResNet-200 has no offline copy): a user's torchvision-layout
    state dict, in safetensors, loads strictly and gives the 7 x 7 x 2048 grid."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = resnet(50)
    path = tmp_path / "r50.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    enc = build_image_encoder(f"resnet50:{path}")
    grid = enc(torch.rand(1, 3, 224, 224))
    assert grid.shape == (1, 49, 2048)
    with pytest.raises(ValueError, match="unsupported ResNet depth 34"):
        build_image_encoder(f"resnet34:{path}")
    with pytest.raises(FileNotFoundError, match="not found"):
        build_image_encoder(f"resnet200:{tmp_path / 'missing.pth'}")
    with pytest.raises(ValueError):  # a ResNet-50 state dict is not a ResNet-200 one: strict keys
        build_image_encoder(f"resnet200:{path}")
