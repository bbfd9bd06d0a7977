"""What one batch of a model costs in memory, measured on a tiny batch at the real size.

:func:`measure` runs ``examples`` (2) inputs of the run's image shape through the model on
the device the run uses, the way the run will (training: train mode, gradients for the
weights; an attack: eval mode, the gradient for the input), and returns the bytes per
example that the pass keeps alive, which the caller scales to its batch size
(:mod:`robustmix.core.memory` decides whether that fits).

- CUDA: the caching allocator's peak (``max_memory_allocated``) over a forward and
  backward pass at 2 and at 4 examples; the slope is the bytes per example, the rest
  (the weights' gradients, autocast's weight copies, kernel workspaces) ``step_bytes``.
- CPU: the CPU has no allocator statistics, so the bytes are counted: every tensor that
  autograd saves for the backward pass (``torch.autograd.graph.saved_tensors_hooks``, each
  storage once, the weights' and buffers' left out), plus the gradients in flight during
  the backward pass, at most two tensors the size of the largest saved one (an operation's
  incoming and outgoing gradient), and two the size of the logits (the loss's). No
  backward pass is run. The kernels' and the allocator's own memory beyond the count is
  allowed for in :mod:`robustmix.core.memory` (``SAFETY``, ``KERNELS``).

The pass leaves the model as it found it: the batch-norm statistics it updated are put
back and the random number generators are forked, so a run measured trains exactly as one
that was not.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustmix.core.devices import autocast

MEASURED_EXAMPLES = 2   # the tiny batch (CUDA: also twice as many, for the slope)


@dataclass(frozen=True)
class Measured:
    """Bytes of one pass: ``per_example`` (scales with the batch), ``step_bytes`` (a fixed
    part measured beside it on CUDA; 0 on the CPU, where only activations are counted)."""

    per_example: float
    step_bytes: int = 0


def parameter_bytes(model: nn.Module) -> int:
    """The bytes of the model's weights (those that train: ``requires_grad``)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def model_bytes(model: nn.Module) -> int:
    """The bytes of every weight and buffer of the model (what loading it holds)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(model: nn.Module, shape: tuple[int, int, int], device, *, train: bool,
            amp: bool = False, channels_last: bool = False,
            examples: int = MEASURED_EXAMPLES) -> Measured:
    """The bytes per example of a pass of ``model`` (on ``device``) over ``examples``
    inputs of ``shape`` (C, H, W): with ``train`` as a training step does it (train mode,
    the weights' gradients), else as an attack does (eval mode, the input's gradient)."""
    device = torch.device(device)
    with _untouched(model, device):
        model.train(train)
        if device.type == "cuda":
            return _measure_cuda(model, shape, device, train, amp, channels_last, examples)
        x = _inputs(examples, shape, device, train, channels_last)
        return Measured(saved_bytes(model, x) / examples)


def _inputs(n: int, shape, device, train: bool, channels_last: bool) -> Tensor:
    x = torch.rand((n, *shape), device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(not train)  # an attack's gradient is the input's


def saved_bytes(model: nn.Module, x: Tensor) -> int:
    """The bytes the forward pass of ``x`` keeps for the backward pass: each storage that
    autograd saves, once (not the model's own weights and buffers), plus two of the largest
    (the gradients in flight) and two the size of the logits (the loss's log-softmax and
    its gradient)."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    kept: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(x)
    largest = max(kept.values(), default=0)
    return sum(kept.values()) + 2 * largest + 2 * logits.numel() * logits.element_size()


def _measure_cuda(model: nn.Module, shape, device: torch.device, train: bool, amp: bool,
                  channels_last: bool, examples: int) -> Measured:
    """The allocator's peak above what was allocated before, at n and 2n examples."""
    peaks = []
    for n in (examples, 2 * examples):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        x = _inputs(n, shape, device, train, channels_last)   # the input counts too
        with autocast(device, amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), torch.zeros(n, dtype=torch.long, device=device))
        wanted = [p for p in model.parameters() if p.requires_grad] if train else [x]
        grads = torch.autograd.grad(loss, wanted, allow_unused=True)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - before)
        del x, logits, loss, grads
    per_example = max(peaks[1] - peaks[0], 0) / examples
    return Measured(per_example, max(int(peaks[0] - examples * per_example)
                                     - _grad_bytes(model, train), 0))


def _grad_bytes(model: nn.Module, train: bool) -> int:
    return parameter_bytes(model) if train else 0


@contextlib.contextmanager
def _untouched(model: nn.Module, device: torch.device):
    """The model's mode and buffers (batch-norm statistics) as they were, and the random
    generators' states too, after the block."""
    was_training = model.training
    buffers = [b.detach().clone() for b in model.buffers()]
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers):
                buffer.copy_(saved)
        model.train(was_training)
