"""The paper's experiments (Tables 2-5, Fig. 6) as resumable sets of ordinary ``bfcl train`` runs.

``registry``: each experiment's rows (``--set`` overrides on one base config) and the paper's
figures; ``runner``: runs rows x seeds, skipping finished runs; ``aggregate``: mean ± std and the
JSON / Markdown report; ``plots``: Fig. 6 as PNG. The command is ``bfcl experiment``.
"""

from bfcl.experiments.registry import EXPERIMENTS, Experiment, Row, get_experiment

__all__ = ["EXPERIMENTS", "Experiment", "Row", "get_experiment"]
