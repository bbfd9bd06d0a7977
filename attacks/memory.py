"""An attack's peak memory, estimated from one tiny measured batch, and the refusal of an
attack that cannot fit (:mod:`robustmix.core.memory` decides, the line says why).

An attack keeps, per example of its batch (``AttackConfig.batch_size``), the activations
of an input-gradient pass (eval mode: :func:`robustmix.models.memory.measure`) and its own
input-sized tensors; beside them the model's weights and, on the CPU, the attacked
examples as floats. :func:`check` runs before :func:`~robustmix.attacks.runner.attack_run`
writes anything (and before ``robustmix attack`` times a pass); :func:`estimate_run` gives
a study's plan the same estimate before the run is trained.
"""

from __future__ import annotations

import torch
from torch import nn

from robustmix.attacks.sweep import AttackConfig
from robustmix.core import memory as mem
from robustmix.models.memory import measure, model_bytes

# Input-sized float tensors an attack keeps per example besides the activations: APGD, the
# most of the built-ins, keeps the input, its iterate and the previous one, the best point
# and best adversarial point, the step's gradient and the best one, and the
# step direction -- about ten; twelve leaves room for a plugin's.
ATTACK_COPIES = 12


def estimate(model: nn.Module, shape: tuple[int, int, int], n_examples: int,
             config: AttackConfig, device, *, loaded: bool = True) -> mem.Estimate:
    """The peak of attacking ``n_examples`` inputs of ``shape`` (C, H, W) with ``config``'s
    batch size on ``device``; ``available`` counts the model already there and, on the
    CPU, the examples (when ``loaded``) as the attack's."""
    device = torch.device(device)
    found = measure(model, shape, device, train=False)
    pixels = shape[0] * shape[1] * shape[2]
    per_example = found.per_example * mem.SAFETY.get(device.type, 1.0) + ATTACK_COPIES * 4 * pixels
    batch = min(config.batch_size, max(n_examples, 1))
    weights = model_bytes(model)
    examples = 4 * pixels * n_examples if device.type == "cpu" else 0
    held = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())
               if t.device.type == device.type)
    free = mem.available_bytes(device)
    kernels = found.step_bytes + mem.KERNELS.get(device.type, 0)
    return mem.Estimate(
        device=str(device), batch_size=batch, per_example=per_example,
        fixed=weights + kernels, data=examples,
        available=None if free is None else free + held + examples * loaded,
        parts=(("weights", weights), ("kernels", kernels), ("attacked examples", examples)))


def check(model: nn.Module, x: torch.Tensor, config: AttackConfig, device) -> None:
    """Refuse, on every rank alike, an attack on ``x`` (the examples, on the CPU) whose
    estimated peak does not fit ``device``, naming the batch size that would."""
    if not mem.checking():
        return
    found = estimate(model, tuple(x.shape[1:]), x.shape[0], config, device)
    error = mem.refusal(found, {"batch_size": found.largest_batch()})
    mem.refuse_on_every_rank(error)


def estimate_run(data, model: nn.Module, config: AttackConfig, n_examples: int | None,
                 device) -> mem.Estimate:
    """The peak of attacking a run before it is trained (for a study's plan): ``model``,
    untrained but the trained one's size, on ``device``, and ``n_examples`` of ``data``'s
    test set (None: all), the data set held on the CPU."""
    n = data.n_test if not n_examples else min(n_examples, data.n_test)
    return estimate(model.eval(), (data.channels, data.height, data.width), n,
                    config, device, loaded=False)
