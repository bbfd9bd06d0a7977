"""AutoAttack's components (the reference algorithms, packaged as ``pyautoattack``) as
registered attacks, and AutoAttack's own checks, surfaced.

Each component is a perturb function of the registry's contract and runs one batch
exactly as ``AutoAttack(version='standard').run_standard_evaluation`` dispatches it:
APGD-CE (cross-entropy, 100 iterations, 1 restart), APGD-T (targeted DLR, 100
iterations, the 9 most likely other classes in turn), FAB-T (targeted, 9 classes) and
Square (5,000 queries, p_init 0.8), every batch seeded with the fixed seed. ``n_iter``
and ``targets`` can be changed (the settings column then says so). The ensembles of
:mod:`robustmix.attacks.builtin` run them in turn on the points still standing (:mod:`robustmix.attacks.ensemble`).

AutoAttack's checks (randomized model, probabilities instead of logits, a dynamic
defense, too few classes for the targeted attacks, zero gradients of the DLR loss, Square
succeeding where the gradient attacks failed) are captured from its ``auto-attack``
logger and returned, so they reach the printed table, the CSV and the diagnostics.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from torch import Tensor, nn

COMPONENTS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
              "fast": ("apgd-ce", "apgd-t")}
REFERENCE = {"n_iter": 100, "targets": 9}    # the standard version's settings
SQUARE_QUERIES = 5000                         # Square's queries in the standard version
LOGGER = "auto-attack"


@contextmanager
def captured_checks() -> Iterator[list[str]]:
    """Collect the warnings of pyautoattack's ``auto-attack`` logger while active."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage().split(" See flags_doc.md")[0].strip()
            if text not in messages:
                messages.append(text)

    logger = logging.getLogger(LOGGER)
    handler = Collect(level=logging.WARNING)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def _build(model: nn.Module, eps: float, norm: str, seed: int, device, n_classes: int,
           settings: Mapping[str, Any]):
    # here: pyautoattack takes about 2 s to import and only AutoAttack runs need it
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm="Linf" if norm == "linf" else "L2", eps=eps,
                           version="standard", seed=seed, device=device)
    # With fewer classes than the reference's 9 targets + 1 that would index past the
    # logits: use all the other classes (the too-few-classes check still reports it).
    targets = min(int(settings.get("targets", REFERENCE["targets"])), n_classes - 1)
    adversary.apgd_targeted.n_target_classes = targets
    adversary.fab.n_target_classes = targets
    n_iter = int(settings.get("n_iter", REFERENCE["n_iter"]))
    if n_iter != REFERENCE["n_iter"]:
        for attack in (adversary.apgd, adversary.apgd_targeted):
            # the step-size checkpoints, as APGDAttack.__init__ derives them from n_iter
            attack.n_iter = attack.n_iter_orig = n_iter
            attack.n_iter_2 = max(int(0.22 * n_iter), 1)
            attack.n_iter_min = max(int(0.06 * n_iter), 1)
            attack.size_decr = max(int(0.03 * n_iter), 1)
    return adversary


def _classes(model: nn.Module, x: Tensor) -> int:
    return int(model(x[:1]).shape[1])


def _component(name: str):
    def perturb(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str,
                settings: Mapping[str, Any], draws) -> Tensor:
        classes = _classes(model, x)
        if name == "apgd-t" and classes < 4:
            # the targeted DLR loss needs the 4 largest logits: with 3 classes or fewer
            # APGD-T cannot run (AutoAttack's class check says so in the checks column)
            return x.clone()
        adversary = _build(model, eps, norm, draws.seed, x.device, classes, settings)
        return _perturb(adversary, name, x, y)
    perturb.__name__ = name.replace("-", "_")
    return perturb


def _perturb(adversary, component: str, x: Tensor, y: Tensor) -> Tensor:
    """One component on one batch, exactly as ``run_standard_evaluation`` dispatches it."""
    if component == "apgd-ce":
        adversary.apgd.loss = "ce"
        adversary.apgd.seed = adversary.get_seed()
        return adversary.apgd.perturb(x, y)
    if component == "apgd-t":
        adversary.apgd_targeted.seed = adversary.get_seed()
        return adversary.apgd_targeted.perturb(x, y)
    if component == "fab-t":
        adversary.fab.targeted = True
        adversary.fab.n_restarts = 1
        adversary.fab.seed = adversary.get_seed()
        return adversary.fab.perturb(x, y)
    if component == "square":
        adversary.square.seed = adversary.get_seed()
        return adversary.square.perturb(x, y)
    raise ValueError(f"unknown AutoAttack component {component}")


apgd_ce, apgd_t, fab_t, square = (_component(name) for name in COMPONENTS["standard"])


def run_checks(model: nn.Module, x: Tensor, y: Tensor, stages) -> None:
    """AutoAttack's checks on the first batch, as ``run_standard_evaluation`` runs them."""
    from pyautoattack import checks  # about 2 s to import; only AutoAttack runs need it

    logger = logging.getLogger(LOGGER)
    checks.check_randomized(model, x, y, bs=x.shape[0], logger=logger)
    n_classes = checks.check_range_output(model, x, logger=logger)
    checks.check_dynamic(model, x, False, logger=logger)
    checks.check_n_classes(n_classes, list(stages), 9, 9, logger=logger)


def check_square(accuracy: dict[str, float]) -> None:
    """AutoAttack's last check: Square must not break what the gradient attacks did not."""
    from pyautoattack import checks

    checks.check_square_sr(accuracy, logger=logging.getLogger(LOGGER))
