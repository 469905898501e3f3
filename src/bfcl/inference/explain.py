"""Where in the picture did the model look? Heat maps over the image grid for entities and bottlenecks.

``explain(predictor, text, image)`` runs one prediction with the attention kept and
turns it into 7 x 7 maps over the image regions (row-major grid of the 224 x 224
resized picture, the order of the CNN's feature map):

* **Entity map**: the text-guided visual co-attention of eq. 9 (``text_to_image``,
  one row per sub-token, a distribution over the R regions), averaged over the
  first sub-tokens of the entity's words. The first sub-token is the one whose
  representation the emission layer labels, so it is the row that speaks for the word.
* **Bottleneck map** (one per bottleneck token): the last bottleneck layer is where
  the bottlenecks last read the vision stream before the text stream reads them back.
  With MCA that stream is V_t, one row per text sub-token, and each row is itself a
  mixture of regions through ``text_to_image``; so the map is rolled out through it:

      map = A_last[:, :n] @ text_to_image        (m x n) @ (n x R) -> (m x R)

  where ``A_last`` is the (m, Nv) attention of the bottlenecks over the V_t rows
  (restricted to the n real sub-token rows). This ignores the residual paths and the
  fusion layers' self-attention within V_t, as attention rollout usually does: it is
  a picture of where the attention points, not a faithful attribution. Without MCA
  the vision stream is the R regions themselves and ``A_last`` is already (m x R).

Every map is normalised to sum to 1 (the bottleneck rows do not on their own: part of
their attention goes to the bottleneck tokens themselves).

Long posts: the model reads a post longer than its window in several windows, and the
attention kept is that of the FIRST window only. An entity whose words are not all in
the first window gets no map (``heatmap`` None and a ``note`` saying why) unless
``on_error="raise"`` asks for an error instead. Bottleneck maps always describe the
first window.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from bfcl.data.images import DEFAULT_SIZE, load_image
from bfcl.data.types import ImageInput
from bfcl.inference.predictor import Entity, Prediction

if TYPE_CHECKING:  # pragma: no cover
    from bfcl.inference.predictor import Predictor

__all__ = ["EntityMap", "ExplainError", "Explanation", "explain", "render"]

NEEDS_IMAGE = "explain needs an image and a multimodal model"


class ExplainError(ValueError):
    """The inputs cannot give image heat maps (no image, text-only model, no such attention)."""


@dataclass
class EntityMap:
    entity: Entity
    heatmap: Tensor | None
    """(rows, cols) map over image regions summing to 1; None when it cannot be computed (see ``note``)."""
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = self.entity.to_dict()
        d.update(token_start=self.entity.token_start, token_end=self.entity.token_end)
        d["heatmap"] = _as_list(self.heatmap)
        if self.note:
            d["note"] = self.note
        return d


@dataclass
class Explanation:
    text: str
    entities: list[EntityMap]
    bottlenecks: list[Tensor]
    """One (rows, cols) map per bottleneck token, summing to 1; empty when the model has no bottleneck fusion."""
    grid: tuple[int, int] = (7, 7)
    notes: list[str] = field(default_factory=list)
    rollout: bool = True
    """True when the bottleneck maps were rolled out through V_t (MCA on)."""
    prediction: Prediction | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain lists and numbers (maps rounded to 6 decimals)."""
        d: dict[str, Any] = {
            "text": self.text,
            "entities": [e.to_dict() for e in self.entities],
            "bottlenecks": [{"index": k, "heatmap": _as_list(m)} for k, m in enumerate(self.bottlenecks)],
            "grid": list(self.grid),
            "rollout": self.rollout,
        }
        if self.notes:
            d["notes"] = list(self.notes)
        return d

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON with each map row on one line (readable, diffable)."""
        return _dumps(self.to_dict(), 0)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Explanation":
        """Rebuild from :meth:`to_dict` output (e.g. to re-render a saved JSON)."""
        ents = []
        for e in d["entities"]:
            ent = Entity(e["text"], e["type"], e["start"], e["end"], e["score"], e["token_start"], e["token_end"])
            hm = torch.tensor(e["heatmap"], dtype=torch.float32) if e.get("heatmap") is not None else None
            ents.append(EntityMap(ent, hm, e.get("note")))
        maps = [torch.tensor(b["heatmap"], dtype=torch.float32) for b in sorted(d["bottlenecks"], key=lambda b: b["index"])]
        return cls(d["text"], ents, maps, tuple(d["grid"]), list(d.get("notes", [])), bool(d.get("rollout", True)))


def explain(
    predictor: "Predictor",
    text: str,
    image: ImageInput,
    *,
    on_error: Literal["skip", "raise"] = "skip",
) -> Explanation:
    """Predict ``text`` with ``image`` and return the entity and bottleneck heat maps.

    ``on_error`` is what to do with an entity whose map cannot be computed (it lies
    outside the first window of a long post): ``"skip"`` leaves its map None with a
    note, ``"raise"`` raises :class:`ExplainError`. A missing image or a model that
    reads no image always raises: there would be nothing to draw.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
    config = predictor.config
    if getattr(predictor, "ignores_images", False):  # its image weights never saw an image: nothing to draw
        raise ExplainError(
            f"{NEEDS_IMAGE}: this model was trained without images (train_posts_with_image=0), "
            "so it reads no image and predicts from the text alone"
        )
    if not config.multimodal or predictor.cache is None:
        why = "multimodal=false" if not config.multimodal else f"image encoder {config.image_encoder!r}"
        raise ExplainError(f"{NEEDS_IMAGE}: this model is text-only ({why})")
    if image is None:
        raise ExplainError(f"{NEEDS_IMAGE}: no image was given")
    grid = region_grid(config.num_regions)
    # errors on, whatever the predictor's policy: an unreadable file is named, never skipped
    pred = predictor.predict(text, image, explain=True, image_on_error="error")
    if not pred.has_image:
        raise ExplainError(f"{NEEDS_IMAGE}: the image could not be used")
    notes: list[str] = []
    if pred.attention is None:  # a post with no words: nothing was run
        notes.append("the text has no words: nothing to explain")
        return Explanation(pred.text, [], [], grid, notes, config.use_mca, pred)
    attn = pred.attention
    t2i: Tensor | None = attn.get("text_to_image")
    starts: list[int] = list(attn["word_starts"])
    first: int = int(attn["first_word"])
    if t2i is None:
        notes.append("the model has no co-attention (use_mca=false): no per-word image attention, no entity maps")
    elif len(pred.tokens) > first + len(starts):
        notes.append(
            f"the post is longer than one window: attention covers words {first}..{first + len(starts) - 1} "
            f"of {len(pred.tokens)}"
        )
    entities = []
    for ent in pred.entities:
        hm, note = None, None
        if t2i is None:
            note = "no co-attention in this model"
        else:
            words = range(ent.token_start, ent.token_end)
            if all(first <= w < first + len(starts) for w in words):
                hm = entity_map(t2i, starts, first, ent.token_start, ent.token_end, grid)
            else:
                note = f"words {ent.token_start}..{ent.token_end - 1} are not all in the first window; no map"
                if on_error == "raise":
                    raise ExplainError(f"entity {ent.text!r}: {note}")
        entities.append(EntityMap(ent, hm, note))
    bottlenecks = bottleneck_maps(attn["bottleneck_attention"], t2i, grid)
    if not bottlenecks:
        notes.append(f"the model has no bottleneck fusion (fusion={config.fusion!r}): no bottleneck maps")
    return Explanation(pred.text, entities, bottlenecks, grid, notes, t2i is not None, pred)


def region_grid(num_regions: int) -> tuple[int, int]:
    """The square grid the CNN's regions were flattened from (row-major)."""
    side = math.isqrt(num_regions)
    if side * side != num_regions:
        raise ExplainError(f"cannot draw {num_regions} image regions as a square grid")
    return side, side


def entity_map(
    text_to_image: Tensor, word_starts: list[int], first_word: int, token_start: int, token_end: int, grid: tuple[int, int]
) -> Tensor:
    """Mean of the entity words' first-sub-token rows of ``text_to_image``, normalised, as a grid."""
    rows = [word_starts[w - first_word] for w in range(token_start, token_end)]
    return _normalise(text_to_image[rows].float().mean(0), grid)


def bottleneck_maps(bottleneck_attention: list[Tensor], text_to_image: Tensor | None, grid: tuple[int, int]) -> list[Tensor]:
    """One grid per bottleneck token from the last bottleneck layer (rolled out through V_t with MCA)."""
    if not bottleneck_attention:
        return []
    last = bottleneck_attention[-1].float()  # (m, Nv)
    if text_to_image is None:  # -MCA: the vision stream is the regions themselves
        maps = last
    else:
        n = text_to_image.shape[0]
        maps = last[:, :n] @ text_to_image.float()  # (m, n) @ (n, R)
    return [_normalise(row, grid) for row in maps]


def _normalise(row: Tensor, grid: tuple[int, int]) -> Tensor:
    row = row.clamp(min=0)
    total = float(row.sum())
    if total <= 0:
        raise ExplainError(f"{NEEDS_IMAGE}: the attention over the image is empty")
    return (row / total).reshape(grid).cpu()


def _dumps(x: Any, level: int) -> str:
    """JSON with two-space indents, except that a list of numbers stays on one line."""
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(x, dict) and x:
        body = ",\n".join(f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {_dumps(v, level + 1)}" for k, v in x.items())
        return "{\n" + body + "\n" + pad + "}"
    if isinstance(x, list) and x and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x):
        return "[\n" + ",\n".join(inner + _dumps(v, level + 1) for v in x) + "\n" + pad + "]"
    return json.dumps(x, ensure_ascii=False)


def _as_list(m: Tensor | None) -> list[list[float]] | None:
    return None if m is None else [[round(float(x), 6) for x in r] for r in m.tolist()]


# ---------------------------------------------------------------------------- drawing

PANEL_IN = 2.6  # inches per panel: titles stay legible at 100 dpi
MAX_COLS = 5
ALPHA = 0.5


def render(explanation: Explanation, image: ImageInput, output_path: str | Path, *, dpi: int = 100) -> Path:
    """Write a PNG: the picture plain, one overlay per entity, then a row of bottleneck overlays.

    The picture is loaded exactly as the model saw it (224 x 224, see ``bfcl.data.images``),
    each 7 x 7 map is upsampled bilinearly and drawn over it. Colours are scaled per panel
    (0 to that map's maximum): compare where a map points, not its strength across panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if image is None:
        raise ExplainError(f"{NEEDS_IMAGE}: no image was given")
    pixels = load_image(image, size=DEFAULT_SIZE).permute(1, 2, 0).numpy()

    def upsample(m: Tensor):
        return F.interpolate(m[None, None].float(), size=(DEFAULT_SIZE, DEFAULT_SIZE), mode="bilinear", align_corners=False)[0, 0].numpy()

    top: list[EntityMap | None] = [None, *explanation.entities]  # None: the plain picture
    ncols = min(MAX_COLS, max(len(top), len(explanation.bottlenecks), 1))
    top_rows = math.ceil(len(top) / ncols)
    bot_rows = math.ceil(len(explanation.bottlenecks) / ncols)
    nrows = top_rows + bot_rows
    fig = plt.figure(figsize=(ncols * PANEL_IN, nrows * (PANEL_IN + 0.45) + 0.9), dpi=dpi, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")

    def overlay(ax, m: Tensor, title: str) -> None:
        heat = upsample(m)
        ax.imshow(pixels)
        ax.imshow(heat, cmap="jet", alpha=ALPHA, vmin=0.0, vmax=float(heat.max()) or 1.0)
        ax.set_title(f"{title}  peak {100 * float(m.max()):.1f}%", fontsize=9)

    for k, em in enumerate(top):
        ax = axes[k // ncols, k % ncols]
        if em is None:
            ax.imshow(pixels)
            ax.set_title("image (224 x 224)", fontsize=9)
            if not explanation.entities:
                ax.text(0.5, -0.08, "no entities found", transform=ax.transAxes, ha="center", va="top", fontsize=9, color="firebrick")
            continue
        ent = em.entity
        title = f"{_short(ent.text)}\n{ent.type}  {ent.score:.2f}"
        if em.heatmap is None:
            ax.imshow(pixels, alpha=0.35)
            ax.set_title(title, fontsize=9)
            ax.text(0.5, 0.5, "\n".join(textwrap.wrap(em.note or "no map", 24)), transform=ax.transAxes, ha="center", va="center", fontsize=8)
        else:
            overlay(ax, em.heatmap, title)
    for k, m in enumerate(explanation.bottlenecks):
        overlay(axes[top_rows + k // ncols, k % ncols], m, f"bottleneck {k}")

    head = "\n".join(textwrap.wrap(explanation.text, width=ncols * 22)[:3])
    fig.suptitle(head, fontsize=10)
    foot = "entity maps: text-to-image co-attention (eq. 9) of the entity's words"
    if explanation.bottlenecks:
        foot += "; bottleneck maps: last layer" + (", rolled out through V_t" if explanation.rollout else "")
    rows, cols = explanation.grid
    foot += f".\ncolours per panel from 0 to its peak; peak = largest share of one region (uniform: {100 / (rows * cols):.1f}%)"
    fig.supxlabel(foot, fontsize=7, color="dimgray")
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    plt.close(fig)
    return out


def _short(s: str, n: int = 28) -> str:
    return s if len(s) <= n else s[: n - 1] + "\u2026"
