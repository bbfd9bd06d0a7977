"""Generalization module: train-test gaps, first-layer norms, input-gradient profiles and the
paper's predictions, checked on trained runs.

Depends on the ``robustmix`` core and on ``attacks``.
"""
