"""Attack runner: FGSM, PGD and AutoAttack accuracy of trained models over an ε grid.

Depends on the ``robustmix`` core only (``robustmix.load_model``, the data sets). The
Python API takes any ``nn.Module`` with [0, 1] inputs::

    from attacks import AttackConfig, parse_eps, robustness
    result = robustness(model, x, y, AttackConfig(eps=tuple(parse_eps("1/255,8/255"))))
    for row in result.rows: print(row.attack, row.eps.text, row.robust_acc)
"""

from attacks.eps import Eps, parse_eps
from attacks.gradient import PGDSettings
from attacks.runner import ATTACKS, AttackConfig, AttackError, attack_run, robustness

__all__ = ["ATTACKS", "AttackConfig", "AttackError", "Eps", "PGDSettings", "attack_run",
           "parse_eps", "robustness"]
