"""The guards every attack passes through, built-in or the user's.

An adversarial example outside the ε-ball or [0, 1], a robust accuracy above clean or
rising with ε: each is a bug, and the run stops (:class:`AttackError`). A model whose
outputs are random in eval mode or are probabilities gets a note on every row it touches
(:func:`model_checks`), so no number is read without it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class AttackError(RuntimeError):
    """An attack broke a guard (left the ε-ball or [0, 1], raised accuracy): a bug, stop."""


def check_adversarial(x_adv: Tensor, x: Tensor, eps: float, norm: str, attack: str) -> None:
    """Every adversarial example lies in the ε-ball around its input and in [0, 1]."""
    if x_adv.shape != x.shape or not torch.isfinite(x_adv).all():
        raise AttackError(f"{attack} returned a malformed batch")
    if x_adv.numel() == 0:
        return
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    if (size > eps * (1 + 1e-5) + 1e-6).any():
        raise AttackError(f"{attack} left the {norm} ball of ε = {eps:.6g} "
                          f"(max {size.max().item():.6g}): a bug, the run stops")
    if x_adv.min() < 0 or x_adv.max() > 1:
        raise AttackError(f"{attack} left the image range [0, 1]: a bug, the run stops")


def model_checks(model: nn.Module, x: Tensor, device) -> list[str]:
    """The ways a model makes robust accuracy lie, checked on a batch of clean inputs.

    Two forward passes on the same inputs must agree (else the model is randomized, e.g.
    dropout left on, and every accuracy is a draw), outputs must be finite, and they must
    be logits: rows in [0, 1] that sum to 1 are probabilities, whose gradients vanish
    where the model is confident, so gradient attacks find less than they should. The
    model runs in whatever mode the caller set (eval, in :func:`robustmix.attacks.sweep.robustness`).
    """
    if x.shape[0] == 0:
        return []
    xb = x.to(device)
    with torch.no_grad():
        first, second = model(xb).float(), model(xb).float()
    notes = []
    if not torch.isfinite(first).all():
        notes.append("model: non-finite outputs (NaN or inf) on clean inputs")
    elif not torch.allclose(first, second, rtol=1e-4, atol=1e-5):
        notes.append("model: two passes on the same inputs give different outputs "
                     "(randomness in eval mode, e.g. dropout left on); accuracies are draws")
    if first.dim() == 2 and first.shape[1] > 1 and bool((first >= 0).all()) and \
            bool((first <= 1).all()) and torch.allclose(first.sum(1), torch.ones_like(
                first[:, 0]), atol=1e-4):
        notes.append("model: outputs are probabilities (rows in [0, 1] summing to 1), not "
                     "logits; gradient attacks on them underestimate robustness")
    return notes


def check_rows(rows: Sequence) -> None:
    """Robust ≤ clean, and robust accuracy never rises with ε: anything else is a bug.

    ``rows`` have ``attack``, ``eps`` (an Eps), ``clean_acc`` and ``robust_acc``, in
    ascending ε per attack.
    """
    by_attack: dict[str, list] = {}
    for row in rows:
        if row.robust_acc > row.clean_acc + 1e-12:
            raise AttackError(f"{row.attack} at ε = {row.eps.text} reports robust accuracy "
                              f"{row.robust_acc:.4f} above clean {row.clean_acc:.4f}: a bug")
        by_attack.setdefault(row.attack, []).append(row)
    for attack, series in by_attack.items():
        for smaller, larger in zip(series, series[1:]):
            if larger.robust_acc > smaller.robust_acc + 1e-12:
                raise AttackError(f"{attack}: robust accuracy rises from ε = {smaller.eps.text} "
                                  f"to {larger.eps.text}: a bug")
