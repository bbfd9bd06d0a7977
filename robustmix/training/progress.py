"""One epoch's bookkeeping: the running loss and hits, the progress bar, the stop on a loss
or weights that are not finite, and the epoch's row of metrics.csv.

The sums stay on the device; they are read (summed over the ranks under torchrun) once per
log interval, so that a step never waits for the device.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from robustmix.core import distributed
from robustmix.training.run_files import finite, kept


@dataclass
class EpochProgress:
    """One epoch's running sums; they stay on the device until a log interval ends."""
    index: int
    started: float
    bar: Any
    loss_sum: Tensor
    correct: Tensor
    first_bad: Tensor  # the 1-based step whose loss first was not finite; 0: none yet
    bad_loss: Tensor
    seen: int = 0
    lr: float = 0.0
    train_seconds: float = 0.0

    @classmethod
    def start(cls, epoch: int, epochs: int, steps_per_epoch: int, device: torch.device,
              progress: bool) -> EpochProgress:
        """Zero sums on ``device`` and a progress bar (shown with ``progress``)."""
        started = time.perf_counter()
        return cls(
            index=epoch, started=started,
            loss_sum=torch.zeros((), device=device),
            correct=torch.zeros((), device=device, dtype=torch.long),
            first_bad=torch.zeros((), device=device, dtype=torch.long),
            bad_loss=torch.zeros((), device=device),
            bar=tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                     disable=not progress, leave=True, dynamic_ncols=True))

    def add(self, step: int, loss: Tensor, logits: Tensor, target: Tensor, y: Tensor) -> None:
        """Count one step's loss and hits without waiting for the device."""
        self.loss_sum += loss * y.shape[0]
        newly_bad = (self.first_bad == 0) & ~torch.isfinite(loss)
        self.first_bad = torch.where(newly_bad, step + 1, self.first_bad)
        self.bad_loss = torch.where(newly_bad, loss.float(), self.bad_loss)
        self.correct += (logits.argmax(1) == target.argmax(1)).sum()
        self.seen += y.shape[0]

    def totals(self) -> tuple[float, float, float]:
        """Summed loss, correct and seen over the ranks, in one host synchronization."""
        local = torch.stack([self.loss_sum.double(), self.correct.double(),
                             torch.tensor(float(self.seen), dtype=torch.float64,
                                          device=self.loss_sum.device)])
        loss_total, correct_total, seen_total = distributed.all_sum(local).tolist()
        return loss_total, correct_total, seen_total

    def log_interval(self, step: int, out: Path) -> None:
        """The one host synchronization per interval (with the ranks' sums): stop on a loss
        that is not finite, else update the progress bar."""
        loss_total, correct_total, seen_total = self.totals()
        mean_loss = loss_total / seen_total
        if not math.isfinite(mean_loss):
            self._diverged(step, mean_loss, out)
        elapsed = time.perf_counter() - self.started
        self.bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{correct_total / seen_total:.1%}",
                             img_s=f"{seen_total / elapsed:.0f}", refresh=False)
        self.bar.update(step + 1 - self.bar.n)

    def _diverged(self, step: int, mean_loss: float, out: Path) -> None:
        """Stop every rank with the first step whose loss was not finite (on any rank)."""
        reports = [r for r in distributed.all_gather((int(self.first_bad.item()),
                                                      self.bad_loss.item())) if r[0] > 0]
        bad_step, value = min(reports) if reports else (step + 1, mean_loss)  # else: sum overflowed
        raise distributed.shared_error(
            f"training diverged: the loss is {value} at epoch {self.index + 1}, step {bad_step}; "
            f"{kept(out, self.index)}; lower the learning rate (lr)")

    def close(self, totals: tuple[float, float, float], test_acc: float,
              test_loss: float) -> dict[str, str]:
        """The bar's summary, then the epoch's row of metrics.csv."""
        loss_total, correct_total, seen_total = totals
        self.bar.set_postfix(loss=f"{loss_total / seen_total:.3f}",
                             acc=f"{correct_total / seen_total:.1%}", test=f"{test_acc:.1%}",
                             img_s=f"{seen_total / self.train_seconds:.0f}")
        self.bar.close()
        return {
            "epoch": self.index + 1, "train_loss": f"{loss_total / seen_total:.6f}",
            "train_acc": f"{correct_total / seen_total:.6f}", "test_loss": f"{test_loss:.6f}",
            "test_acc": f"{test_acc:.6f}", "lr": f"{self.lr:.6g}",
            "seconds": f"{time.perf_counter() - self.started:.3f}",
            "images_per_s": f"{seen_total / self.train_seconds:.1f}"}


def stop_unless_finite(model: torch.nn.Module, test_loss: float, epoch: int, out: Path) -> None:
    """Stop every rank when the weights or the test loss at the end of ``epoch`` are not
    finite, before any checkpoint could hold them."""
    finite_weights = finite(model)
    if not (finite_weights and math.isfinite(test_loss)):
        what = "the test loss is" if finite_weights else "the weights are"
        raise distributed.shared_error(
            f"training diverged: {what} not finite at the end of epoch {epoch + 1}; "
            f"{kept(out, epoch)}; lower the learning rate (lr)")
