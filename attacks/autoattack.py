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


class _State:
    """An evaluation's resumable state: the standing set, where the loop stands (the
    components done, the current one's order of points and next batch), the accuracy
    after each component and the passes spent. With a ``path`` it is restored from the
    file when that belongs to this evaluation, and saved there after every batch."""

    def __init__(self, path: Path | None, n: int, device,
                 passes: Callable[[], tuple[int, int]] | None):
        self.path, self.passes, self.key, self.resumed = path, passes, None, False
        self.standing = torch.ones(n, dtype=torch.bool, device=device)
        self.fields: dict[str, Any] = {"done": [], "component": None, "order": [],
                                       "next_batch": 0, "accuracy": {"clean": 1.0},
                                       "passes": [0, 0]}
        self.start = self.earlier = (0, 0)

    def restore(self, key: str, components) -> None:
        """Continue from the saved state if it is this evaluation's (``key``) and well formed."""
        self.key = key
        saved = _read_state(self.path, key, self.standing.numel(), components) \
            if self.path.exists() else None
        if saved is not None:
            self.fields, self.resumed = saved, True
            self.standing = torch.tensor(saved.pop("standing"), dtype=torch.bool,
                                         device=self.standing.device)

    def start_counting(self) -> None:
        """Passes from now on count, on top of those the saved state had spent."""
        self.earlier = tuple(self.fields["passes"])
        self.start = self._now()

    def _now(self) -> tuple[int, int]:
        return self.passes() if self.passes is not None else (0, 0)

    def spent(self) -> tuple[int, int]:
        now = self._now()
        return (self.earlier[0] + now[0] - self.start[0],
                self.earlier[1] + now[1] - self.start[1])

    def batches(self, component: str, batch_size: int) -> tuple[tuple[Tensor, ...], int]:
        """The batches of points ``component`` attacks (those standing when it began) and
        the number of them already done."""
        if self.fields["component"] != component:
            self.fields.update(component=component, next_batch=0,
                               order=self.standing.nonzero().squeeze(1).tolist())
        order = torch.tensor(self.fields["order"], dtype=torch.long,
                             device=self.standing.device)
        return order.split(batch_size), self.fields["next_batch"]

    def batch_done(self, number: int) -> None:
        self.fields["next_batch"] = number + 1
        self.save()

    def component_done(self, component: str) -> None:
        self.fields["done"].append(component)
        self.fields["accuracy"][component] = self.standing.float().mean().item()
        self.save()

    def save(self) -> None:
        if self.path is not None:
            self.fields["passes"] = list(self.spent())
            runs.write_json(self.path, {**self.fields, "fingerprint": self.key,
                                        "standing": self.standing.tolist()})

    def finish(self) -> tuple[int, int]:
        """The passes spent by the whole evaluation; the state file is removed."""
        total = self.spent()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        return total


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
    state = _State(state_path, x.shape[0], x.device, passes)
    x_adv = x.clone()
    if state_path is not None:
        state.restore(fingerprint(model, x, y, eps=float(eps), norm=norm, seed=seed,
                                  version=version, batch_size=batch_size,
                                  n_classes=n_classes), components)
    state.start_counting()
    advance = on_batch if on_batch is not None else (lambda k: None)
    with captured_checks() as messages:
        _run_checks(model, x[:batch_size], y[:batch_size], components)
        if state.resumed:  # the interrupted process counted the checks' passes already
            state.start_counting()
        for component in components:
            if component in state.fields["done"]:
                advance(x.shape[0])
                continue
            _run_component(adversary, model, component, x, y, x_adv, state, batch_size,
                           advance)
        checks.check_square_sr(state.fields["accuracy"], logger=logging.getLogger("auto-attack"))
    total = state.finish()
    return x_adv, ~state.standing, list(messages), total if passes is not None else None


def _run_component(adversary, model: nn.Module, component: str, x: Tensor, y: Tensor,
                   x_adv: Tensor, state: _State, batch_size: int,
                   advance: Callable[[int], None]) -> None:
    """One component over the batches of points standing when it began, from the batch
    the state has reached; the state is saved and progress reported after each batch."""
    batches, first = state.batches(component, batch_size)
    # the points broken before this component (skipped) and the batches done count as done
    advance(x.shape[0] - sum(batch.numel() for batch in batches[first:]))
    for number in range(first, len(batches)):
        batch = batches[number]
        _attack_batch(adversary, model, component, x, y, batch, x_adv, state.standing)
        state.batch_done(number)
        advance(batch.numel())
    state.component_done(component)


def _attack_batch(adversary, model: nn.Module, component: str, x: Tensor, y: Tensor,
                  batch: Tensor, x_adv: Tensor, standing: Tensor) -> None:
    """Attack the points ``batch`` indexes; those it breaks get their adversarial example
    in ``x_adv`` and stop standing."""
    adv = _perturb(adversary, component, x[batch], y[batch])
    with torch.no_grad():
        hit = model(adv).argmax(1) != y[batch]
    x_adv[batch[hit]] = adv[hit].detach()
    standing[batch[hit]] = False
