"""Window running moved to ``bfcl.processing`` (shared by training and inference); these names stay importable."""

from bfcl.processing import PostResult, predict_labels, run_posts

__all__ = ["PostResult", "predict_labels", "run_posts"]
