"""Tokenisation-style inference moved to ``bfcl.data.tokenstyle`` (training and the processor use it);
these names stay importable from here."""

from bfcl.data.tokenstyle import (
    StyleEvidence, StyleReport, agreement, agreement_summary, detokenise, infer_style, style_evidence,
)

__all__ = ["StyleEvidence", "StyleReport", "agreement", "agreement_summary", "detokenise", "infer_style", "style_evidence"]
