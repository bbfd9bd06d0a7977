"""Generalization module: train-test gaps, first-layer norms, input-gradient profiles and the
paper's predictions, checked on trained runs.

Depends on the ``robustmix`` core and on ``attacks``.
"""

from robustmix.evaluations.calibration import calibration
from robustmix.evaluations.corruption_eval import evaluate_corruptions
from robustmix.evaluations.corruptions import CORRUPTIONS, corrupt, generator_for
from robustmix.evaluations.first_layer import first_layer_norms
from robustmix.evaluations.generalization import evaluate_run, gradient_measures
from robustmix.evaluations.report import write_report

__all__ = ["CORRUPTIONS", "calibration", "corrupt", "evaluate_corruptions", "evaluate_run",
           "first_layer_norms", "generator_for", "gradient_measures", "write_report"]
