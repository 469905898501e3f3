"""The paper's image encoder (ResNet-152, backend ``resnet152-resmem``) checked against reality.

What each test proves:

* ``test_project_resnet152_matches_independent_path`` (runs everywhere, no weights needed):
  the project's hand-written ResNet-152 computes the same grid and logits as an independent
  functional implementation (tests/resnet_reference.py: plain F.conv2d and batch-norm
  arithmetic, structure read from the state dict's key names), on a real photo, with random
  weights and non-trivial batch-norm statistics. A wrong stride, shortcut, padding, layer
  count or batch-norm epsilon in either shows up as a mismatch.
* ``test_reference_pixels_and_record`` (runs everywhere): ``bfcl.data.images.load_image``
  still produces the pixels the stored reference was computed from (per-channel mean/std to
  1e-3), equal to the independent preprocessing; and the stored record itself says that, at
  generation time, the project's path on the REAL resmem weights agreed with the independent
  path (grid and logits within 1e-4) and put Grace Hopper in a clothing class.
* ``test_real_weights_match_reference`` (where the weights are: resmem installed, or
  BFCL_RESMEM_WEIGHTS=path/to/model.pt): the full project path (weights loading, raw-pixel
  input, grid flattening) reproduces the stored top-5 ImageNet classes, logits (1e-3) and
  grid statistics (1e-3), and still agrees with the independent path on the real weights.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from bfcl.data.images import load_image
from bfcl.encoders.image import RESMEM_PIP, build_resmem_encoder, resnet
from resnet_reference import REFERENCE, functional_resnet, grid_summary, independent_pixels, reference_images

#: ImageNet clothing classes: bow tie, suit, military uniform, Windsor tie.
CLOTHING = {457, 834, 652, 906}


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text(encoding="utf-8"))


def _image(name: str) -> Path:
    path = reference_images()[name]
    if path is None:
        pytest.skip(f"reference photo {name!r} not installed (matplotlib / scikit-learn)")
    return path


def _random_resnet152_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """ResNet-152 weights with observable batch-norm statistics, scaled so 50 blocks stay finite."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sd = {k: v.clone() for k, v in resnet(152).state_dict().items()}
    for key, value in sd.items():
        if not key.endswith(("running_mean", "running_var", "weight", "bias")) or value.dim() != 1:
            continue
        if key.endswith("running_mean"):
            value.uniform_(-0.2, 0.2, generator=gen)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2.0, generator=gen)
        elif key.startswith("fc."):
            value.uniform_(-0.1, 0.1, generator=gen)
        elif key.endswith("weight"):  # batch-norm gamma; small on each block's last bn keeps the sum bounded
            value.uniform_(0.0, 0.3 if ".bn3." in key else 1.5, generator=gen)
        else:
            value.uniform_(-0.2, 0.2, generator=gen)
    return sd


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest reference value."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_project_resnet152_matches_independent_path() -> None:
    names = reference_images()
    photo = names["grace_hopper"] or names["china"]
    if photo is None:
        pytest.skip("no reference photo installed (matplotlib / scikit-learn)")
    sd = _random_resnet152_state()
    model = resnet(152).eval()
    model.load_state_dict(sd, strict=True)
    x = load_image(photo)[None]
    with torch.no_grad():
        grid, logits = model.forward_features(x), model(x)
        f_grid, f_logits = functional_resnet(sd, x)
    assert grid.shape == f_grid.shape == (1, 2048, 7, 7)
    assert float(grid.abs().max()) > 1.0 and torch.isfinite(grid).all()  # not a degenerate all-zero check
    assert _close(grid, f_grid) < 1e-4
    assert f_logits is not None and _close(logits, f_logits) < 1e-4
    # the comparison is sensitive to the conventions it checks: moving the stride of each
    # stage's first block from the 3x3 conv (v1.5, torchvision) to the 1x1 conv (v1.0)
    # keeps every shape but must not pass
    for stage in (model.layer2, model.layer3, model.layer4):
        stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    with torch.no_grad():
        v10 = model.forward_features(x)
    assert v10.shape == f_grid.shape and _close(v10, f_grid) > 1e-2


def test_reference_pixels_and_record(reference: dict) -> None:
    assert reference["channels"] == list(range(0, 2048, 128))
    for name, rec in reference["images"].items():
        path = _image(name)
        pixels = load_image(path)
        assert pixels is not None
        torch.testing.assert_close(pixels, independent_pixels(path), atol=1e-6, rtol=0)
        means = pixels.double().mean((1, 2)).tolist()
        stds = pixels.double().std(dim=(1, 2)).tolist()
        assert means == pytest.approx(rec["pixels_channel_mean"], abs=1e-3), name
        assert stds == pytest.approx(rec["pixels_channel_std"], abs=1e-3), name
        diffs = rec["independent_max_abs_diff"]
        assert diffs["pixels"] == 0.0 and diffs["grid"] < 1e-4 and diffs["logits"] < 1e-4, (name, diffs)
        assert rec["independent_top5"] == rec["top5"], name
        assert rec["top5_logits"] == sorted(rec["top5_logits"], reverse=True)
        assert len(rec["grid"]["region_means"]) == 49 and len(rec["grid"]["channel_means"]) == 16
    # real weights + raw [0, 1] input put Grace Hopper (navy uniform, bow tie) in clothing classes
    hopper = reference["images"]["grace_hopper"]
    assert hopper["top5"][0] in CLOTHING and len(CLOTHING & set(hopper["top5"])) == 4


def _real_weights() -> Path:
    env = os.environ.get("BFCL_RESMEM_WEIGHTS")
    if env:
        path = Path(env)
        if not path.is_file():
            pytest.fail(f"BFCL_RESMEM_WEIGHTS={env}: no such file")
        return path
    spec = importlib.util.find_spec("resmem")  # find_spec: importing resmem would import torchvision
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"resmem weights not available ({RESMEM_PIP}, or set BFCL_RESMEM_WEIGHTS=path/to/model.pt)")
    return Path(next(iter(spec.submodule_search_locations))) / "model.pt"


@pytest.mark.integration
def test_real_weights_match_reference(reference: dict) -> None:
    weights = _real_weights()
    encoder = build_resmem_encoder(weights)
    raw = torch.load(weights, map_location="cpu", weights_only=True)
    sd = {k[len("features.") :]: v.float() for k, v in raw.items() if k.startswith("features.")}
    del raw
    for name, rec in reference["images"].items():
        pixels = load_image(_image(name))[None]
        with torch.no_grad():
            grid = encoder(pixels)[0]
            logits = encoder.classify(pixels)[0]
            f_grid = functional_resnet(sd, pixels)[0][0].flatten(1).T
        assert logits.topk(5).indices.tolist() == rec["top5"], name
        assert [float(logits[i]) for i in rec["top5"]] == pytest.approx(rec["top5_logits"], abs=1e-3), name
        got = grid_summary(grid)
        for key in ("mean", "std", "max"):
            assert got[key] == pytest.approx(rec["grid"][key], abs=1e-3), (name, key)
        for key in ("channel_means", "region_means"):
            assert got[key] == pytest.approx(rec["grid"][key], abs=1e-3), (name, key)
        assert float((grid - f_grid).abs().max()) < 1e-3, name
