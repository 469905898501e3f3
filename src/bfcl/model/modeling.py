"""BFCL: the whole model of Fig. 2 as one module whose settings select the paper's
variants, ablations and text-only baselines.

    C  = TextEncoder(S)                         (Sect. 3.3.1, fine-tuned)
    T  = ReLU(W_t C + b_t)                      (eq. 1)
    V  = ReLU(W_v U + b_v)                      (eq. 2; U is the frozen CNN grid, cached)
    T_v, V_t = MCA(T, V)                        (eqs. 3-9)
    H  = Fusion(T_v, V_t)                       (eqs. 10-11)
    E  = W_e H[first sub-token of each word]    (emissions; W_e [H; C] with emission_reads_text)
    L  = CRF-NLL(E, y) + l_vt L_vt + l_tv L_tv  (eqs. 12, 13-17)

The image encoder is not part of this module: it is frozen, so its grid
features U arrive precomputed (from ``bfcl.encoders.cache``), and a post without
an image arrives with ``image_mask`` False.

``config.architecture`` other than "bfcl" swaps MCA + fusion + contrastive losses for a
Table 2 baseline head (``bfcl.model.baselines``: UMT, GVATT, AdaCAN, OCSGA); the encoder,
emission layer, CRF, checkpoints and everything around them stay the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel
from transformers.utils import ModelOutput

from bfcl.data.labels import validate_label_set
from bfcl.data.shapes import SHAPES
from bfcl.encoders.text import (
    load_text_encoder, load_tokenizer, resolve_text_encoder, text_encoder_from_config, tokenizer_from_dir,
)
from bfcl.encoders.words import build_word_encoder
from bfcl.model.baselines import HeadOutput, build_head, gather_words
from bfcl.model.checkpoint_files import atomic_directory, verify_checkpoint
from bfcl.model.coattention import MultimodalCoAttention
from bfcl.model.configuration import BFCLConfig
from bfcl.model.contrastive import ContrastiveHeads
from bfcl.model.crf import CRF, bio_constraints
from bfcl.model.fusion import build_fusion
from bfcl.errors import CheckpointError, ConfigError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


@dataclass
class BFCLOutput(ModelOutput):
    """Shapes: B posts (or windows), W words, K labels, m bottlenecks, R regions, n sub-tokens.

    A ``transformers`` ModelOutput (a dict as well as a dataclass), so DistributedDataParallel
    can find the tensors it must reduce.
    """

    emissions: Tensor | None = None
    """(B, W, K) emission scores of each word's first sub-token."""
    loss: Tensor | None = None
    """Total loss, eq. 17 (None without labels)."""
    ner_loss: Tensor | None = None
    """L_MNER: CRF negative log-likelihood (eq. 16) or token cross-entropy for the softmax decoder."""
    span_loss: Tensor | None = None
    """UMT only: the auxiliary entity-span-detection loss (already in ``loss``, weighted)."""
    loss_vt: Tensor | None = None
    loss_tv: Tensor | None = None
    text_to_image: Tensor | None = None
    """(B, n, R) attention of each sub-token over image regions in eq. 9 (MCA only)."""
    bottleneck_attention: tuple[Tensor, ...] | None = None
    """Per bottleneck layer, (B, m, Nv): the bottlenecks' attention over the vision stream."""


class BFCL(nn.Module):
    def __init__(self, config: BFCLConfig, text_encoder: nn.Module, tokenizer: Any | None = None) -> None:
        super().__init__()
        hidden = int(text_encoder.config.hidden_size)
        # the encoder in hand decides d_t: a config naming another encoder gets a new config, not a write
        cfg = self.config = config if config.text_dim == hidden else replace(config, text_dim=hidden)
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        d = cfg.d_model
        self.head = build_head(cfg) if cfg.multimodal and cfg.architecture != "bfcl" else None
        if self.head is not None:  # a Table 2 baseline in place of MCA, fusion and contrastive losses
            word_dim = self.head.out_dim
        elif cfg.multimodal:
            self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.ReLU())  # eq. 1
            self.image_proj = nn.Sequential(nn.Linear(cfg.image_dim, d), nn.ReLU()) if cfg.image_dim else None  # eq. 2
            self.mca = MultimodalCoAttention(cfg) if cfg.use_mca else None
            self.fusion = build_fusion(cfg)
            self.contrastive = ContrastiveHeads(cfg)
            word_dim = d + (cfg.text_dim if cfg.emission_reads_text else 0)
        else:
            self.bilstm = (
                nn.LSTM(cfg.text_dim, cfg.bilstm_hidden, batch_first=True, bidirectional=True) if cfg.bilstm else None
            )
            word_dim = 2 * cfg.bilstm_hidden if cfg.bilstm else cfg.text_dim
        self.shape_embedding = nn.Embedding(len(SHAPES), cfg.word_shape_dim, padding_idx=0) if cfg.word_shape_dim else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.emission = nn.Linear(word_dim + cfg.word_shape_dim, cfg.num_labels)
        if cfg.decoder == "crf":
            constraints = bio_constraints(cfg.labels) if cfg.bio_constraints else None
            self.crf = CRF(cfg.num_labels, constraints=constraints, labels=cfg.labels)
        else:
            self.crf = None

    # ------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        word_starts: Tensor,
        word_mask: Tensor,
        labels: Tensor | None = None,
        image_features: Tensor | None = None,
        image_mask: Tensor | None = None,
        word_shapes: Tensor | None = None,
        owned_mask: Tensor | None = None,
        open_start: Tensor | None = None,
        open_end: Tensor | None = None,
        output_attentions: bool = False,
        char_ids: Tensor | None = None,
        object_ids: Tensor | None = None,
        object_mask: Tensor | None = None,
    ) -> BFCLOutput:
        """input_ids/attention_mask (B, n); word_starts (B, W) index of each word's first sub-token;
        word_mask (B, W); labels (B, W); image_features U (B, R, d_v); image_mask (B,).

        Windows of long posts (training): owned_mask (B, W) marks the contiguous words whose
        loss this window counts (default: all), open_start / open_end (B,) that those words
        begin / end inside the post, so no sentence-edge transition is scored there.
        ``output_attentions``: fill ``text_to_image`` and ``bottleneck_attention`` (for explain);
        without it every attention layer runs the fused kernel.
        ``char_ids`` (B, W, L): each word's characters, for the word-level encoder's character CNN.
        object_ids / object_mask (B, k, L): sub-tokens of the labels of the objects in each image
        (OCSGA; ``bfcl.encoders.objects``)."""
        cfg = self.config
        text_mask = attention_mask.bool()
        chars = {} if char_ids is None else {"char_ids": char_ids}
        C = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, **chars).last_hidden_state
        out = BFCLOutput(emissions=C.new_empty(0))
        head: HeadOutput | None = None
        if self.head is not None:
            head = self.head(
                C, text_mask, image_features, image_mask, word_starts, need_weights=output_attentions,
                object_ids=object_ids, object_mask=object_mask,
                word_embeddings=self.text_encoder.get_input_embeddings() if object_ids is not None else None,
            )
            H, out.text_to_image = head.hidden, head.text_to_image
        elif cfg.multimodal:
            H = self._multimodal(C, text_mask, image_features, image_mask, labels is not None, out, output_attentions)
            if cfg.emission_reads_text:  # a departure (docs/MODEL.md): the CRF also sees C, as in UMT
                H = torch.cat([H, C], dim=-1)
        else:
            H = C
        words = gather_words(H, word_starts)
        if not cfg.multimodal and cfg.bilstm:
            words = self._bilstm(words, word_mask)
        if self.shape_embedding is not None:
            shapes = word_shapes if word_shapes is not None else torch.zeros_like(word_starts)
            words = torch.cat([words, self.shape_embedding(shapes)], dim=-1)
        out.emissions = self.emission(self.dropout(words))
        if head is not None and head.span_emissions is not None:  # UMT: the span detector guides the labels
            out.emissions = self.head.convert(out.emissions, head.span_emissions)
        if labels is not None:
            out.ner_loss = self._ner_loss(out.emissions, labels, word_mask, owned_mask, open_start, open_end)
            out.loss = out.ner_loss
            if head is not None and head.span_emissions is not None:
                out.span_loss = self._ner_loss(head.span_emissions, self.head.span_targets(labels), word_mask,
                                               owned_mask, open_start, open_end, crf=self.head.span_crf)
                out.loss = out.loss + cfg.umt_span_weight * out.span_loss
            if out.loss_vt is not None:
                out.loss = out.loss + cfg.lambda_vt * out.loss_vt + cfg.lambda_tv * out.loss_tv  # eq. 17
        return out

    def _multimodal(self, C, text_mask, U, image_mask, training: bool, out: BFCLOutput, maps: bool = False) -> Tensor:
        cfg = self.config
        B = C.shape[0]
        T = self.text_proj(C)  # eq. 1
        if U is None or self.image_proj is None:
            V = T.new_zeros(B, 1, cfg.d_model)
            image_mask = torch.zeros(B, dtype=torch.bool, device=C.device)
        else:
            V = self.image_proj(U.to(T.dtype))  # eq. 2
            image_mask = image_mask.bool() if image_mask is not None else torch.ones(B, dtype=torch.bool, device=C.device)
        region_mask = image_mask[:, None].expand(-1, V.shape[1])
        if self.mca is not None:
            co = self.mca(T, text_mask, V, region_mask, need_weights=maps)
            t, v, v_mask = co.text, co.vision, co.vision_mask
            out.text_to_image = co.text_to_image
        else:  # -MCA: T and V go straight into fusion
            t, v, v_mask = T, V, region_mask
        if self.fusion is not None:
            H, attn = self.fusion(t, text_mask, v, v_mask, need_weights=maps)
            out.bottleneck_attention = tuple(attn) if maps else None
        else:  # -BF: T_v goes straight to the decoder
            H = t
        if training and (cfg.lambda_vt > 0 or cfg.lambda_tv > 0):
            out.loss_vt, out.loss_tv = self.contrastive(T, text_mask, V, image_mask)
        return H

    def _bilstm(self, words: Tensor, word_mask: Tensor) -> Tensor:
        lengths = word_mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(words, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.bilstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=words.shape[1])
        return out

    def _ner_loss(self, emissions, labels, word_mask, owned_mask=None, open_start=None, open_end=None, crf="main") -> Tensor:
        """CRF NLL (eq. 16) or token cross-entropy; ``crf``: the main CRF, or another (UMT's span CRF; None: cross-entropy)."""
        crf = self.crf if crf == "main" else crf
        if owned_mask is not None:
            emissions, labels, word_mask = _owned_words(emissions, labels, owned_mask & word_mask)
        if crf is not None:  # eq. 16
            return crf.neg_log_likelihood(
                emissions, labels, word_mask, reduction="mean", open_start=open_start, open_end=open_end
            )
        return F.cross_entropy(emissions[word_mask].float(), labels[word_mask])

    # ------------------------------------------------------------------
    @property
    def decode_constraints(self) -> bool | None:
        """What the CRF's ``constrained`` option gets by default: BIO constraints when
        ``config.constrained_decoding`` (the default), else decoding as trained."""
        return True if self.config.constrained_decoding else None

    @torch.no_grad()
    def decode(self, emissions: Tensor, word_mask: Tensor, constrained: bool | None = None) -> list[list[int]]:
        """Best label ids per post: Viterbi for the CRF, argmax for the softmax decoder.
        ``constrained`` (CRF only): None = ``decode_constraints`` (the config's choice), True =
        BIO-constrained Viterbi, False = no constraints at all."""
        if self.crf is not None:
            return self.crf.decode(emissions, word_mask, self.decode_constraints if constrained is None else constrained)
        best = emissions.argmax(-1)
        return [best[i, : int(word_mask[i].sum())].tolist() for i in range(len(best))]

    def parameter_groups(self, encoder_lr: float, head_lr: float, weight_decay: float) -> list[dict]:
        """The fine-tuned encoder and the new layers may learn at different rates. The word-level
        encoder (text_encoder=words) is new too: its embeddings learn at ``head_lr``."""
        enc, head_decay, head_no_decay, enc_no_decay = [], [], [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = p.ndim < 2 or "LayerNorm" in name or "ln" in name.split(".")[-2:][0]
            if name.startswith("text_encoder.") and not self.config.word_level:
                (enc_no_decay if no_decay else enc).append(p)
            else:
                (head_no_decay if no_decay else head_decay).append(p)
        return [
            {"params": enc, "lr": encoder_lr, "weight_decay": weight_decay},
            {"params": enc_no_decay, "lr": encoder_lr, "weight_decay": 0.0},
            {"params": head_decay, "lr": head_lr, "weight_decay": weight_decay},
            {"params": head_no_decay, "lr": head_lr, "weight_decay": 0.0},
        ]

    # ---- checkpoints: safetensors + JSON, never pickle --------------------
    def save_pretrained(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint folder atomically, with a manifest (see ``checkpoint_files``)."""
        path = Path(path)
        with atomic_directory(path) as tmp:
            self.write_checkpoint_files(tmp, extra)
        return path

    def write_checkpoint_files(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """config.json, model.safetensors and tokenizer/ into ``path`` (no manifest, not atomic:
        callers that add files of their own, like the trainer's ``last/``, wrap it)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        enc_cfg = self.text_encoder.config.to_dict()
        payload = {
            "bfcl_version": _version(),
            "model": self.config.to_dict(),
            "labels": {str(i): lab for i, lab in enumerate(self.config.labels)},
            "text_encoder_config": enc_cfg,
            **(extra or {}),
        }
        (path / CONFIG_NAME).write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_NAME))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(path / TOKENIZER_DIR))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "BFCL":
        """Load a checkpoint directory offline: the encoder's architecture comes from config.json.

        The folder is checked against its manifest first, and every inconsistency (invalid
        JSON, a missing key, unreadable weights, a label set that is not BIO or does not fit
        the weights) is a :class:`~bfcl.errors.CheckpointError` naming the file.
        """
        path = Path(path)
        payload, config = read_checkpoint_config(path)
        state = read_checkpoint_weights(path)
        encoder = _encoder_from_payload(path, payload)
        tok_dir = path / TOKENIZER_DIR
        try:
            tokenizer = tokenizer_from_dir(tok_dir) if tok_dir.is_dir() else None
        except Exception as e:  # transformers raises many kinds here
            raise CheckpointError(f"{tok_dir}: the tokenizer cannot be loaded ({type(e).__name__}: {e})") from None
        model = cls(config, encoder, tokenizer)
        load_checked_state(model, state, path / WEIGHTS_NAME)
        model.checkpoint_info = payload
        return model.to(device).eval()


def _owned_words(emissions: Tensor, labels: Tensor, owned: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Shift each row's contiguous owned words to the left: the CRF wants a prefix mask."""
    B, W = owned.shape
    offset = owned.int().argmax(1)  # first owned word (0 for a row that owns none)
    length = owned.sum(1)
    pos = torch.arange(W, device=owned.device)
    idx = (offset[:, None] + pos).clamp(max=W - 1)
    em = emissions.gather(1, idx[..., None].expand(-1, -1, emissions.shape[-1]))
    return em, labels.gather(1, idx), pos < length[:, None]


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No checkpoint at the path; also a FileNotFoundError for callers that catch that."""


def read_checkpoint_config(path: Path, *, verify: bool = True) -> tuple[dict[str, Any], BFCLConfig]:
    """The verified folder's config.json payload and its BFCLConfig; CheckpointError otherwise."""
    if not path.is_dir():
        raise CheckpointNotFound(f"{path} is not a bfcl checkpoint: no such folder")
    cfg_file = path / CONFIG_NAME
    for f in (cfg_file, path / WEIGHTS_NAME):
        if not f.is_file():
            raise CheckpointNotFound(f"{path} is not a bfcl checkpoint: {f.name} is missing")
    if verify:
        verify_checkpoint(path)
    try:
        payload = json.loads(cfg_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{cfg_file}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object, got {type(payload).__name__}")
    for key in ("model", "text_encoder_config"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{cfg_file}: missing or invalid key {key!r}")
    try:
        labels = validate_label_set(payload["model"].get("labels"))
    except ValueError as e:
        raise CheckpointError(f"{cfg_file}: model.labels is not a valid BIO label set: {e}") from None
    if "labels" in payload:
        stored = payload["labels"]
        listed = [stored.get(str(i)) for i in range(len(stored))] if isinstance(stored, dict) else None
        if listed != list(labels):
            raise CheckpointError(f"{cfg_file}: 'labels' {stored!r} disagrees with model.labels {list(labels)!r}")
    try:
        config = BFCLConfig.from_dict(payload["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_file}: invalid model settings: {e}") from None
    return payload, config


def read_checkpoint_weights(path: Path) -> dict[str, Tensor]:
    weights = path / WEIGHTS_NAME
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({e})") from None


def _encoder_from_payload(path: Path, payload: dict[str, Any]) -> nn.Module:
    try:
        return text_encoder_from_config(payload["text_encoder_config"])
    except Exception as e:  # KeyError for model_type, ValueError for unknown types, ...
        raise CheckpointError(
            f"{path / CONFIG_NAME}: text_encoder_config does not describe an encoder ({type(e).__name__}: {e})"
        ) from None


def load_checked_state(model: nn.Module, state: dict[str, Tensor], source: Path) -> None:
    """``load_state_dict(strict=True)``, with a CheckpointError that names the file and the
    first missing, unexpected or wrongly shaped tensor (e.g. num_labels vs the weights)."""
    expected = model.state_dict()
    have, need = state.get("emission.weight"), expected.get("emission.weight")
    if have is not None and need is not None and have.shape[0] != need.shape[0]:
        # the commonest mismatch, said in the user's terms: labels, not tensor shapes
        raise CheckpointError(
            f"{source.parent / CONFIG_NAME}: model.labels lists {need.shape[0]} labels, but {source.name} "
            f"was trained for {have.shape[0]} (emission.weight is {tuple(have.shape)}): the label set does not match the weights"
        )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} is {tuple(state[k].shape)}, the config needs {tuple(v.shape)}"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} tensor(s) of the wrong shape, e.g. {shapes[0]}")
    if missing:
        problems.append(f"{len(missing)} missing tensor(s), e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
    if problems:
        raise CheckpointError(f"{source}: does not fit the model described by {CONFIG_NAME}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def build_model(config: BFCLConfig, *, pretrained: bool = True, tokenizer: Any | None = None) -> BFCL:
    """A fresh model: pretrained text encoder (or random weights for tests). The config is complete
    (image sizes from the image encoder's name): a multimodal config that cannot take images is refused.
    ``tokenizer``: the text_encoder=words vocabulary built from the training data (required there)."""
    if config.uses_image and not config.takes_images:
        raise ConfigError(
            f"model.image_encoder={config.image_encoder!r}: its feature size is unknown here (image_dim=0), so a "
            "multimodal model would silently ignore images; use a known encoder (efficientnet-lite0, "
            "resnet152-resmem, resnet<depth>:<file>, hf:<model on this machine>), set image_dim, or set "
            "image_encoder=none / multimodal=false for a text-only model"
        )

    if config.word_level:
        return BFCL(config, build_word_encoder(config, tokenizer), tokenizer)
    tokenizer = load_tokenizer(config.text_encoder)
    if pretrained:
        encoder = load_text_encoder(config.text_encoder)
    else:

        encoder = AutoModel.from_config(AutoConfig.from_pretrained(resolve_text_encoder(config.text_encoder)))
    return BFCL(config, encoder, tokenizer)


def _version() -> str:
    from bfcl._version import __version__

    return __version__
