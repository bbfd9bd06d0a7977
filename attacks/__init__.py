"""Attack runner: robust accuracy of trained models over an ε grid, with the strongest
attack at every ε, the per-example worst case and the attack-failure diagnostics.

Depends on the ``robustmix`` core only (``robustmix.load_model``, the data sets). The
Python API takes any ``nn.Module`` with [0, 1] inputs::

    from robustmix.attacks import AttackConfig, parse_eps, robustness
    result = robustness(model, x, y, AttackConfig(eps=tuple(parse_eps("1/255,8/255"))))
    for row in result.rows: print(row.attack, row.eps.text, row.robust_acc)

Every attack is a registered one (:mod:`robustmix.attacks.registry`): the built-ins
(:mod:`robustmix.attacks.builtin`) and a user's, added with :func:`register_attack`, an entry point
``robustmix.attacks`` or a path ``package.module:attr``.
"""

from robustmix.attacks import builtin  # noqa: F401 (registers the built-in attacks)
from robustmix.attacks.diagnostics import DiagnosticSettings
from robustmix.attacks.eps import Eps, parse_eps
from robustmix.attacks.gradient import PGDSettings
from robustmix.attacks.guards import AttackError
from robustmix.attacks.registry import Attack, ExampleDraws, parse_attacks, register_attack, registered
from robustmix.attacks.runner import attack_run, transfer_run
from robustmix.attacks.sweep import AttackConfig, robustness

__all__ = ["ATTACKS", "Attack", "AttackConfig", "AttackError", "DiagnosticSettings", "Eps",
           "ExampleDraws", "PGDSettings", "attack_run", "parse_attacks", "parse_eps",
           "register_attack", "registered", "robustness", "transfer_run"]

ATTACKS = registered()   # the built-in attacks' names (registered() also lists plugins')
