"""Attack runner: FGSM, PGD and AutoAttack accuracy of trained robustmix models over an ε grid.

Depends on the ``robustmix`` core only (``robustmix.load_model``, the data sets).
"""
