"""A training run's peak memory, estimated from one tiny measured batch, and the refusal
of a run that cannot fit (:mod:`robustmix.core.memory` decides, the line says why).

The peak of a training step is its activations (measured: :func:`robustmix.models.memory.
measure`) and the batch's copies, which scale with the batch; and the weights, their
gradients, SGD's momentum and step temporaries and the data set where it is held on the
training device, which do not. :func:`check` runs in :meth:`Trainer.setup
<robustmix.training.trainer.Trainer.setup>`, before the run writes anything;
:func:`estimate_run` gives a study's plan the same estimate from a config alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from robustmix.core import distributed
from robustmix.core import memory as mem
from robustmix.core.config import TrainConfig
from robustmix.core.devices import resolve_device
from robustmix.data import FolderSource, load_dataset
from robustmix.models import build_model
from robustmix.models.memory import measure, model_bytes, parameter_bytes

# Float copies of the input batch alive beside the activations during a step: the batch as
# loaded and augmented (the loop's variable), the mixing partner's and the mix (the mix the
# first layer saves is counted with the activations; one more for a mask or crop's copy).
BATCH_COPIES = 3
# An image-folder loader's workers each prefetch two uint8 batches (DataLoader's
# prefetch_factor) into host memory.
PREFETCH = 2


def estimate(config: TrainConfig, data, model: nn.Module, device: torch.device,
             world: int = 1) -> mem.Estimate:
    """The peak of training ``model`` on ``data`` with ``config`` on ``device`` (each of
    ``world`` processes with its slice of the batch); ``available`` counts the model and
    data already on ``device`` as the run's."""
    device = torch.device(device)
    shape = (data.channels, data.height, data.width)
    found = measure(model, shape, device, train=True, amp=config.amp,
                    channels_last=config.channels_last and device.type == "cuda")
    pixels = data.channels * data.height * data.width
    per_example = found.per_example * mem.SAFETY.get(device.type, 1.0) + BATCH_COPIES * 4 * pixels
    if isinstance(data, FolderSource) and device.type == "cpu":
        per_example += data.num_workers * PREFETCH * pixels
    weights, trained = model_bytes(model), parameter_bytes(model)
    state = trained * (1 + (config.momentum > 0) + (config.weight_decay > 0 or config.nesterov)
                       + (world > 1))
    data_bytes = data.held_bytes() if _on(data, device) else 0
    free = mem.available_bytes(device)
    kernels = found.step_bytes + mem.KERNELS.get(device.type, 0)
    return mem.Estimate(
        device=str(device), batch_size=config.batch_size // world, processes=world,
        per_example=per_example,
        fixed=weights + state + kernels, data=data_bytes,
        available=None if free is None else free + _held(model, device) + data_bytes,
        image_size=data.height if data.height == data.width else None,
        parts=(("weights", weights), ("gradients and optimizer state", state),
               ("kernels", kernels), ("data", data_bytes)))


def _on(data, device: torch.device) -> bool:
    """Whether ``data`` holds its images in ``device``'s memory."""
    held = getattr(data, "device", None)
    return held is not None and torch.device(held).type == device.type


def _held(model: nn.Module, device: torch.device) -> int:
    """The bytes of ``model`` already in ``device``'s memory."""
    on = [p for p in (*model.parameters(), *model.buffers()) if p.device.type == device.type]
    return sum(t.numel() * t.element_size() for t in on)


def knobs(config: TrainConfig, found: mem.Estimate, world: int = 1) -> dict[str, int]:
    """The settings at which the run would fit: the largest global batch (a multiple of the
    processes, at least 2 when mixing), the largest image size (0: none)."""
    batch = found.largest_batch() * world
    if batch < (2 if config.mix.mix != "vanilla" else 1) * world:
        batch = 0
    size = found.largest_image_size()
    return {"batch_size": batch, "image_size": size if size >= 8 else 0}


def check(config: TrainConfig, data, model: nn.Module, device: torch.device) -> None:
    """Refuse, on every rank alike, a run whose estimated peak does not fit its device."""
    if not mem.checking():
        return
    place = distributed.current()
    found = estimate(config, data, model, device, place.world)
    error = mem.refusal(found, knobs(config, found, place.world))
    mem.refuse_on_every_rank(error)


def estimate_run(config: TrainConfig, *, device: torch.device | str | None = None,
                 data=None) -> mem.Estimate:
    """The peak of training ``config`` (for a study's plan, before it runs): its data set
    loaded on the CPU (or ``data``, loaded once for runs that share it), its model built
    on ``device`` (the config's by default) and one tiny batch measured there. Its
    ``summary()`` is one line; ``fits``, ``needed`` and ``available`` the numbers."""
    data, model, device = planned(config, device, data)
    found = estimate(config, data, model, device)
    if not _on(data, device):  # loaded here on the CPU, but the run holds it on the GPU
        return dataclasses.replace(found, data=data.held_bytes(), parts=tuple(
            (name, data.held_bytes() if name == "data" else size) for name, size in found.parts))
    return found


def load_data(config: TrainConfig):
    """``config``'s data set on the CPU, as a study's plan sees it before the run trains."""
    return load_dataset(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                        holdout=config.holdout, skip_bad_images=config.skip_bad_images)


def planned(config: TrainConfig, device: torch.device | str | None = None, data=None
            ) -> tuple[Any, nn.Module, torch.device]:
    """A run of ``config`` before it trains: its data set (``data``, else :func:`load_data`),
    its untrained model on ``device`` (the config's by default), and that device. The
    caller's random numbers stay as they were."""
    device = resolve_device(config.device) if device is None else torch.device(device)
    data = load_data(config) if data is None else data
    with torch.random.fork_rng(devices=[]):
        model = build_model(config.arch, num_classes=data.num_classes,
                            in_channels=data.channels, mean=data.mean, std=data.std)
    return data, model.to(device), device

