"""Clean accuracy and loss of a classifier over batches: the one evaluation path that
training (test accuracy per epoch) and the evaluations (train-test gap) share."""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from robustmix.core import distributed
from robustmix.core.devices import autocast

@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterator[tuple[Tensor, Tensor]],
             amp: bool = False) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of a model over (x, y) batches, in eval mode.

    Under torchrun the batches are this rank's share (``eval_batches(..., shard=...)``)
    and the sums are added over the ranks, so every rank returns the whole split's numbers.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long)
    loss_sum = torch.zeros((), dtype=torch.float64)
    count = 0
    for x, y in batches:
        with autocast(x.device, amp):
            logits = model(x).float()
        correct = correct + (logits.argmax(1) == y).sum().cpu()
        loss_sum = loss_sum + F.cross_entropy(logits, y, reduction="sum").double().cpu()
        count += y.shape[0]
    model.train(was_training)
    if distributed.current().active:  # on the CPU: the same backend on every rank
        totals = torch.stack([correct.double(), loss_sum, torch.tensor(count).double()])
        correct, loss_sum, count = distributed.all_sum(totals).tolist()
    else:
        correct, loss_sum = correct.item(), loss_sum.item()
    return correct / max(count, 1), loss_sum / max(count, 1)
