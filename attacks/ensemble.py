"""Ensembles: registered attacks run in turn on the points still standing, resumably.

This is AutoAttack's structure (``run_standard_evaluation``): each stage attacks, in
batches, the points that every earlier stage left standing; a point counts as broken when
a forward pass on its adversarial example misclassifies it. The loop is written here so
that the standing set can be saved after every batch and an interrupted evaluation
resumes where it stopped.

The state file records a fingerprint of what it belongs to (the model's weights, the
examples, the attack, ε, norm, seed, settings and batch size) and the passes spent so
far; a state that does not match, or does not parse, is ignored and the evaluation starts
over, so a stale state can cost time but never change a number.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from robustmix.attacks import autoattack
from robustmix.attacks.guards import check_adversarial
from robustmix.attacks.registry import Attack, ExampleDraws, get
from robustmix.core import runs
from robustmix.core.errors import UsageError


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


def _read_state(path: Path, expected: str, n: int, stages) -> dict[str, Any] | None:
    """The saved state if it belongs to this evaluation and is well formed, else None."""
    try:
        state = runs.read_json(path)
    except UsageError:
        return None
    try:
        ok = (isinstance(state, dict) and state.get("fingerprint") == expected
              and isinstance(state["standing"], list) and len(state["standing"]) == n
              and all(isinstance(v, bool) for v in state["standing"])
              and isinstance(state["done"], list) and set(state["done"]) <= set(stages)
              and state["component"] in (None, *stages)
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
    stages done, the current one's order of points and next batch), the accuracy after
    each stage and the passes spent. With a ``path`` it is restored from the file when
    that belongs to this evaluation, and saved there after every batch."""

    def __init__(self, path: Path | None, n: int, device,
                 passes: Callable[[], tuple[int, int]] | None):
        self.path, self.passes, self.key, self.resumed = path, passes, None, False
        self.standing = torch.ones(n, dtype=torch.bool, device=device)
        self.fields: dict[str, Any] = {"done": [], "component": None, "order": [],
                                       "next_batch": 0, "accuracy": {"clean": 1.0},
                                       "passes": [0, 0]}
        self.start = self.earlier = (0, 0)

    def restore(self, key: str, stages) -> None:
        """Continue from the saved state if it is this evaluation's (``key``) and well formed."""
        self.key = key
        saved = _read_state(self.path, key, self.standing.numel(), stages) \
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

    def batches(self, stage: str, batch_size: int) -> tuple[tuple[Tensor, ...], int]:
        """The batches of points ``stage`` attacks (those standing when it began) and
        the number of them already done."""
        if self.fields["component"] != stage:
            self.fields.update(component=stage, next_batch=0,
                               order=self.standing.nonzero().squeeze(1).tolist())
        order = torch.tensor(self.fields["order"], dtype=torch.long,
                             device=self.standing.device)
        return tuple(b for b in order.split(batch_size) if b.numel()), self.fields["next_batch"]

    def batch_done(self, number: int) -> None:
        self.fields["next_batch"] = number + 1
        self.save()

    def stage_done(self, stage: str) -> None:
        self.fields["done"].append(stage)
        self.fields["accuracy"][stage] = self.standing.float().mean().item()
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


def run_ensemble(model: nn.Module, attack: Attack, x: Tensor, y: Tensor, indices: Tensor,
                 eps: float, norm: str, settings: Mapping[str, Any], *, seed: int,
                 batch_size: int, state_path: Path | None = None,
                 on_batch: Callable[[int], None] | None = None,
                 passes: Callable[[], tuple[int, int]] | None = None
                 ) -> tuple[Tensor, Tensor, list[str], tuple[int, int] | None]:
    """Attack correctly classified points ``x`` (all on the model's device) with the
    ensemble's stages in turn.

    Returns (adversarial examples, broken flags, checks, passes spent). ``on_batch(k)``
    reports progress: k examples done by the current stage, those it skips (broken
    before it runs) included, so the calls add up to N × the number of stages, on a
    resumed evaluation too. With ``state_path`` the standing set is saved after every
    batch and a rerun continues from it; the file is removed when the evaluation
    finishes. ``passes`` reads the model's running (forward, backward) counts; the passes
    spent are then those of the whole evaluation, an interrupted process's included and
    the checks counted once (else None).
    """
    stages = attack.stages
    state = _State(state_path, x.shape[0], x.device, passes)
    x_adv = x.clone()
    if state_path is not None:
        state.restore(fingerprint(model, x, y, attack=attack.name, eps=float(eps), norm=norm,
                                  seed=seed, batch_size=batch_size,
                                  settings=sorted(settings.items())), stages)
    state.start_counting()
    advance = on_batch if on_batch is not None else (lambda k: None)
    with autoattack.captured_checks() as messages:
        if attack.checks:
            autoattack.run_checks(model, x[:batch_size], y[:batch_size], stages)
            if state.resumed:  # the interrupted process counted the checks' passes already
                state.start_counting()
        for stage in stages:
            if stage in state.fields["done"]:
                advance(x.shape[0])
                continue
            _run_stage(get(stage), model, x, y, indices, x_adv, state,
                       (eps, norm, settings, seed, batch_size), advance)
        if attack.checks:
            autoattack.check_square(state.fields["accuracy"])
    total = state.finish()
    return x_adv, ~state.standing, list(messages), total if passes is not None else None


def _run_stage(stage: Attack, model: nn.Module, x: Tensor, y: Tensor, indices: Tensor,
               x_adv: Tensor, state: _State, how: tuple, advance: Callable[[int], None]) -> None:
    """One stage over the batches of points standing when it began, from the batch the
    state has reached; the state is saved and progress reported after each batch."""
    eps, norm, settings, seed, batch_size = how
    batches, first = state.batches(stage.name, batch_size)
    # the points broken before this stage (skipped) and the batches done count as done
    advance(x.shape[0] - sum(batch.numel() for batch in batches[first:]))
    for number in range(first, len(batches)):
        batch = batches[number]
        draws = ExampleDraws(seed, indices[batch.cpu()])
        adv = perturb_stage(stage, model, x[batch], y[batch], eps, norm, settings, draws)
        check_adversarial(adv, x[batch], eps, norm, stage.name)
        with torch.no_grad():
            hit = model(adv).argmax(1) != y[batch]
        x_adv[batch[hit]] = adv[hit].detach()
        state.standing[batch[hit]] = False
        state.batch_done(number)
        advance(batch.numel())
    state.stage_done(stage.name)


def perturb_stage(stage: Attack, model: nn.Module, x: Tensor, y: Tensor, eps: float,
                  norm: str, settings: Mapping[str, Any], draws: ExampleDraws) -> Tensor:
    """One stage's perturb on one batch (a seam the tests replace)."""
    return stage.perturb(model, x, y, eps, norm, settings, draws)
