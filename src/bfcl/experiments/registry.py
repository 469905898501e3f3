"""The paper's experiments as data: each one a list of rows, each row a set of ``--set`` overrides
on one base config, with the figures the paper reports for it.

A row is an ordinary ``bfcl train`` run (``bfcl.experiments.runner``). The paper's numbers are
copied from ``BFCL-paper.txt`` (Wang et al., IEICE 2023): Table 2 (vs baselines), Table 3
(ablations), Table 4 (image encoders), Table 5 (fusion mechanisms). Fig. 6 is a plot whose
points the text does not give as numbers: its rows carry no paper figure ("not given
numerically"), never a value read off the picture.

What the printed tables themselves get wrong (kept as printed, flagged by ``paper_f1_mismatch``):

* Table 3's Twitter-2015 P and R of -BF, -CL and -MCA equal Table 2's P and R of BERT-CRF, BERT
  and CNN-BiLSTM-CRF, and give those rows' F1 (71.80, 71.32, 67.15), not the F1 printed beside
  them (73.44, 73.66, 73.95). Their Twitter-2017 rows are consistent.
* Table 5's AF and GF rows are Table 3's -BF and -CL rows, digit for digit, on both datasets.
* Table 4's ResNet-101 on Twitter-2017: P 84.49 and R 84.01 give F1 84.25, printed 84.45.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

DATASETS: tuple[str, ...] = ("twitter2015", "twitter2017")
DATASET_TITLES: dict[str, str] = {"twitter2015": "Twitter-2015", "twitter2017": "Twitter-2017"}
TYPES: tuple[str, ...] = ("PER", "LOC", "ORG", "MISC")

# ---------------------------------------------------------------------------------------------
# The paper's figures (%), as printed
# ---------------------------------------------------------------------------------------------


def _scores(*values: float) -> dict[str, float]:
    """(P, R, F1) or (PER, LOC, ORG, MISC, P, R, F1) as printed."""
    keys = ("P", "R", "F1") if len(values) == 3 else (*TYPES, "P", "R", "F1")
    return dict(zip(keys, values, strict=True))


PAPER_TABLE2: dict[str, dict[str, dict[str, float]]] = {
    # row: {dataset: {PER, LOC, ORG, MISC (F1), P, R, F1}}
    "BiLSTM-CRF": {"twitter2015": _scores(76.77, 72.56, 41.33, 26.80, 68.14, 61.09, 64.42),
                   "twitter2017": _scores(85.12, 72.68, 72.50, 52.56, 79.42, 73.43, 76.31)},
    "CNN-BiLSTM-CRF": {"twitter2015": _scores(80.86, 75.39, 47.77, 32.61, 66.24, 68.09, 67.15),
                       "twitter2017": _scores(87.99, 77.44, 74.02, 60.82, 80.00, 78.76, 79.37)},
    "BERT": {"twitter2015": _scores(84.72, 79.91, 58.26, 38.81, 68.30, 74.61, 71.32),
             "twitter2017": _scores(90.88, 84.00, 79.25, 61.63, 82.19, 83.72, 82.95)},
    "BERT-CRF": {"twitter2015": _scores(84.74, 80.51, 60.27, 37.29, 69.22, 74.59, 71.81),
                 "twitter2017": _scores(90.25, 83.05, 81.13, 62.21, 83.32, 83.57, 83.44)},
    "BERT-BiLSTM-CRF": {"twitter2015": _scores(84.32, 79.31, 61.66, 37.53, 71.03, 73.57, 72.27),
                        "twitter2017": _scores(90.29, 84.55, 80.97, 64.85, 83.20, 84.68, 83.93)},
    "GVATT": {"twitter2015": _scores(82.66, 77.21, 55.06, 35.25, 73.96, 67.90, 70.80),
              "twitter2017": _scores(89.34, 78.53, 79.12, 62.21, 83.41, 80.38, 81.87)},
    "AdaCAN": {"twitter2015": _scores(81.98, 78.95, 53.07, 34.02, 72.75, 68.74, 70.69),
               "twitter2017": _scores(89.63, 77.46, 79.24, 62.77, 84.16, 80.24, 82.15)},
    "GVATT-BERT-CRF": {"twitter2015": _scores(84.43, 80.87, 59.02, 38.14, 69.15, 74.46, 71.70),
                       "twitter2017": _scores(90.94, 83.52, 81.91, 62.75, 83.64, 84.38, 84.01)},
    "AdaCAN-BERT-CRF": {"twitter2015": _scores(85.28, 80.64, 59.39, 38.88, 69.87, 74.59, 72.15),
                        "twitter2017": _scores(90.20, 82.97, 82.67, 64.83, 85.13, 83.20, 84.10)},
    "UMT": {"twitter2015": _scores(85.24, 81.58, 63.03, 39.45, 71.84, 74.61, 73.20),
            "twitter2017": _scores(91.56, 84.73, 82.24, 70.10, 85.08, 85.27, 85.18)},
    "OCSGA": {"twitter2015": _scores(84.68, 79.95, 56.64, 39.47, 74.71, 71.21, 72.92),
              "twitter2017": _scores(91.19, 82.72, 81.40, 67.54, 83.45, 85.49, 84.46)},
    "ATTR-MMKG-MNER": {"twitter2015": _scores(84.28, 79.43, 58.97, 41.47, 74.78, 71.82, 73.27)},  # no Twitter-2017
    "BFCL": {"twitter2015": _scores(85.60, 81.77, 63.81, 40.30, 74.02, 75.07, 74.54),
             "twitter2017": _scores(91.17, 86.43, 83.97, 66.67, 85.99, 85.42, 85.70)},
}  # fmt: skip
"""Table 2, every row as printed (the paper's MISC is Twitter-2015's OTHER)."""

PAPER_TABLE3: dict[str, dict[str, dict[str, float]]] = {
    "BFCL": {"twitter2015": _scores(74.02, 75.07, 74.54), "twitter2017": _scores(85.99, 85.42, 85.70)},
    "-BF": {"twitter2015": _scores(69.22, 74.59, 73.44), "twitter2017": _scores(85.27, 84.83, 85.05)},
    "-CL": {"twitter2015": _scores(68.30, 74.61, 73.66), "twitter2017": _scores(85.57, 84.85, 85.21)},
    "-MCA": {"twitter2015": _scores(66.24, 68.09, 73.95), "twitter2017": _scores(85.29, 85.42, 85.36)},
}
"""Table 3 as printed (see the module docstring for its Twitter-2015 P/R)."""

PAPER_TABLE4: dict[str, dict[str, dict[str, float]]] = {
    "ResNet-50": {"twitter2015": _scores(73.85, 73.80, 73.83), "twitter2017": _scores(85.71, 84.38, 85.04)},
    "ResNet-101": {"twitter2015": _scores(73.29, 74.57, 73.93), "twitter2017": _scores(84.49, 84.01, 84.45)},
    "ResNet-152": {"twitter2015": _scores(74.02, 75.07, 74.54), "twitter2017": _scores(85.99, 85.42, 85.70)},
    "ResNet-200": {"twitter2015": _scores(73.61, 74.49, 74.05), "twitter2017": _scores(86.05, 83.57, 84.79)},
}
"""Table 4 as printed."""

PAPER_TABLE5: dict[str, dict[str, dict[str, float]]] = {
    "AF": {"twitter2015": _scores(69.22, 74.59, 73.44), "twitter2017": _scores(85.27, 84.83, 85.05)},
    "GF": {"twitter2015": _scores(68.30, 74.61, 73.66), "twitter2017": _scores(85.57, 84.85, 85.21)},
    "BF": {"twitter2015": _scores(74.02, 75.07, 74.54), "twitter2017": _scores(85.99, 85.42, 85.70)},
}
"""Table 5 as printed (AF and GF repeat Table 3's -BF and -CL rows)."""

PARAMS: dict[str, str] = {
    "resnet200": "a torchvision-layout ResNet-200 state dict (.safetensors or .pth); no offline copy of its weights exists",
}
"""Paths a row's overrides name as ``{param}``, given on the command line as ``--param PATH``."""

FIG6_NOT_GIVEN = "not given numerically (Fig. 6 is a plot; the text states only its shape)"
FIG6_TEXT = {
    "fig6a": "Sect. 4.5: on Twitter-2015 with L = 6, the best F1 is at 4 bottlenecks; F1 then decreases "
             "steadily as bottlenecks are added, and significantly at 64.",
    "fig6b": "Sect. 4.5: on Twitter-2015 with 4 bottlenecks, mid fusion beats early fusion when L > 8, and "
             "mid fusion is best at L = 8.",
}  # fmt: skip


def paper_f1_mismatch(scores: dict[str, float], tolerance: float = 0.1) -> float | None:
    """The F1 that the printed P and R give, when it differs from the printed F1 by more than
    ``tolerance`` points; None when they agree."""
    p, r, f1 = scores.get("P"), scores.get("R"), scores.get("F1")
    if p is None or r is None or f1 is None or p + r == 0:
        return None
    implied = 2 * p * r / (p + r)
    return round(implied, 2) if abs(implied - f1) > tolerance else None


# ---------------------------------------------------------------------------------------------
# Experiments
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One configuration of an experiment: a name as the paper prints it, a file-safe key,
    and the ``--set`` overrides that turn the base config into it."""

    name: str
    key: str
    overrides: tuple[str, ...] = ()
    paper: dict[str, dict[str, float]] | None = None
    """{dataset: {P, R, F1[, PER, LOC, ORG, MISC]}} as printed; None where the paper gives no number."""
    paper_row: str | None = None
    """The paper's row these figures are from, where its name differs from ``name``."""
    note: str = ""
    text_only: bool = False
    """Reads no image: the rows ``--text-only`` keeps (with the full BFCL row)."""
    x: float | None = None
    """Figure rows: the x value (bottlenecks, layers)."""
    series: tuple[str, ...] = ()
    """Figure rows: the lines this point belongs to (a point shared by early and mid names both)."""
    defaults: tuple[str, ...] = ()
    """Settings this row starts from instead of the base's, which ``--quick`` and ``--set`` still
    override (a word-level model trained from scratch needs more epochs than a fine-tuned encoder)."""


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    source: str
    """Where in the paper (table or figure)."""
    rows: tuple[Row, ...]
    kind: str = "table"
    """"table" or "figure" (a figure also gets a PNG plot)."""
    per_type: bool = False
    """Report per-type F1 (PER, LOC, ORG, MISC) as the paper's table does."""
    note: str = ""
    x_label: str = ""
    paper_dataset: str | None = None
    """A figure run on one dataset only (Fig. 6: Twitter-2015)."""
    references: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    """Figures: paper numbers that belong to one point of the plot, quoted from a table."""

    def row(self, name_or_key: str) -> Row:
        for r in self.rows:
            if name_or_key in (r.name, r.key):
                return r
        names = [r.key for r in self.rows]
        close = difflib.get_close_matches(name_or_key, names + [r.name for r in self.rows], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise KeyError(f"{self.name} has no row {name_or_key!r}{hint}; rows: {', '.join(names)}")


_T2 = PAPER_TABLE2
_TEXT_ONLY = ("model.multimodal=false",)
# the word-level rows take the settings of configs/baselines/*bilstm-crf-*.yaml (Lample et al.: hidden 100;
# Ma & Hovy: hidden 200, 30 character filters; both: dropout 0.5, gradient clipping 5, a new model's
# learning rate for the embeddings, 30 epochs unless --quick or --set says otherwise): the BERT rows'
# defaults would train them much worse
_WORDS = ("model.multimodal=false", "model.text_encoder=words", "model.bilstm=true", "model.dropout=0.5",
          "train.head_lr=1e-3", "train.max_grad_norm=5.0")
_WORD_EPOCHS = ("train.epochs=30",)

TABLE2 = Experiment(
    "table2", "BFCL against the baselines", "Table 2",
    rows=(
        Row("BiLSTM-CRF", "bilstm-crf", (*_WORDS, "model.bilstm_hidden=100"), _T2["BiLSTM-CRF"], text_only=True,
            defaults=_WORD_EPOCHS),
        Row("CNN-BiLSTM-CRF", "cnn-bilstm-crf", (*_WORDS, "model.bilstm_hidden=200", "model.char_cnn_dim=30"),
            _T2["CNN-BiLSTM-CRF"], text_only=True, defaults=_WORD_EPOCHS),
        Row("BERT", "bert", (*_TEXT_ONLY, "model.decoder=softmax"), _T2["BERT"], text_only=True,
            note="on the base's text encoder (the paper's: BERT-base-cased)"),
        Row("BERT-CRF", "bert-crf", _TEXT_ONLY, _T2["BERT-CRF"], text_only=True),
        Row("BERT-BiLSTM-CRF", "bert-bilstm-crf", (*_TEXT_ONLY, "model.bilstm=true"), _T2["BERT-BiLSTM-CRF"],
            text_only=True),
        Row("GVATT-BERT-CRF", "gvatt", ("model.architecture=gvatt",), _T2["GVATT-BERT-CRF"],
            note="GVATT's BERT form, on the base's text encoder (the BiLSTM GVATT: 70.80 / 81.87 F1)"),
        Row("AdaCAN-BERT-CRF", "adacan", ("model.architecture=adacan",), _T2["AdaCAN-BERT-CRF"],
            note="AdaCAN's BERT form, on the base's text encoder (the BiLSTM AdaCAN: 70.69 / 82.15 F1)"),
        Row("UMT", "umt", ("model.architecture=umt",), _T2["UMT"]),
        Row("OCSGA", "ocsga", ("model.architecture=ocsga",), _T2["OCSGA"],
            note="object labels from the image encoder's top ImageNet classes unless object_labels names "
                 "detector output: an approximation"),
        Row("BFCL", "bfcl", (), _T2["BFCL"]),
    ),
    per_type=True,
    note="Rows whose settings this build does not have are reported as not available. ATTR-MMKG-MNER "
         "(Twitter-2015 only, 73.27 F1) has no row: it needs image attributes and a knowledge graph.",
)  # fmt: skip

TABLE3 = Experiment(
    "table3", "Ablations", "Table 3",
    rows=(
        Row("BFCL", "full", (), PAPER_TABLE3["BFCL"]),
        Row("-BF", "no-bf", ("model.fusion=none",), PAPER_TABLE3["-BF"], note="T_v goes straight to the decoder"),
        Row("-CL", "no-cl", ("model.lambda_vt=0", "model.lambda_tv=0"), PAPER_TABLE3["-CL"],
            note="no contrastive losses"),
        Row("-MCA", "no-mca", ("model.use_mca=false",), PAPER_TABLE3["-MCA"],
            note="T and V go straight into bottleneck fusion"),
    ),
)  # fmt: skip

TABLE4 = Experiment(
    "table4", "Image encoders", "Table 4",
    rows=(
        Row("ResNet-50", "resnet-50", ("model.image_encoder=hf:microsoft/resnet-50",), PAPER_TABLE4["ResNet-50"]),
        Row("ResNet-101", "resnet-101", ("model.image_encoder=hf:microsoft/resnet-101",), PAPER_TABLE4["ResNet-101"]),
        Row("ResNet-152", "resnet-152", ("model.image_encoder=hf:microsoft/resnet-152",), PAPER_TABLE4["ResNet-152"]),
        Row("ResNet-152 (ResMem weights)", "resnet-152-resmem", ("model.image_encoder=resnet152-resmem",),
            PAPER_TABLE4["ResNet-152"], paper_row="ResNet-152",
            note="the paper's architecture, batch-norm statistics re-estimated by ResMem: a substitute"),
        Row("ResNet-200", "resnet-200", ("model.image_encoder=resnet200:{resnet200}",), PAPER_TABLE4["ResNet-200"],
            note="from a torchvision-layout state dict (--resnet200 PATH)"),
        Row("EfficientNet-Lite0", "efficientnet-lite0", ("model.image_encoder=efficientnet-lite0",), None,
            note="the offline default; not in the paper"),
    ),
    note="hf: encoders must be on this machine (huggingface-cli download microsoft/resnet-50, ...).",
)  # fmt: skip

TABLE5 = Experiment(
    "table5", "Fusion mechanisms", "Table 5",
    rows=(
        Row("AF", "af", ("model.fusion=attention",), PAPER_TABLE5["AF"], note="attention fusion (Moon et al. 2018)"),
        Row("GF", "gf", ("model.fusion=gated",), PAPER_TABLE5["GF"], note="gated fusion (UMT's visual gate)"),
        Row("BF", "bf", ("model.fusion=bottleneck",), PAPER_TABLE5["BF"], note="bottleneck fusion (BFCL)"),
    ),
)  # fmt: skip

FIG6A_BOTTLENECKS: tuple[int, ...] = (2, 4, 6, 8, 16, 32, 64, 128)
FIG6A = Experiment(
    "fig6a", "F1 against the number of bottlenecks (L = 6)", "Fig. 6 (a)",
    rows=tuple(
        Row(f"m={m}", f"m{m}", ("model.fusion=bottleneck", f"model.num_bottlenecks={m}", "model.num_layers=6"),
            x=float(m), series=("bottleneck",))
        for m in FIG6A_BOTTLENECKS
    ),
    kind="figure", x_label="bottleneck tokens m", paper_dataset="twitter2015",
    note="The fusion stage is the base config's (mid in the paper's setting: 3 self-attention and 3 bottleneck "
         "layers). Sect. 4.5 lists m in 2, 4, 8, ..., 128; Sect. 4.1.3's grid adds 6.",
)  # fmt: skip

FIG6B_LAYERS: tuple[int, ...] = tuple(range(13))


def _fig6b_rows() -> tuple[Row, ...]:
    """L = 0 and L = 1 build the same model in both stages (mid fusion runs L // 2 self-attention
    layers, then L - L // 2 bottleneck layers): one shared run each. L = 0 is no fusion layer at all."""
    common = ("model.fusion=bottleneck", "model.num_bottlenecks=4")
    rows = [
        Row("L=0", "l0", (*common, "model.num_layers=0"), x=0.0, series=("early", "mid"),
            note="no fusion layer: H = T_v (early and mid are the same model)"),
        Row("L=1", "l1", (*common, "model.num_layers=1", "model.fusion_stage=early"), x=1.0, series=("early", "mid"),
            note="one bottleneck layer in both stages (1 // 2 = 0 self-attention layers)"),
    ]
    for stage in ("early", "mid"):
        for n in FIG6B_LAYERS[2:]:
            rows.append(Row(f"{stage} L={n}", f"{stage}-l{n}", (*common, f"model.num_layers={n}",
                                                                 f"model.fusion_stage={stage}"),
                            x=float(n), series=(stage,)))
    return tuple(rows)


FIG6B = Experiment(
    "fig6b", "F1 against the number of fusion layers, early and mid fusion (m = 4)", "Fig. 6 (b)",
    rows=_fig6b_rows(),
    kind="figure", x_label="fusion layers L", paper_dataset="twitter2015",
    note="Mid fusion with odd L runs L // 2 self-attention layers, then L - L // 2 bottleneck layers (L = 3: "
         "1 + 2). With a single bottleneck layer (early L = 1, mid L = 2, 3) the bottlenecks carry no image "
         "information into H (eq. 10 runs before eq. 11; see bfcl.model.fusion).",
    references=({"label": "paper Table 2 BFCL (mid, L = 8, m = 4)", "series": "mid", "x": 8.0,
                 "twitter2015": 74.54, "twitter2017": 85.70},),
)  # fmt: skip

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (TABLE2, TABLE3, TABLE4, TABLE5, FIG6A, FIG6B)}


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; a KeyError listing them all otherwise."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(EXPERIMENTS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        listing = "; ".join(f"{e.name}: {e.source}, {e.title}" for e in EXPERIMENTS.values())
        raise KeyError(f"unknown experiment {name!r}{hint}. Experiments: {listing}") from None


DEFAULT_BASE: dict[str, dict[str, Any]] = {
    "model": {
        "text_encoder": "minilm", "image_encoder": "efficientnet-lite0", "d_model": 128, "num_heads": 8,
        "dropout": 0.1, "use_mca": True, "fusion": "bottleneck", "num_bottlenecks": 4, "num_layers": 4,
        "fusion_stage": "mid", "temperature": 0.6, "lambda_vt": 0.1, "lambda_tv": 0.1, "word_shape_dim": 16,
    },
    "train": {"epochs": 5, "batch_size": 16, "lr": 5.0e-5, "head_lr": 1.0e-3},
}  # fmt: skip
"""The base when no ``--config`` is given: the offline BFCL setting of configs/offline-twitter2017.yaml
(packaged MiniLM + EfficientNet-Lite0, d = 128, mid fusion over L = 4, m = 4), which runs on CPU.
The paper's own setting is ``--config configs/paper-twitter2015.yaml`` (needs a hub)."""
