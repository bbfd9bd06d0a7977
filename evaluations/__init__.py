"""Generalization module: train-test gaps, first-layer norms, input-gradient profiles and the
paper's predictions, checked on trained runs.

Depends on the ``robustmix`` core and on ``attacks``.
"""

from evaluations.corruption_eval import evaluate_corruptions
from evaluations.generalization import evaluate_run
from evaluations.report import write_report

__all__ = ["evaluate_corruptions", "evaluate_run", "write_report"]
