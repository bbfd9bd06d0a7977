"""Calibration of a classifier: expected calibration error, negative log-likelihood, Brier score.

Definitions (what ``generalization.json`` and ``corruptions.csv`` hold):

- **ECE**: confidence = the top-1 softmax probability; 15 equal-width bins
  (k/15, (k+1)/15], k = 0..14; ECE = Σ_k (n_k / n) · |accuracy_k − mean confidence_k|,
  empty bins left out. In [0, 1].
- **NLL**: mean over examples of −log softmax(logits)_y (nats; the cross-entropy).
- **Brier**: Σ over classes of (p_c − 1[c = y])², then the mean over examples. In [0, 2];
  0 for a perfect one-hot prediction, 1 − 1/K for the uniform one.

Written by hand (a few tensor lines) rather than with torchmetrics: the report needs the
per-bin counts for its reliability diagrams and sums it can add over runs, and the
project keeps no torchmetrics dependency for one function.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustmix.core import checks as guards
from robustmix.core.errors import ConfigError

BINS = 15
DEFINITION = ("top-1 softmax confidence; ECE over 15 equal-width bins (k/15, (k+1)/15], each "
              "|accuracy - mean confidence| weighted by its share of the examples; NLL: mean "
              "-log p_y (nats); Brier: sum over classes of (p_c - onehot_c)^2, mean over "
              "examples")


def _check(logits: Tensor, labels: Tensor) -> None:
    """Finite floating logits (N, K), N >= 1, and labels (N,) in [0, K): ConfigError (a
    ValueError) naming the argument, TypeError for a non-tensor."""
    guards.tensor("logits", logits, "(N, K) logits")
    if logits.ndim != 2 or not isinstance(labels, Tensor) or labels.ndim != 1 \
            or logits.shape[0] != labels.shape[0]:
        raise ConfigError("logits", f"must be (N, K) and labels (N,), got {tuple(logits.shape)} "
                                    f"and {tuple(getattr(labels, 'shape', ()))}")
    if logits.shape[0] == 0:
        raise ConfigError("logits", "hold no examples: calibration needs at least one")
    guards.dtype("logits", logits, "floating")
    if not bool(torch.isfinite(logits).all()):
        raise ConfigError("logits", "must be finite (no NaN or infinity)")
    guards.class_labels("labels", labels, logits.shape[0], logits.shape[1], "logits")


def bin_index(confidence: Tensor, bins: int = BINS) -> Tensor:
    """The bin of each confidence: k such that confidence lies in (k/bins, (k+1)/bins]."""
    return (torch.ceil(confidence.double() * bins).long() - 1).clamp(0, bins - 1)


def reliability(probs: Tensor, labels: Tensor, bins: int = BINS) -> dict[str, list]:
    """Per bin: the example count, the sum of confidences and the number correct (sums, so
    that runs and batches add up; a bin's accuracy is correct / count)."""
    confidence, predicted = probs.max(dim=1)
    index = bin_index(confidence, bins)
    count = torch.bincount(index, minlength=bins)
    conf_sum = torch.zeros(bins, dtype=torch.float64, device=probs.device)
    conf_sum.index_add_(0, index, confidence.double())
    correct = torch.bincount(index, weights=(predicted == labels).double(), minlength=bins)
    return {"count": count.tolist(), "confidence_sum": conf_sum.tolist(),
            "correct": [int(round(c)) for c in correct.tolist()]}


def ece_from_bins(table: dict[str, list]) -> float:
    """ECE from :func:`reliability`'s per-bin sums."""
    count = torch.tensor(table["count"], dtype=torch.float64)
    gap = (torch.tensor(table["correct"], dtype=torch.float64)
           - torch.tensor(table["confidence_sum"], dtype=torch.float64)).abs()
    return float(gap.sum() / count.sum())


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = BINS) -> float:
    """ECE of the top-1 confidence over ``bins`` equal-width bins (module docstring)."""
    _check(logits, labels)
    return ece_from_bins(reliability(logits.double().softmax(1), labels, bins))


def negative_log_likelihood(logits: Tensor, labels: Tensor) -> float:
    """Mean −log p_y in nats."""
    _check(logits, labels)
    return float(F.cross_entropy(logits.double(), labels))


def brier_score(logits: Tensor, labels: Tensor) -> float:
    """Mean over examples of Σ_c (p_c − 1[c = y])²."""
    _check(logits, labels)
    probs = logits.double().softmax(1)
    onehot = F.one_hot(labels, probs.shape[1]).double()
    return float(((probs - onehot) ** 2).sum(1).mean())


def calibration(logits: Tensor, labels: Tensor) -> dict[str, Any]:
    """Accuracy, ECE, NLL, Brier and the reliability table of one set of predictions."""
    _check(logits, labels)
    table = reliability(logits.double().softmax(1), labels)
    return {"n": int(labels.shape[0]),
            "accuracy": float((logits.argmax(1) == labels).double().mean()),
            "ece": ece_from_bins(table), "nll": negative_log_likelihood(logits, labels),
            "brier": brier_score(logits, labels), "bins": BINS,
            "reliability": table, "definition": DEFINITION}


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable[tuple[Tensor, Tensor]]
            ) -> tuple[Tensor, Tensor]:
    """The model's logits (float32, on the CPU) and the labels over (x, y) batches, in eval
    mode (the mode the model was in is restored)."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for x, y in batches:
            logits.append(model(x).float().cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat(labels)
