"""``bfcl evaluate --model DIR --data FILE``: score a checkpoint on a data file.

The work lives in ``bfcl.evaluation`` (shared by training and inference); this module
keeps the name the CLI imports."""

from bfcl.evaluation import evaluate_model, evaluate_model_cli

__all__ = ["evaluate_model", "evaluate_model_cli"]
