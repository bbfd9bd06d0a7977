"""AutoAttack (the reference algorithms, packaged as ``pyautoattack``), resumable, checks surfaced.

``standard`` runs APGD-CE, APGD-T, FAB-T and Square with the reference settings (the
parameters of ``AutoAttack(version='standard')``); ``fast`` runs APGD-CE and APGD-T only.
As in the reference, each attack runs on the points still standing after the previous
ones, in batches, each batch seeded with the fixed seed. The loop over components and
batches is written here (it mirrors ``run_standard_evaluation``) so that the standing set
can be saved after every batch and an interrupted evaluation resumes where it stopped;
pyautoattack's own state file is saved only per attack and its resume path is not used.

The state file records a fingerprint of what it belongs to (the model's weights, the
examples, ε, norm, seed, version, batch size and classes) and the passes spent so far; a
state that does not match, or does not parse, is ignored and the evaluation starts over,
so a stale state can cost time but never change a number.

AutoAttack's checks (randomized model, probabilities instead of logits, a dynamic
defense, too few classes for the targeted attacks, Square succeeding where the gradient
attacks failed) are captured from its ``auto-attack`` logger and returned, so they reach
the printed table and the CSV.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from robustmix.core import runs
from robustmix.core.errors import UsageError

COMPONENTS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
              "fast": ("apgd-ce", "apgd-t")}


@contextmanager
def captured_checks() -> Iterator[list[str]]:
    """Collect the warnings of pyautoattack's ``auto-attack`` logger while active."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage().split(" See flags_doc.md")[0].strip()
            if text not in messages:
                messages.append(text)

    logger = logging.getLogger("auto-attack")
    handler = Collect(level=logging.WARNING)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def _build(model: nn.Module, eps: float, norm: str, seed: int, device, n_classes: int):
    # here: pyautoattack takes about 2 s to import and only AutoAttack runs need it
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm="Linf" if norm == "linf" else "L2", eps=eps,
                           version="standard", seed=seed, device=device)
    # The reference uses 9 target classes; with fewer classes that would index past the
    # logits, so use all the other classes (the too-few-classes check still reports it).
    targets = min(9, n_classes - 1)
    adversary.apgd_targeted.n_target_classes = targets
    adversary.fab.n_target_classes = targets
    return adversary


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


def _run_checks(model: nn.Module, x: Tensor, y: Tensor, components) -> None:
    """AutoAttack's checks on the first batch, as ``run_standard_evaluation`` runs them."""
    from pyautoattack import checks  # about 2 s to import; only AutoAttack runs need it

    logger = logging.getLogger("auto-attack")
    checks.check_randomized(model, x, y, bs=x.shape[0], logger=logger)
    n_classes = checks.check_range_output(model, x, logger=logger)
    checks.check_dynamic(model, x, False, logger=logger)
    checks.check_n_classes(n_classes, list(components), 9, 9, logger=logger)


def fingerprint(model: nn.Module, x: Tensor, y: Tensor, **settings: Any) -> str:
    """A digest of the weights, the examples and the settings an evaluation state belongs to."""
    digest = hashlib.sha256(repr(sorted(settings.items())).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    for tensor in (x, y):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _read_state(path: Path, expected: str, n: int, components) -> dict[str, Any] | None:
    """The saved state if it belongs to this evaluation and is well formed, else None."""
    try:
        state = runs.read_json(path)
    except UsageError:
        return None
    try:
        ok = (isinstance(state, dict) and state.get("fingerprint") == expected
              and isinstance(state["standing"], list) and len(state["standing"]) == n
              and all(isinstance(v, bool) for v in state["standing"])
              and isinstance(state["done"], list) and set(state["done"]) <= set(components)
              and state["component"] in (None, *components)
              and isinstance(state["order"], list)
              and all(isinstance(i, int) and 0 <= i < n for i in state["order"])
              and isinstance(state["next_batch"], int) and state["next_batch"] >= 0
              and isinstance(state["accuracy"], dict)
              and isinstance(state["passes"], list) and len(state["passes"]) == 2
              and all(isinstance(v, int) and v >= 0 for v in state["passes"]))
    except (KeyError, TypeError):
        return None
    return state if ok else None


def autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, *,
               version: str = "standard", seed: int = 0, batch_size: int = 250,
               n_classes: int, state_path: Path | None = None,
               on_batch: Callable[[int], None] | None = None,
               passes: Callable[[], tuple[int, int]] | None = None
               ) -> tuple[Tensor, Tensor, list[str], tuple[int, int] | None]:
    """Attack correctly classified points ``x`` (all on the model's device).

    Returns (adversarial examples, broken flags, checks, passes spent). ``on_batch(k)``
    reports progress: k examples done by the current component, the examples it skips
    (broken before it runs) included, so the calls add up to N × the number of components,
    on a resumed evaluation too. With
    ``state_path`` the standing set is saved after every batch and a rerun continues from
    it; the state file is removed when the evaluation finishes. ``passes`` reads the
    model's running (forward, backward) counts; the passes spent are then those of the
    whole evaluation, an interrupted process's included and the checks counted once,
    so a resumed evaluation reports what an uninterrupted one would (else None).
    """
    from pyautoattack import checks  # about 2 s to import; only AutoAttack runs need it

    components = COMPONENTS[version]
    adversary = _build(model, eps, norm, seed, x.device, n_classes)
    standing = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    x_adv = x.clone()
    key, resumed = None, False
    state = {"done": [], "component": None, "order": [], "next_batch": 0,
             "accuracy": {"clean": 1.0}, "passes": [0, 0]}
    if state_path is not None:
        key = fingerprint(model, x, y, eps=float(eps), norm=norm, seed=seed, version=version,
                          batch_size=batch_size, n_classes=n_classes)
        saved = _read_state(state_path, key, x.shape[0], components) \
            if state_path.exists() else None
        if saved is not None:
            state, resumed = saved, True
            standing = torch.tensor(state.pop("standing"), dtype=torch.bool, device=x.device)
    start = passes() if passes is not None else (0, 0)
    earlier = tuple(state["passes"])

    def spent() -> tuple[int, int]:
        now = passes() if passes is not None else (0, 0)
        return (earlier[0] + now[0] - start[0], earlier[1] + now[1] - start[1])

    def save() -> None:
        if state_path is not None:
            state["passes"] = list(spent())
            runs.write_json(state_path, {**state, "fingerprint": key,
                                         "standing": standing.tolist()})

    with captured_checks() as messages:
        _run_checks(model, x[:batch_size], y[:batch_size], components)
        if resumed:  # the interrupted process counted the checks' passes already
            start = passes() if passes is not None else (0, 0)
        advance = on_batch if on_batch is not None else (lambda k: None)
        for component in components:
            if component in state["done"]:
                advance(x.shape[0])
                continue
            if state["component"] != component:
                state.update(component=component, next_batch=0,
                             order=standing.nonzero().squeeze(1).tolist())
            order = torch.tensor(state["order"], dtype=torch.long, device=x.device)
            batches = order.split(batch_size)
            advance(x.shape[0] - order.numel()  # broken before this component: skipped
                    + sum(batch.numel() for batch in batches[:state["next_batch"]]))
            for number in range(state["next_batch"], len(batches)):
                batch = batches[number]
                adv = _perturb(adversary, component, x[batch], y[batch])
                with torch.no_grad():
                    hit = model(adv).argmax(1) != y[batch]
                x_adv[batch[hit]] = adv[hit].detach()
                standing[batch[hit]] = False
                state["next_batch"] = number + 1
                save()
                advance(batch.numel())
            state["done"].append(component)
            state["accuracy"][component] = standing.float().mean().item()
            save()
        checks.check_square_sr(state["accuracy"], logger=logging.getLogger("auto-attack"))
    total = spent()
    if state_path is not None:
        state_path.unlink(missing_ok=True)
    return x_adv, ~standing, list(messages), total if passes is not None else None
