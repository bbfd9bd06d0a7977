"""The built-in attacks, registered through the same registry as a user's.

| name | what | kind |
|---|---|---|
| fgsm | x + ε·sign(∇ CE), one step (L∞) | single-step |
| pgd | PGD with per-example random starts, early exit, best iterate | iterative |
| apgd-ce, apgd-t, fab-t, square | AutoAttack's components (pyautoattack) | iterative / gradient-free |
| apgd | APGD-CE then APGD-T on what stands: AutoAttack's gradient attacks | ensemble |
| autoattack | standard AutoAttack: APGD-CE, APGD-T, FAB-T, Square | ensemble |
| autoattack-fast | the former name of ``apgd`` (old robustness.csv files use it) | ensemble |
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


register_attack("fgsm", _fgsm, kind="single-step", norms=("linf",), evaluation="FGSM",
                defaults={}, describe=lambda settings, eps, seed: "")
register_attack("pgd", _pgd, kind="iterative", evaluation="PGD",
                defaults=dataclasses.asdict(PGDSettings()), describe=_describe_pgd)
for _name, _perturb, _kind, _label in (
        ("apgd-ce", autoattack.apgd_ce, "iterative", "APGD-CE"),
        ("apgd-t", autoattack.apgd_t, "iterative", "APGD-T"),
        ("fab-t", autoattack.fab_t, "iterative", "FAB-T"),
        ("square", autoattack.square, "gradient-free", "Square")):
    register_attack(_name, _perturb, kind=_kind, evaluation=_label,
                    defaults=dict(autoattack.REFERENCE), describe=_describer(_name))
register_attack("apgd", stages=autoattack.COMPONENTS["fast"], evaluation="APGD", strength=STRONG,
                defaults=dict(autoattack.REFERENCE), describe=_describer("apgd-ce,apgd-t"),
                checks=True)
register_attack("autoattack", stages=autoattack.COMPONENTS["standard"],
                evaluation="standard AutoAttack", strength=4,
                defaults=dict(autoattack.REFERENCE), describe=_describer(AUTOATTACK),
                checks=True)
register_attack("autoattack-fast", stages=autoattack.COMPONENTS["fast"], evaluation="APGD",
                defaults=dict(autoattack.REFERENCE), describe=_describer("apgd-ce,apgd-t"),
                checks=True)
