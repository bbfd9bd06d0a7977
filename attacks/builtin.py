"""The built-in attacks, registered through the same registry as a user's: each
registration holds all of the attack's facts (kind, strength, cost, report order).

| name | what | kind | passes per example and ε |
|---|---|---|---|
| fgsm | x + ε·sign(∇ CE), one step (L∞) | single-step | 1 |
| pgd | PGD: per-example random starts, early exit, best iterate | iterative | steps × restarts |
| apgd-ce | AutoAttack's APGD on cross-entropy (pyautoattack) | iterative | n_iter |
| apgd-t | AutoAttack's targeted APGD on DLR | iterative | n_iter × targets |
| fab-t | AutoAttack's targeted FAB | iterative | 2 × n_iter × targets (a) |
| square | AutoAttack's Square | gradient-free | queries / 3 (b) |
| apgd | APGD-CE then APGD-T on what stands | ensemble | the sum over its stages |
| autoattack | standard AutoAttack: APGD-CE, APGD-T, FAB-T, Square | ensemble | the same |

(a) a step needs the logits' Jacobian rows of two classes; (b) forwards only, about a
third of a forward and backward each.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from robustmix.attacks import autoattack
from robustmix.attacks.eps import Eps
from robustmix.attacks.gradient import PGDSettings, fgsm, pgd
from robustmix.attacks.registry import STRONG, register_attack

AUTOATTACK = "standard (apgd-ce,apgd-t,fab-t,square)"


def _fgsm(model, x, y, eps, norm, settings, draws):
    return fgsm(model, x, y, eps, norm)


def _pgd(model, x, y, eps, norm, settings, draws):
    return pgd(model, x, y, draws.indices, eps, norm, PGDSettings(**settings), draws.seed)[0]


def _describe_pgd(settings: Mapping[str, Any], eps: Eps, seed: int) -> str:
    return PGDSettings(**settings).describe(eps.value)


def _non_reference(settings: Mapping[str, Any]) -> str:
    changed = {k: v for k, v in settings.items() if autoattack.REFERENCE.get(k) != v}
    return "".join(f";{k}={v}" for k, v in sorted(changed.items()))


def _describer(head: str):
    """Settings text of an AutoAttack-style attack: its parts, any non-reference budget,
    the seed (the reference budget gives the text robustmix always wrote)."""
    def describe(settings: Mapping[str, Any], eps: Eps, seed: int) -> str:
        return f"{head}{_non_reference(settings)};seed={seed}"
    return describe


def _n_iter(settings: Mapping[str, Any]) -> int:
    return int(settings.get("n_iter", autoattack.REFERENCE["n_iter"]))


def _targets(settings: Mapping[str, Any], n_classes: int) -> int:
    return min(int(settings.get("targets", autoattack.REFERENCE["targets"])), n_classes - 1)


register_attack("fgsm", _fgsm, kind="single-step", norms=("linf",), evaluation="FGSM",
                defaults={}, describe=lambda settings, eps, seed: "",
                cost=lambda settings, n_classes: 1, order=10)
register_attack("pgd", _pgd, kind="iterative", evaluation="PGD",
                defaults=dataclasses.asdict(PGDSettings()), describe=_describe_pgd,
                cost=lambda settings, n_classes: settings["steps"] * settings["restarts"],
                order=20)
for _name, _perturb, _kind, _label, _cost, _order in (
        ("apgd-ce", autoattack.apgd_ce, "iterative", "APGD-CE",
         lambda s, k: _n_iter(s), 30),
        ("apgd-t", autoattack.apgd_t, "iterative", "APGD-T",
         lambda s, k: _n_iter(s) * _targets(s, k), 40),
        ("fab-t", autoattack.fab_t, "iterative", "FAB-T",
         lambda s, k: 2 * _n_iter(s) * _targets(s, k), 60),
        ("square", autoattack.square, "gradient-free", "Square",
         lambda s, k: autoattack.SQUARE_QUERIES / 3, 70)):
    register_attack(_name, _perturb, kind=_kind, evaluation=_label,
                    defaults=dict(autoattack.REFERENCE), describe=_describer(_name),
                    cost=_cost, order=_order)
register_attack("apgd", stages=autoattack.COMPONENTS["fast"], evaluation="APGD", strength=STRONG,
                defaults=dict(autoattack.REFERENCE), describe=_describer("apgd-ce,apgd-t"),
                checks=True, order=50)
register_attack("autoattack", stages=autoattack.COMPONENTS["standard"],
                evaluation="standard AutoAttack", strength=4,
                defaults=dict(autoattack.REFERENCE), describe=_describer(AUTOATTACK),
                checks=True, order=80)
