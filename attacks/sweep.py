"""The ε-sweep: clean accuracy, then each attack over an ascending ε grid, never twice.

For each attack the sweep keeps the set of examples still standing. Misclassified clean
examples are never attacked; at each ε only the examples standing at the previous ε are
attacked, because the ε-balls nest: an example broken at a smaller ε is broken at every
larger one. For attacks whose randomness is per example (FGSM, PGD, any attack drawing
from :class:`~robustmix.attacks.registry.ExampleDraws`), this is exact: the examples counted robust
at ε are those the same attack at ε alone leaves standing, minus those already broken at
a smaller ε. A ``worst-case`` row per ε counts the examples that every attack left
standing.

Every attack comes from the registry (:mod:`robustmix.attacks.registry`) and passes the same guards
(:mod:`robustmix.attacks.guards`); every row carries the model checks in its ``checks`` column.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustmix.attacks.eps import Eps, check_norm
from robustmix.attacks import table
from robustmix.attacks.ensemble import run_ensemble
from robustmix.attacks.gradient import PassCounter, PGDSettings
from robustmix.attacks.guards import check_adversarial, check_rows, model_checks
from robustmix.attacks.registry import Attack, ExampleDraws, get
from robustmix.attacks.worst_case import WORST, describe as worst_settings
from robustmix.core import checks as guards, threads
from robustmix.core.errors import ConfigError

DEFAULT_ATTACKS = ("fgsm", "pgd", "apgd")


@dataclass(frozen=True)
class AttackConfig:
    """What to run: attacks (registered names), the ε grid, the norm and the settings.

    ``options`` maps an attack's name to its settings (``{"apgd": {"targets": 3}}``);
    PGD's also come from ``pgd``. ``eps`` takes Eps, floats or texts like "8/255".
    """

    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    eps: tuple[Eps, ...] = (Eps("8/255"),)
    norm: str = "linf"
    pgd: PGDSettings = field(default_factory=PGDSettings)
    batch_size: int = 256
    seed: int = 0
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.eps, (tuple, list)):
            object.__setattr__(self, "eps", tuple(Eps.of(e) for e in self.eps))
        if isinstance(self.attacks, list):
            object.__setattr__(self, "attacks", tuple(self.attacks))

    def validate(self) -> None:
        check_norm(self.norm)
        if not isinstance(self.attacks, tuple) or not self.attacks:
            raise ConfigError("attacks", "must name at least one attack")
        for name in self.attacks:
            attack = get(name)
            if self.norm not in attack.norms:
                spelled = "/".join({"linf": "L∞", "l2": "L2"}[n] for n in attack.norms)
                raise ConfigError("attacks", f"{name} is an {spelled} attack; with norm "
                                  f"{self.norm} use pgd or apgd")
            self.settings_for(name)
        stray = sorted(set(self.options) - set(self.attacks))
        if stray:
            raise ConfigError("options", f"names {', '.join(stray)}, not among the attacks")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.pgd.steps < 1 or self.pgd.restarts < 1:
            raise ConfigError("pgd.steps" if self.pgd.steps < 1 else "pgd.restarts", "must be >= 1")
        if self.pgd.step_size is not None and not self.pgd.step_size > 0:
            raise ConfigError("pgd.step_size", f"must be > 0, got {self.pgd.step_size}")
        if not self.eps or list(self.eps) != sorted(set(self.eps)):
            raise ConfigError("eps", "must be distinct budgets sorted ascending")

    def settings_for(self, name: str) -> dict[str, Any]:
        """The settings attack ``name`` runs with (its defaults, then the user's)."""
        overrides = dict(self.options.get(name, {}))
        if name == "pgd":
            overrides = {**dataclasses.asdict(self.pgd), **overrides}
        return get(name).settings(overrides)

    def settings(self, attack: str, eps) -> str:
        """robustness.csv's ``settings`` text of ``attack`` at ``eps``."""
        if attack == WORST:
            return worst_settings(list(self.attacks))
        return get(attack).text(self.settings_for(attack), Eps.of(eps), self.seed)


@dataclass
class Row:
    attack: str
    eps: Eps
    settings: str
    n_examples: int
    n_attacked: int
    clean_acc: float
    robust_acc: float
    seconds: float
    forward_passes: int
    backward_passes: int
    checks: list[str]
    evaluation: str = ""
    diagnostics: str = ""

    def as_csv(self, run: str, norm: str) -> dict:
        """The row as robustness.csv holds it."""
        return table.as_csv(self, run, norm)


class ByEps(dict):
    """A dict keyed by (attack, Eps) that also answers (attack, float ε)."""

    def __getitem__(self, key):
        return super().__getitem__(_eps_key(key))

    def __contains__(self, key):
        return super().__contains__(_eps_key(key))

    def get(self, key, default=None):
        return super().get(_eps_key(key), default)


def _eps_key(key):
    if isinstance(key, tuple) and len(key) == 2 and not isinstance(key[1], Eps):
        return key[0], Eps.of(key[1])
    return key


@dataclass
class Result:
    rows: list[Row]
    clean: Tensor              # (N,) bool: correctly classified
    robust: ByEps              # (attack, ε) -> (N,) bool standing


def robustness(model: nn.Module, x: Tensor, y: Tensor, config: AttackConfig, *,
               indices: Tensor | None = None, device="cpu", n_classes: int | None = None,
               state_dir: Path | None = None, state_tag: str = "",
               progress: bool = False) -> Result:
    """Clean and robust accuracy of ``model`` (any module taking [0, 1] inputs) on (x, y).

    ``indices`` identify the examples (their positions in the full test set; default
    0..N−1); per-example random draws come from them and the seed, so FGSM's and PGD's
    results do not depend on the batch size, the order, or which other examples are
    attacked, up to float rounding (CPU and GPU kernels sum in an order that depends on
    the batch shape, which can flip an example whose margin is within rounding of zero).
    x and y may live on the CPU; batches move to ``device``.

    ``x`` is a 4-D (N, C, H, W) tensor, N >= 1: uint8 images in 0..255 (as
    ``load_dataset(name).tensors("test")`` gives them) are converted to float32 in [0, 1]
    (x.float() / 255); floating images must be finite and in [0, 1] already, and are cast
    to the dtype of the model's parameters. ``y`` is a 1-D integer tensor of N labels in
    [0, K), K the number of the model's outputs (``n_classes`` where given). Anything else
    raises :class:`~robustmix.core.errors.ConfigError` naming the argument (a TypeError
    for a non-tensor).
    """
    config.validate()
    # The input checks run once per call, not per batch: O(N) reductions over x and y
    # (one host synchronization each), at most the cost of one forward pass over x.
    x = _checked_images(model, x, device)
    indices = torch.arange(x.shape[0]) if indices is None else indices
    rows: list[Row] = []
    robust = ByEps()
    with eval_mode_and_rng(model):
        counter = PassCounter(model)
        y, n_classes = _checked_labels(counter, x, y, n_classes, device)
        clean = _predict(counter, x, config.batch_size, device) == y.cpu()
        notes = model_checks(model, x[:config.batch_size], device)
        sweep = _Sweep(counter, x, y, indices, config, device, state_dir, state_tag, progress)
        for name in config.attacks:
            rows += sweep.run(get(name), clean, notes, robust)
        rows += worst_rows(rows, robust, clean, config.eps, notes)
    check_rows(rows)
    return Result(rows, clean, robust)


@dataclass
class _Sweep:
    """One attack over the ε grid, on the examples still standing (see the module)."""

    model: PassCounter
    x: Tensor
    y: Tensor
    indices: Tensor
    config: AttackConfig
    device: Any
    state_dir: Path | None
    state_tag: str
    progress: bool

    def run(self, attack: Attack, clean: Tensor, notes: list[str], robust: ByEps) -> list[Row]:
        settings = self.config.settings_for(attack.name)
        standing, rows = clean.clone(), []
        clean_acc = clean.float().mean().item() if clean.numel() else 0.0
        for eps in self.config.eps:
            threads.recheck(f"{attack.name} {eps.text}")   # a neighbour may have come or gone
            targets = standing.nonzero().squeeze(1)
            start = time.perf_counter()
            before = (self.model.forwards, self.model.backwards)
            bar = _bar(attack, eps, targets.numel(), self.progress)
            broken, checks, spent = self.attack(attack, settings, targets, eps, bar.update)
            bar.close()
            standing[targets[broken]] = False
            robust[(attack.name, eps)] = standing.clone()
            if spent is None:
                spent = (self.model.forwards - before[0], self.model.backwards - before[1])
            rows.append(Row(attack.name, eps, self.config.settings(attack.name, eps),
                            clean.numel(), targets.numel(), clean_acc,
                            standing.float().mean().item(), time.perf_counter() - start,
                            spent[0], spent[1], notes + [c for c in checks if c not in notes],
                            attack.label))
        return rows

    def attack(self, attack: Attack, settings: dict, targets: Tensor, eps: Eps, advance
               ) -> tuple[Tensor, list[str], tuple[int, int] | None]:
        """Attack the examples ``targets``; returns which of them broke, the checks raised,
        and the (forward, backward) passes spent where they differ from what this process
        counts (an ensemble resumed from its state adds those of the interrupted process)."""
        broken = torch.zeros(targets.numel(), dtype=torch.bool)
        if targets.numel() == 0:
            return broken, [], None
        if attack.stages:
            x_t, y_t = self.x[targets].to(self.device), self.y[targets].to(self.device)
            _, hit, checks, spent = run_ensemble(
                self.model, attack, x_t, y_t, self.indices[targets], eps.value,
                self.config.norm, settings, seed=self.config.seed,
                batch_size=self.config.batch_size, state_path=self.state_path(attack, eps),
                on_batch=advance, passes=lambda: (self.model.forwards, self.model.backwards))
            return hit.cpu(), checks, spent
        for chunk in torch.arange(targets.numel()).split(self.config.batch_size):
            batch = targets[chunk]
            xb, yb = self.x[batch].to(self.device), self.y[batch].to(self.device)
            draws = ExampleDraws(self.config.seed, self.indices[batch])
            x_adv = attack.perturb(self.model, xb, yb, eps.value, self.config.norm, settings,
                                   draws)
            check_adversarial(x_adv, xb, eps.value, self.config.norm, attack.name)
            with torch.no_grad():
                broken[chunk] = (self.model(x_adv).argmax(1) != yb).cpu()
            advance(batch.numel())
        return broken, [], None

    def state_path(self, attack: Attack, eps: Eps) -> Path | None:
        if self.state_dir is None:
            return None
        key = (f"{attack.name}-{self.config.norm}-{eps.csv_value()}-seed{self.config.seed}"
               f"-n{self.x.shape[0]}{self.state_tag}")
        return Path(self.state_dir) / f"{key.replace('/', '_').replace(':', '_')}.json"


def worst_rows(rows: list[Row], robust: ByEps, clean: Tensor, grid, notes: list[str]
               ) -> list[Row]:
    """Per ε, the examples that stood against every attack: a row each."""
    clean_acc = clean.float().mean().item() if clean.numel() else 0.0
    result = []
    for eps in grid:
        here = [r for r in rows if r.eps == eps and r.attack != WORST]
        worst = clean.clone()
        for row in here:
            worst &= robust[(row.attack, eps)]
        robust[(WORST, eps)] = worst
        result.append(Row(WORST, eps, worst_settings([r.attack for r in here]),
                          clean.numel(), int(clean.sum()), clean_acc,
                          worst.float().mean().item(), 0.0, 0, 0,
                          notes + sorted({c for r in here for c in r.checks} - set(notes)),
                          worst_label([get(r.attack) for r in here])))
    return result


def worst_label(attacks: list[Attack]) -> str:
    """What a worst-case row's evaluation column says: the attacks behind it, strongest first."""
    ordered = sorted(attacks, key=lambda a: -a.strength)
    return "worst of " + ", ".join(dict.fromkeys(a.label for a in ordered))


@contextmanager
def eval_mode_and_rng(model: nn.Module) -> Iterator[None]:
    """Eval mode during the attack, the former mode after; global RNG states untouched.

    torchattacks and AutoAttack reseed the global torch RNG inside their attacks.
    """
    was_training = model.training
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _predict(model: nn.Module, x: Tensor, batch_size: int, device) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(chunk.to(device)).argmax(1).cpu()
                          for chunk in x.split(batch_size)]) if len(x) else torch.zeros(0)


def _checked_labels(model: nn.Module, x: Tensor, y: Tensor, n_classes: int | None,
                    device) -> tuple[Tensor, int]:
    """``y`` checked against K classes; K from one forward on the first example if not given."""
    if n_classes is None:
        with torch.no_grad():  # the model is in eval mode here
            n_classes = model(x[:1].to(device)).shape[1]
    # labels of any integer type are accepted; the losses want int64
    return guards.class_labels("y", y, x.shape[0], n_classes).long(), n_classes


def _bar(attack: Attack, eps: Eps, n_targets: int, progress: bool):
    """The progress bar of one attack at one ε (one tick per example and stage)."""
    parts = max(1, len(attack.stages))
    return tqdm(total=n_targets * parts, leave=False, disable=not progress, unit="ex",
                desc=f"{attack.name} ε={eps.text}" + (f" ({parts} attacks in turn)"
                                                      if parts > 1 else ""))


def _checked_images(model: nn.Module, x, device) -> Tensor:
    """``x`` checked (see :func:`robustness`) and as float images of the model's dtype; the
    model must already be on ``device`` (x moves there batch by batch)."""
    x = guards.images("x", x)
    param = next(model.parameters(), None)
    if param is not None:
        if param.device.type != torch.device(device).type:
            raise ConfigError("device", f"must be where the model is ({param.device}), "
                                        f"got {device}: move the model with model.to(device)")
        if param.dtype.is_floating_point and x.dtype != param.dtype:
            x = x.to(param.dtype)
    return x
