"""Input gradients of a classifier, per example, with respect to its [0, 1] input.

For an example (x_k, y_k) and logits f(x_k):

    ∇ℓ_k = ∂ CE(f(x_k), y_k) / ∂x_k        (the loss of that example alone)
    ∇f_k = ∂ f_{y_k}(x_k) / ∂x_k            (the true-class logit)

The model is used in eval mode, where examples do not interact, so one backward pass
through the summed batch gives every example's own gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def input_gradients(model: torch.nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(∇ℓ_k, ∇f_k) for every example of the batch, each of x's shape (N, C, H, W)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x).float()
        loss = F.cross_entropy(logits, y, reduction="sum")
        true_logit = logits.gather(1, y.view(-1, 1)).sum()
        grad_loss, = torch.autograd.grad(loss, x, retain_graph=True)
        grad_logit, = torch.autograd.grad(true_logit, x)
    return grad_loss.detach(), grad_logit.detach()


def l2_per_example(grad: Tensor) -> Tensor:
    """‖g_k‖₂ over all of an example's channels and pixels, shape (N,), float64."""
    return grad.double().flatten(1).norm(dim=1)
