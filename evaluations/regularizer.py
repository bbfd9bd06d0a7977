"""The paper's first-layer regularizer, estimated with the masks that training uses.

For the first layer W (a conv applied to the normalized input (x − mean)/std) and a mask
distribution A (λ ~ Beta(α, α), M ~ A(λ)):

    Q_A(W) = E_{λ, M ~ A} E_{i ≠ j} ‖ W ∗ ( (1 − M) ⊙ (x_j − x_i) / std ) ‖²

with the layer's own stride and padding and no bias (the mean cancels in x_j − x_i), the
squared norm summed over the conv output, and i ≠ j uniform over the unaugmented training
images. Monte Carlo over ``draws`` pairs, each with its own λ and mask; the standard error
is the sample std of the per-pair energies over √draws. Vanilla (M = 1) gives Q = 0.

The reference Q_ref(W) is the same with M = 0 (the whole difference); ``relative`` =
Q_A / Q_ref lies in [0, 1] and for Mixup equals E[(1 − λ)²] whatever W is (1/3 at α = 1).

The draws are common random numbers: the pairs come from ``default_rng([seed, 0])`` and
the λ and masks of distribution A from ``default_rng([seed, 1, k_A])``, k_A the CRC-32 of
A's name (:func:`robustmix.core.methods.name_seed`; never its position in a list, so a
method registered later changes no other's draws), so every model evaluated with one seed
meets the very same pairs and masks, and Q_A does not depend on which other distributions
are evaluated or on the batch size.

PuzzleMix's masks depend on the images and on a model's saliency: its Q uses the evaluated
model's saliency (so models share its pairs and λ but not its masks) and the perturbation
its mix actually makes, δ = x̃ − x_i (= (1 − M) ⊙ (x_j − x_i) without transport); it needs
the model and the training labels and is left out when they are not given.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from typing import Any, Mapping

from robustmix.core import methods
from robustmix.core.errors import UsageError
from robustmix.mixing import is_data_dependent, make_sampler, sample_lam
from robustmix.mixing.puzzlemix import pair_deltas

CHUNK = 256   # pairs per batched conv; fixed so the masks drawn do not depend on --batch-size
DEFINITION = ("Q_A(W) = E_{lam, M ~ A} E_{i != j} || W * ((1 - M) . (x_j - x_i) / std) ||^2, "
              "first conv's stride/padding, no bias, unaugmented train images; "
              "relative = Q_A / Q_ref with Q_ref the same with M = 0; for puzzlemix "
              "(M ⊙ x_i + (1 - M) ⊙ x_j replaced by its mix x~, saliency of the evaluated "
              "model) the perturbation is x~ - x_i")


def draw_pairs(n_images: int, draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j), i ≠ j, uniform over ordered pairs of distinct images."""
    rng = np.random.default_rng([seed, 0])
    i = rng.integers(0, n_images, size=draws)
    j = (i + rng.integers(1, n_images, size=draws)) % n_images
    return i, j


@torch.no_grad()
def first_layer_energy(layer: nn.Conv2d, std: Tensor, delta: Tensor) -> Tensor:
    """‖W ∗ (δ / std)‖² per example (float64, shape (B,)): the conv's padding and stride, no bias."""
    scaled = delta / std.to(delta.device, delta.dtype).reshape(1, -1, 1, 1)
    out = layer._conv_forward(scaled, layer.weight.to(delta.dtype), None)
    return out.double().square().flatten(1).sum(dim=1)


def _unit(images: Tensor, device) -> Tensor:
    images = images.to(device)
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


@torch.no_grad()
def pair_energies(layer: nn.Conv2d, std: Tensor, images: Tensor, pairs: tuple[np.ndarray, np.ndarray],
                  sampler=None, *, alpha: float = 1.0, rng: np.random.Generator | None = None,
                  device="cpu", model: nn.Module | None = None,
                  labels: Tensor | None = None) -> np.ndarray:
    """‖W ∗ ((1 − M_d) ⊙ (x_j − x_i)/std)‖² for every drawn pair d; M = 0 when no sampler.

    A data-dependent sampler (PuzzleMix) needs ``model`` and ``labels`` and uses δ = x̃ − x_i.
    """
    first, second = pairs
    where = getattr(images, "device", "cpu")  # a lazy image-folder view lives on the host
    height, width = images.shape[2], images.shape[3]
    energies = []
    for start in range(0, len(first), CHUNK):
        index_i = torch.from_numpy(first[start:start + CHUNK])
        index_j = torch.from_numpy(second[start:start + CHUNK])
        x_i = _unit(images[index_i.to(where)], device)
        x_j = _unit(images[index_j.to(where)], device)
        delta = x_j - x_i
        if sampler is not None:
            lam = torch.from_numpy(sample_lam(rng, alpha, len(index_i))).float().to(device)
            if is_data_dependent(sampler):
                y_i = labels[index_i.to(labels.device)].to(device)
                y_j = labels[index_j.to(labels.device)].to(device)
                delta = pair_deltas(sampler, model, x_i, y_i, x_j, y_j, lam, rng)
            else:
                delta = delta * (1.0 - sampler(lam, height, width, rng, device))
        energies.append(first_layer_energy(layer, std, delta).cpu())
    return torch.cat(energies).numpy()


def regularizer_table(layer: nn.Conv2d, std: Tensor, images: Tensor, *, alpha: float = 1.0,
                      options: Mapping[str, Mapping[str, Any]] | None = None,
                      draws: int = 512, seed: int = 0, masks=None, device="cpu",
                      model: nn.Module | None = None, labels: Tensor | None = None) -> dict:
    """Q_A for each mask distribution A in ``masks``, with Q_ref and the settings used.

    ``masks`` defaults to every registered method (:func:`robustmix.core.methods.names`),
    the data-dependent ones (PuzzleMix) only when ``model`` and ``labels`` are given (they
    need the model's saliency). ``options`` maps a method's name to its options (those of
    the evaluated run's own method); the others keep their defaults.
    """
    with_data = model is not None and labels is not None
    default_masks = masks is None
    pairs = draw_pairs(images.shape[0], draws, seed)
    layer = layer.to(device)
    reference = pair_energies(layer, std, images, pairs, device=device)
    q_ref = float(reference.mean())
    table, used = {}, {}
    for name in methods.names() if default_masks else masks:
        given = dict((options or {}).get(name, {}))
        sampler = make_sampler(name, **given)     # loads a plugin: its defaults are known
        used[name] = methods.full_options(name, given)
        if is_data_dependent(sampler) and not with_data:
            if default_masks:
                continue
            raise UsageError(f"Q of {name} needs the model (its saliency) and the labels")
        rng = np.random.default_rng([seed, 1, methods.name_seed(name)])
        values = pair_energies(layer, std, images, pairs, sampler, alpha=alpha, rng=rng,
                               device=device, model=model, labels=labels)
        q = float(values.mean())
        table[name] = {"q": q, "se": _standard_error(values),
                       "relative": q / q_ref if q_ref > 0 else math.nan}
    builtin = {key: methods.full_options(name, used.get(name, {})).get(key)
               for name, key in (("hmix", "hmix_r"), ("stochastic", "switch_prob"))}
    return {"definition": DEFINITION, "alpha": alpha, **builtin, "draws": draws, "seed": seed,
            "options": {name: used[name] for name in table if used[name]},
            "reference": {"q": q_ref, "se": _standard_error(reference)}, "q": table}


def _standard_error(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
