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
so. At the end, :func:`took_line` sets each kind's time beside its plan.

Memory too: the peak of the largest training run and of the largest attack
(:func:`robustmix.training.memory.estimate_run`, :func:`robustmix.attacks.memory.estimate_run`:
one tiny measured batch), and what the device has. A study a run of which cannot fit is
refused before its first step, in the line the run itself would refuse with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustmix.attacks import memory as attack_memory
from robustmix.attacks.plan import bound, clock, seconds_per_pass
from robustmix.core import memory as mem
from robustmix.core.config import TrainConfig
from robustmix.mixing import Mixer
from robustmix.models import build_model
from robustmix.training import memory as train_memory

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


def measure(train: TrainConfig, device, batch_size: int, data=None) -> Shape:
    """Time one pass of an untrained model of ``train``'s shape (``data``: its data set)."""
    data = train_memory.load_data(train) if data is None else data
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


def _train_of(step) -> TrainConfig:
    return step.settings if step.kind == "train" else step.settings[2]


def plan_times(steps: list, device, loaded: dict | None = None) -> dict[int, float]:
    """Planned seconds of the train, attack and autoattack steps among ``steps``, by
    position; each model shape measured once (``loaded``: data sets already loaded, by
    :func:`data_of`'s key, shared with :func:`plan_memory`)."""
    loaded = {} if loaded is None else loaded
    shapes: dict[tuple, Shape] = {}
    planned = {}
    for index, step in enumerate(steps):
        if step.kind not in BOUND_KINDS:
            continue
        train = _train_of(step)
        key = (train.dataset, train.data_dir, train.image_size, train.arch, train.holdout)
        if key not in shapes:
            shapes[key] = measure(train, device, _largest_batch(steps), data_of(train, loaded))
        planned[index] = step_seconds(step, shapes[key])
    return planned


def data_of(train: TrainConfig, loaded: dict):
    """The data set of ``train``, from ``loaded`` or loaded into it."""
    key = (train.dataset, train.data_dir, train.image_size, train.holdout)
    if key not in loaded:
        loaded[key] = train_memory.load_data(train)
    return loaded[key]


def plan_memory(steps: list, device, loaded: dict | None = None) -> dict[str, mem.Estimate]:
    """The largest estimated peak of the training runs and of the attacks among ``steps``
    ("train", "attack"); raises the refusal of the first that cannot fit (unless memory
    checks are off), before any step runs."""
    loaded = {} if loaded is None else loaded
    largest: dict[str, mem.Estimate] = {}
    seen = set()
    for step in (s for s in steps if s.kind in BOUND_KINDS):
        train = _train_of(step)
        kind = "train" if step.kind == "train" else "attack"
        config = None if kind == "train" else step.settings[0]
        key = (kind, train.dataset, train.image_size, train.arch, train.batch_size,
               config.batch_size if config else 0)
        if key in seen:
            continue
        seen.add(key)
        found = _estimate(step, train, device, data_of(train, loaded))
        if kind not in largest or found.needed > largest[kind].needed:
            largest[kind] = found
    return largest


def _estimate(step, train: TrainConfig, device, data) -> mem.Estimate:
    if step.kind == "train":
        found = train_memory.estimate_run(train, device=device, data=data)
        error = mem.refusal(found, train_memory.knobs(train, found))
    else:
        config, n_examples, _ = step.settings
        data, model, device = train_memory.planned(train, device, data)
        found = attack_memory.estimate_run(data, model, config, n_examples or None, device)
        error = mem.refusal(found, {"batch_size": found.largest_batch()})
    if error is not None and mem.checking():
        raise error
    return found


def memory_line(largest: dict[str, mem.Estimate]) -> str:
    """The plan's memory line: each kind's largest estimated peak, and what is available."""
    words = {"train": "training", "attack": "attacks"}
    parts = [f"{words[kind]} {found.summary()}" for kind, found in largest.items()]
    return "robustmix study: memory: " + "; ".join(parts) if parts else ""


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
                     "stood at every ε; the diagnostics' reruns not in it)")
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
