"""What the errors are: a span-level confusion table (gold type x predicted type, plus missed and
spurious spans) and a count of the kinds of error, for ``bfcl evaluate --confusion``.

F1 says how many entities are wrong; this says how. Every gold and predicted span (conlleval
chunking, as the scores use) lands in exactly one bucket:

- exact: same boundaries; a diagonal cell if the type agrees, an off-diagonal cell if not;
- boundary: overlaps a span of the other side with different boundaries (counted once per gold
  span, and a predicted span that overlaps no gold span is spurious);
- missed: a gold span that no predicted span overlaps;
- spurious: a predicted span that overlaps no gold span.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from bfcl.data.labels import SpanMode, spans

MISSED = "(missed)"
SPURIOUS = "(spurious)"


@dataclass
class SpanConfusion:
    types: list[str]
    exact: Counter = field(default_factory=Counter)
    """(gold type, predicted type) -> spans with the same boundaries."""
    boundary: Counter = field(default_factory=Counter)
    """(gold type, predicted type) -> gold spans overlapped by a prediction with other boundaries."""
    missed: Counter = field(default_factory=Counter)
    """gold type -> gold spans no prediction overlaps."""
    spurious: Counter = field(default_factory=Counter)
    """predicted type -> predicted spans that overlap no gold span."""
    examples: dict[str, list[str]] = field(default_factory=dict)
    """error kind -> a few example strings (``gold [..] pred [..]``) where tokens were given."""

    def kinds(self) -> dict[str, int]:
        """How many errors of each kind: type (exact boundaries), boundary (same / other type), missed, spurious."""
        return {
            "correct": sum(n for (g, p), n in self.exact.items() if g == p),
            "type": sum(n for (g, p), n in self.exact.items() if g != p),
            "boundary_same_type": sum(n for (g, p), n in self.boundary.items() if g == p),
            "boundary_other_type": sum(n for (g, p), n in self.boundary.items() if g != p),
            "missed": sum(self.missed.values()),
            "spurious": sum(self.spurious.values()),
        }

    def to_dict(self) -> dict:
        return {
            "types": self.types,
            "exact": {f"{g}->{p}": n for (g, p), n in sorted(self.exact.items())},
            "boundary": {f"{g}->{p}": n for (g, p), n in sorted(self.boundary.items())},
            "missed": dict(sorted(self.missed.items())),
            "spurious": dict(sorted(self.spurious.items())),
            "kinds": self.kinds(),
            "examples": self.examples,
        }

    def table(self) -> str:
        """Rows: gold type (and spurious); columns: predicted type with exact boundaries, then
        boundary errors and missed spans. Diagonal = correct."""
        cols = self.types + ["boundary", MISSED]
        rows = [["gold \\ pred"] + cols]
        for g in self.types:
            row = [g] + [str(self.exact.get((g, p), 0)) for p in self.types]
            row += [str(sum(n for (gg, _), n in self.boundary.items() if gg == g)), str(self.missed.get(g, 0))]
            rows.append(row)
        rows.append([SPURIOUS] + [str(self.spurious.get(p, 0)) for p in self.types] + ["", ""])
        widths = [max(len(r[i]) for r in rows) for i in range(len(cols) + 1)]
        lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        k = self.kinds()
        lines.append(
            f"errors: type {k['type']}, boundary {k['boundary_same_type']} (same type) + {k['boundary_other_type']} "
            f"(other type), missed {k['missed']}, spurious {k['spurious']}; correct {k['correct']}"
        )
        return "\n".join(lines)


def span_confusion(
    gold: Sequence[Sequence[str]],
    pred: Sequence[Sequence[str]],
    tokens: Sequence[Sequence[str]] | None = None,
    mode: SpanMode = "conlleval",
    max_examples: int = 5,
) -> SpanConfusion:
    """Compare label sequences post by post (same lengths, checked by the caller's alignment)."""
    types: set[str] = set()
    conf = SpanConfusion(types=[])

    def example(kind: str, i: int, g, p) -> None:
        if tokens is None or len(conf.examples.setdefault(kind, [])) >= max_examples:
            return
        words = tokens[i]
        show = lambda s: f"{s[0]} [{' '.join(words[s[1]:s[2]])}]" if s else "-"  # noqa: E731
        conf.examples[kind].append(f"gold {show(g)} / pred {show(p)} in: {' '.join(words)}")

    for i, (g_labels, p_labels) in enumerate(zip(gold, pred)):
        if len(g_labels) != len(p_labels):
            raise ValueError(f"post {i + 1}: {len(g_labels)} gold labels but {len(p_labels)} predicted")
        g_spans, p_spans = spans(g_labels, mode), spans(p_labels, mode)
        types.update(t for t, _, _ in g_spans + p_spans)
        p_by_bounds = {(s, e): t for t, s, e in p_spans}
        overlapped_pred: set[tuple[int, int]] = set()
        for gt, gs, ge in g_spans:
            if (gs, ge) in p_by_bounds:
                pt = p_by_bounds[(gs, ge)]
                conf.exact[(gt, pt)] += 1
                overlapped_pred.add((gs, ge))
                if gt != pt:
                    example("type", i, (gt, gs, ge), (pt, gs, ge))
                continue
            over = [(pt, ps, pe) for pt, ps, pe in p_spans if ps < ge and gs < pe]
            if over:
                pt, ps, pe = over[0]
                conf.boundary[(gt, pt)] += 1
                overlapped_pred.update((s, e) for _, s, e in over)
                example("boundary", i, (gt, gs, ge), (pt, ps, pe))
            else:
                conf.missed[gt] += 1
                example("missed", i, (gt, gs, ge), None)
        for pt, ps, pe in p_spans:
            if (ps, pe) not in overlapped_pred and not any(gs < pe and ps < ge for _, gs, ge in g_spans):
                conf.spurious[pt] += 1
                example("spurious", i, None, (pt, ps, pe))
    conf.types = sorted(types)
    return conf
