"""The attack registry: the built-in attacks and the user's travel the same road.

An attack is a function

    perturb(model, x, y, eps, norm, settings, draws) -> x_adv

``model`` is in eval mode on x's device and takes [0, 1] images; ``x`` (B, C, H, W) holds
correctly classified examples and ``y`` their labels; ``eps`` is a float, ``norm``
``"linf"`` or ``"l2"``; ``settings`` the attack's settings (its defaults updated by the
user's); ``draws`` (:class:`ExampleDraws`) the batch's randomness. It returns x_adv of x's
shape. The runner (:mod:`robustmix.attacks.sweep`) gives every registered attack the same guards
(x_adv finite, inside the ε-ball and [0, 1], else the run stops as a bug), the ε-sweep,
the per-example worst case, the attack-failure diagnostics and the report.

An *ensemble* names registered attacks that run in turn on the examples still standing,
as AutoAttack runs its four; its progress is saved after every batch, so an interrupted
evaluation resumes where it stopped.

Attacks are found by name: the built-ins (:mod:`robustmix.attacks.builtin`), those registered with
:func:`register_attack`, and ``torchattacks:NAME`` for torchattacks' classes
(:mod:`robustmix.attacks.torchattacks_adapter`); and, through the plug-in resolver every
plug-in kind shares (:mod:`robustmix.core.plugins`), an entry point of the group
``robustmix.attacks`` or a path ``package.module:attr``, either leading to an :class:`Attack`
or a perturb function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from robustmix.attacks.eps import NORMS, Eps
from robustmix.core import plugins
from robustmix.core.errors import ConfigError, UsageError

KINDS = ("single-step", "iterative", "gradient-free", "ensemble")
ENTRY_POINTS = plugins.ATTACK.group
STRONG = 3        # APGD's strength: an attack at least this strong is "the strong attack"
Perturb = Callable[..., Tensor]
Cost = Callable[[Mapping[str, Any], int], float]   # (settings, n_classes) -> passes per example


@dataclass(frozen=True)
class ExampleDraws:
    """The randomness an attack may use on one batch.

    ``rng(k, *stream)`` is example k's own NumPy generator, seeded from (seed, the example's
    index in the evaluated set, *stream): draws from it do not depend on the batch, its
    order or its size. ``seed`` is for libraries that seed per batch (AutoAttack,
    torchattacks); with those, a result can depend on the batch's composition.
    """

    seed: int
    indices: Tensor          # (B,) positions of the batch's examples in the evaluated set

    def rng(self, k: int, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(self.indices[k]), *stream])

    def uniform(self, shape: tuple[int, ...], *stream: int) -> Tensor:
        """(B, *shape) float32, row k uniform in [−1, 1] from example k's generator."""
        rows = [self.rng(k, *stream).uniform(-1.0, 1.0, size=shape)
                for k in range(len(self.indices))]
        return torch.from_numpy(np.stack(rows)).float() if rows else torch.zeros(0, *shape)


@dataclass(frozen=True)
class Attack:
    """One registered attack."""

    name: str
    perturb: Perturb | None = None          # None for an ensemble
    kind: str = "iterative"                 # KINDS: what the diagnostics compare it with
    norms: tuple[str, ...] = NORMS
    stages: tuple[str, ...] = ()            # an ensemble: registered attacks in turn
    defaults: Mapping[str, Any] | None = None   # None: takes any settings as given
    evaluation: str = ""                    # robustness.csv's name for what stands behind
    strength: int = 2                       # ranks evaluations: 1 single-step .. 4 AutoAttack
    describe: Callable[[Mapping[str, Any], Eps, int], str] | None = None
    checks: bool = False                    # run AutoAttack's own checks first
    cost: Cost | None = None                # forward-and-backward passes per example and ε
    order: int | None = None                # place in the report's tables and figures

    def passes(self, settings: Mapping[str, Any], n_classes: int) -> tuple[float, bool]:
        """Forward-and-backward passes per example at one ε with ``settings``, and whether
        that is known: an ensemble's is the sum over its stages (every example through
        every stage); without a ``cost``, the ``steps`` setting, else 1 (a guess)."""
        if self.stages:
            return sum(get(stage).passes(settings, n_classes)[0] for stage in self.stages), True
        if self.cost is not None:
            return float(self.cost(settings, n_classes)), True
        return float(settings.get("steps", 1)), "steps" in settings

    def settings(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults updated by ``overrides``; where the attack declares its settings
        (``defaults`` not None), an unknown one is a ConfigError."""
        values = dict(self.defaults or {})
        unknown = sorted(set(overrides or {}) - set(values))
        if unknown and self.defaults is not None:
            raise ConfigError("attacks", f"{self.name} has no setting "
                              f"{', '.join(unknown)}; it has {', '.join(values) or 'none'}")
        values.update(overrides or {})
        return values

    def text(self, settings: Mapping[str, Any], eps: Eps, seed: int) -> str:
        """What robustness.csv's ``settings`` column says of this attack at ``eps``."""
        if self.describe is not None:
            return self.describe(settings, eps, seed)
        return ";".join(f"{k}={v}" for k, v in sorted(settings.items()))

    @property
    def label(self) -> str:
        return self.evaluation or self.name


_REGISTRY: dict[str, Attack] = {}


def register_attack(name: str, perturb: Perturb | None = None, *, kind: str = "iterative",
                    norms: tuple[str, ...] = NORMS, stages: tuple[str, ...] = (),
                    defaults: Mapping[str, Any] | None = None, evaluation: str = "",
                    strength: int | None = None, describe=None, checks: bool = False,
                    cost: Cost | None = None, order: int | None = None,
                    replace: bool = False) -> Attack:
    """Register an attack under ``name`` (see the module's contract); returns it.

    ``kind`` is one of single-step, iterative, gradient-free (an ensemble's is
    "ensemble"); the diagnostics expect an iterative attack to break whatever a
    single-step one broke. ``defaults`` declares the settings and their defaults (then
    another setting is refused); None passes any settings through. ``strength`` ranks
    evaluations (default by kind: 1 single-step, 2 iterative or gradient-free, 3 an
    ensemble; :data:`STRONG` and above is the strong attack). ``cost(settings,
    n_classes)`` is the forward-and-backward passes per example at one ε, for the time
    bound (None: the ``steps`` setting, else 1, said to be a guess). ``order`` places the
    attack in the report's tables and figures (None: after the built-ins and the worst
    case, by name). A name taken is a ConfigError unless ``replace``.
    """
    if not isinstance(name, str) or not name or "," in name or "=" in name:
        raise ConfigError("name", f"must be a non-empty text without ',' or '=', got {name!r}")
    if name in _REGISTRY and not replace:
        raise ConfigError("name", f"{name!r} is registered already (replace=True replaces it)")
    if stages:
        kind = "ensemble"
    if kind not in KINDS:
        raise ConfigError("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    if (perturb is None) == (not stages):
        raise ConfigError("perturb", "give a perturb function, or stages for an ensemble")
    if perturb is not None and not callable(perturb):
        raise ConfigError("perturb", f"must be callable, got {type(perturb).__name__}")
    bad = [n for n in norms if n not in NORMS]
    if bad or not norms:
        raise ConfigError("norms", f"must be a non-empty tuple of {', '.join(NORMS)}")
    if cost is not None and not callable(cost):
        raise ConfigError("cost", f"must be callable (settings, n_classes), got {cost!r}")
    if strength is None:
        strength = {"single-step": 1, "iterative": 2, "gradient-free": 2, "ensemble": 3}[kind]
    attack = Attack(name, perturb, kind, tuple(norms), tuple(stages),
                    None if defaults is None else dict(defaults), evaluation, strength,
                    describe, checks, cost, order)
    _REGISTRY[name] = attack
    return attack


def is_strong(attack: Attack | str) -> bool:
    """Whether ``attack`` (a record, or a name :func:`find` knows) counts as the strong
    attack a primary comparison requires: its strength at least APGD's (:data:`STRONG`)."""
    found = find(attack) if isinstance(attack, str) else attack
    return found is not None and found.strength >= STRONG


def find(name: str) -> Attack | None:
    """The attack called ``name`` as :func:`get` finds it, or None where it cannot be found
    (a check's own attack, a plugin no longer installed)."""
    try:
        return get(name)
    except (ConfigError, UsageError, ImportError):
        return None


def registered() -> tuple[str, ...]:
    """The names registered so far (built-ins first, in their order)."""
    _load_entry_points()
    return tuple(_REGISTRY)


def get(name: str) -> Attack:
    """The attack called ``name``: registered, ``torchattacks:NAME``, an entry point's name
    or ``package.module:attr`` (:func:`robustmix.core.plugins.resolve`)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if isinstance(name, str) and name.startswith("torchattacks:"):
        from robustmix.attacks.torchattacks_adapter import adapter  # torchattacks is an optional extra

        return adapter(name)
    return plugins.resolve(plugins.ATTACK, name, _REGISTRY, _adopt,
                           valid=f"{', '.join(_REGISTRY)}, torchattacks:NAME")


def _adopt(target: Any, name: str) -> Attack:
    """A plug-in's object as a registered attack: an :class:`Attack` as it is, a perturb
    function (checked against the module's contract) registered under ``name``."""
    if isinstance(target, Attack):
        _REGISTRY.setdefault(name, target)
        return target
    if not callable(target):
        raise plugins.PluginError(f"is a {type(target).__name__}, not a perturb function or "
                                  "a robustmix.attacks.Attack")
    if not plugins.takes(target, None, None, None, 0.0, "linf", {}, None):
        raise plugins.PluginError("its perturb function must take (model, x, y, eps, norm, "
                                  "settings, draws)")
    return register_attack(name, target, kind=getattr(target, "kind", "iterative"),
                           norms=tuple(getattr(target, "norms", NORMS)),
                           defaults=getattr(target, "defaults", None), replace=True)


_LOADED: list[bool] = []


def _load_entry_points() -> None:
    """Register the attacks that installed packages declare in ``robustmix.attacks``."""
    if _LOADED:
        return
    _LOADED.append(True)
    for name in plugins.entry_points(ENTRY_POINTS):
        if name not in _REGISTRY:
            get(name)


def parse_attacks(text: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    """``"fgsm,pgd,torchattacks:CW,c=1,steps=50"`` -> ((name, settings), ...).

    Items with ``=`` are settings of the attack before them; values are read as int,
    float, true/false or else text.
    """
    specs: list[tuple[str, dict[str, Any]]] = []
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            raise ConfigError("attacks", f"has an empty item in {text!r}")
        if "=" in item:
            if not specs:
                raise ConfigError("attacks", f"setting {item!r} comes before any attack")
            key, _, value = item.partition("=")
            specs[-1][1][key.strip()] = _value(value.strip())
        else:
            specs.append((item, {}))
    return tuple(specs)


def _value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
