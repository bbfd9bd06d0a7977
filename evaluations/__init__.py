"""Generalization module: train-test gaps, first-layer norms, input-gradient profiles and the
paper's predictions, checked on trained runs.

Depends on the ``robustmix`` core and on ``attacks``.
"""

from evaluations.first_layer import first_layer_norms
from evaluations.generalization import evaluate_run, gradient_measures
from evaluations.report import write_report

__all__ = ["evaluate_run", "first_layer_norms", "gradient_measures", "write_report"]
