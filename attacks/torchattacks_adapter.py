"""torchattacks' attacks as registered ones: ``--attacks torchattacks:NAME[,KEY=VALUE...]``.

Any class of torchattacks (CW, DeepFool, FAB, Square, EOTPGD, MIFGSM, ...) runs through
the same sweep, guards, worst case, diagnostics and report as the built-in attacks. It
needs the optional extra (``pip install 'robustmix[torchattacks]'``, or ``pip install
--no-deps torchattacks`` to keep its ``requests~=2.25.1`` pin out of the environment:
torchattacks never imports requests).

- KEY=VALUE are the class's own arguments (an unknown one is refused, naming those it has).
- ε is passed as ``eps`` where the class takes one; an attack without a budget (CW,
  DeepFool, ...) is projected onto the ε-ball and [0, 1] afterwards, and its settings
  column says so.
- The norm: ``norm='Linf'``/``'L2'`` where the class takes one; a class with a budget
  but no norm argument is L2 when its name ends in L2, L∞ otherwise; an unbounded one
  (projected) serves either.
- Randomness: torchattacks draws from the global torch RNG, seeded here with the run's
  seed before every batch (so a result can depend on the batch's composition); classes
  with a ``seed`` argument get it too. The sweep restores the global RNG afterwards.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from robustmix.attacks.eps import Eps
from robustmix.attacks.gradient import project
from robustmix.attacks.registry import Attack, register_attack
from robustmix.core.errors import ConfigError
from robustmix.core.extras import require

PREFIX = "torchattacks:"
L2_ONLY = {"EADL1", "EADEN"}
SINGLE_STEP = {"FGSM", "FFGSM", "RFGSM"}
GRADIENT_FREE = {"Square", "OnePixel", "Pixle", "SPSA", "GN", "VANILA"}
FILLED = {"self", "model", "eps", "norm", "seed", "n_classes"}   # set by the adapter


def _module():
    return require("torchattacks", "torchattacks", needed_by="--attacks torchattacks:NAME")


def adapter(name: str) -> Attack:
    """The registered attack for ``torchattacks:NAME`` (registered on first use)."""
    cls_name = name[len(PREFIX):]
    cls = getattr(_module(), cls_name, None)
    if not (inspect.isclass(cls) and cls_name[:1].isupper()):
        raise ConfigError("attacks", f"{name}: torchattacks has no attack {cls_name!r}")
    params = inspect.signature(cls.__init__).parameters
    defaults = {k: p.default for k, p in params.items()
                if k not in FILLED and p.default is not inspect.Parameter.empty}
    bounded = "eps" in params
    if "norm" in params or not bounded:   # an unbounded attack is projected: any norm
        norms = ("linf", "l2")
    else:
        norms = ("l2",) if cls_name in L2_ONLY or cls_name.endswith("L2") else ("linf",)
    kind = "single-step" if cls_name in SINGLE_STEP else \
        "gradient-free" if cls_name in GRADIENT_FREE else "iterative"

    def perturb(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str,
                settings: Mapping[str, Any], draws) -> Tensor:
        kwargs = dict(settings)
        if bounded:
            kwargs["eps"] = eps
        if "norm" in params:
            kwargs["norm"] = "Linf" if norm == "linf" else "L2"
        if "seed" in params:
            kwargs["seed"] = draws.seed
        if "n_classes" in params:
            with torch.no_grad():
                kwargs["n_classes"] = int(model(x[:1]).shape[1])
        torch.manual_seed(draws.seed)
        x_adv = cls(model, **kwargs)(x, y)
        return x_adv if bounded else project(x_adv, x, eps, norm)

    def describe(settings: Mapping[str, Any], eps: Eps, seed: int) -> str:
        given = ";".join(f"{k}={v}" for k, v in sorted(settings.items()))
        return (f"torchattacks {torch_version()} {cls_name}" + (f";{given}" if given else "")
                + ("" if bounded else ";projected onto the ε-ball") + f";seed={seed}")

    return register_attack(name, perturb, kind=kind, norms=norms, defaults=defaults,
                           evaluation=f"torchattacks {cls_name}", describe=describe,
                           replace=True)


def torch_version() -> str:
    return getattr(_module(), "__version__", "?")
