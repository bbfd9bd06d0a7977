"""How long a study's steps will take, said before the first one, and set beside what they took.

From one measured pass per model shape: :func:`robustmix.attacks.plan.seconds_per_pass`
(a forward and backward pass, the fastest of three after a warm-up) on an untrained model
of the run's architecture, at its image size, number of classes and batch size. Untrained
weights cost what trained ones do; the data set is loaded once per shape for its sizes.

- **Training: about** epochs × (n_train × passes + (n_test + n_holdout) / 3) × seconds
  per example, with 2 passes an example for a method with a saliency pass (PuzzleMix) and
  1 for the others, and a third of a pass for each example evaluated after every epoch. An estimate,
  not a bound: the mix, the optimizer step and moving the data are not in it.
- **Attacks: at most** the attack command's bound (:func:`robustmix.attacks.plan.estimate`),
  as if every example stood at every ε.

Evaluation, corruptions, the transfer checks and the report are in neither: the plan says
so. At the end, :func:`took_lines` sets each kind's time beside its plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustmix.attacks.plan import bound, clock, seconds_per_pass
from robustmix.core.config import TrainConfig
from robustmix.data import load_dataset
from robustmix.mixing import Mixer
from robustmix.models import build_model

BOUND_KINDS = {"train": "about", "attack": "at most", "autoattack": "at most"}
MEASURED_BATCH = 16   # examples in the measured pass: a model at its full batch may not fit


@dataclass(frozen=True)
class Shape:
    """One model shape's data sizes and its measured seconds per example and pass."""

    n_train: int
    n_evaluated: int   # after every epoch: the test set and the held-out examples
    n_test: int
    n_classes: int
    per_example: float


def measure(train: TrainConfig, device, batch_size: int) -> Shape:
    """Load ``train``'s data for its sizes and time one pass of an untrained model."""
    data = load_dataset(train.dataset, data_dir=train.data_dir, image_size=train.image_size,
                        holdout=train.holdout, skip_bad_images=train.skip_bad_images)
    model = build_model(train.arch, num_classes=data.num_classes, in_channels=data.channels,
                        mean=data.mean, std=data.std).to(device)
    n = min(batch_size, MEASURED_BATCH)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, data.channels, data.height, data.width, generator=generator)
    y = torch.randint(0, data.num_classes, (n,), generator=generator)
    return Shape(data.n_train, data.n_test + data.n_holdout, data.n_test, data.num_classes,
                 seconds_per_pass(model, x, y, device, n))


def train_seconds(train: TrainConfig, shape: Shape) -> float:
    """About how long ``train`` takes (see the module)."""
    passes = 2 if Mixer(train.mix).needs_saliency else 1
    return train.epochs * (shape.n_train * passes + shape.n_evaluated / 3) * shape.per_example


def attack_seconds(config, n_examples: int, shape: Shape) -> float:
    """The attack command's bound for ``config`` on ``n_examples`` (0: the test set)."""
    n = min(n_examples, shape.n_test) if n_examples else shape.n_test
    return bound(config, shape.n_classes, shape.per_example, n).seconds


def step_seconds(step, shape: Shape) -> float:
    """The planned seconds of a train step (``settings``: its TrainConfig) or an attack
    step (``settings``: (AttackConfig, n_examples, the run's TrainConfig))."""
    if step.kind == "train":
        return train_seconds(step.settings, shape)
    config, n_examples, _ = step.settings
    return attack_seconds(config, n_examples, shape)


def plan_times(steps: list, device) -> dict[int, float]:
    """Planned seconds of the train, attack and autoattack steps among ``steps``, by
    position; each model shape measured once."""
    shapes: dict[tuple, Shape] = {}
    planned = {}
    for index, step in enumerate(steps):
        if step.kind not in BOUND_KINDS:
            continue
        train = step.settings if step.kind == "train" else step.settings[2]
        key = (train.dataset, train.data_dir, train.image_size, train.arch, train.holdout)
        if key not in shapes:
            shapes[key] = measure(train, device, _largest_batch(steps))
        planned[index] = step_seconds(step, shapes[key])
    return planned


def _largest_batch(steps: list) -> int:
    sizes = [s.settings.batch_size if s.kind == "train" else s.settings[0].batch_size
             for s in steps if s.kind in BOUND_KINDS]
    return max(sizes, default=1)


def _by_kind(steps: list, seconds: dict[int, float]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for index, value in seconds.items():
        kind = "attack" if steps[index].kind == "autoattack" else steps[index].kind
        totals[kind] = totals.get(kind, 0.0) + value
    return totals


def plan_line(steps: list, planned: dict[int, float]) -> str:
    """The plan's one line: steps to do, and training's estimate and the attacks' bound."""
    totals = _by_kind(steps, planned)
    parts = [f"{len(steps)} steps to do"]
    if "train" in totals:
        parts.append(f"training about {clock(totals['train'])}")
    if "attack" in totals:
        parts.append(f"attacks at most {clock(totals['attack'])} (as if every example "
                     "stood at every ε)")
    rest = sum(1 for s in steps if s.kind not in BOUND_KINDS)
    note = f"; {rest} other steps (evaluate, corruptions, transfer, report) not in it" \
        if rest else ""
    return "robustmix study: plan: " + ", ".join(parts) + \
        " (from one measured pass per model)" + note


def took_line(steps: list, planned: dict[int, float], took: dict[int, float]) -> str:
    """At the end: what each planned kind of step took beside its plan."""
    totals, spent = _by_kind(steps, planned), _by_kind(steps, took)
    words = {"train": "training", "attack": "attacks"}
    parts = [f"{words[kind]} took {clock(spent.get(kind, 0.0))} "
             f"({'planned about' if kind == 'train' else 'bound'} {clock(total)})"
             for kind, total in totals.items()]
    return "robustmix study: " + "; ".join(parts) if parts else ""
