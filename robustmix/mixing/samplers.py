"""Mixed-sample data augmentation as mask samplers, and the one function that mixes.

The bottom of the mixing package: PuzzleMix (:mod:`robustmix.mixing.puzzlemix`) builds on
these, and :mod:`robustmix.mixing.mixer` (the registry and the Mixer) on both.

Every MSDA of the paper (Park, Yun, Chun, NeurIPS 2022) is a way to draw a mask:

    x̃ = M ⊙ x_i + (1 − M) ⊙ x_j,        ỹ = m̄ · y_i + (1 − m̄) · y_j,   m̄ = mean(M)

A *mask sampler* maps ``(lam, height, width, rng, device)`` to ``M`` of shape
``(B, 1, H, W)`` with values in [0, 1], shared by all channels, where ``lam`` is a float
tensor of shape ``(B,)`` and ``rng`` a :class:`numpy.random.Generator`. The random
choices (box centres, bump centres) are drawn on the host from ``rng`` and moved to the
device as small tensors; the mask itself is built on the device with batched tensor ops,
no Python loop over samples. The same seed therefore gives the same masks on any device.

PuzzleMix's masks depend on the images: it is a :class:`DataDependentSampler`, called as
``(lam, x, partner_x, rng, saliency=, partner_saliency=)`` and returning a
:class:`MaskDraw` — the mask and the two images to combine, which its transport step may
have rearranged (:mod:`robustmix.mixing.puzzlemix`). ``DATA_FREE_MIX_NAMES``
(:mod:`robustmix.core.config`) are the MSDAs whose samplers need nothing but λ.

:func:`mix` is the single place where x̃ and ỹ are formed; the ``Mixer`` draws
(λ, mask, partner) once per batch and then applies them, so images and labels never
disagree. The evaluations compute the kernel c(p) from these same samplers
(:func:`mask_kernel`; :func:`robustmix.mixing.puzzlemix.kernel_on_batches` for PuzzleMix).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

from robustmix.core import checks
from robustmix.core.errors import ConfigError



class MaskSampler(Protocol):
    def __call__(self, lam: Tensor, height: int, width: int, rng: np.random.Generator,
                 device: torch.device | str) -> Tensor: ...


class MaskDraw(NamedTuple):
    """What a data-dependent sampler returns: x̃ = mask ⊙ x + (1 − mask) ⊙ partner_x.

    ``x`` holds the images whose labels are y (possibly with blocks moved), ``partner_x``
    the partners' images (likewise); :func:`mix` combines them.
    """

    mask: Tensor        # (B, 1, H, W)
    x: Tensor           # (B, C, H, W)
    partner_x: Tensor   # (B, C, H, W)


class DataDependentSampler(Protocol):
    """A sampler whose masks depend on the batch (PuzzleMix).

    Called with ``lam`` (B,) or (1,), the images ``x`` (B, C, H, W), the partner images
    ``partner_x`` = x[partner], the generator, and (when ``needs_saliency``) the saliency
    maps (B, H, W) of both; returns a :class:`MaskDraw`.
    """

    needs_data: ClassVar[bool]
    needs_saliency: ClassVar[bool]

    def __call__(self, lam: Tensor, x: Tensor, partner_x: Tensor, rng: np.random.Generator, *,
                 saliency: Tensor | None = None,
                 partner_saliency: Tensor | None = None) -> MaskDraw: ...


def is_data_dependent(sampler) -> bool:
    """Whether ``sampler`` is a :class:`DataDependentSampler` rather than a :class:`MaskSampler`."""
    return bool(getattr(sampler, "needs_data", False))


def _as_device_tensor(values: np.ndarray, device, dtype=torch.float32) -> Tensor:
    """Host-drawn randomness -> device tensor without waiting for the device."""
    return torch.from_numpy(np.ascontiguousarray(values)).to(device=device, dtype=dtype,
                                                                non_blocking=True)


def _grid(height: int, width: int, device) -> tuple[Tensor, Tensor]:
    """Row and column indices shaped (1, H, 1) and (1, 1, W) for broadcasting."""
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    return rows, cols


def _box(side_h: Tensor, side_w: Tensor, height: int, width: int,
         rng: np.random.Generator, device) -> Tensor:
    """Boolean (B, H, W): a box of the given integer sides at a uniform pixel centre, clipped.

    The box covers rows [cy − ⌊h/2⌋, cy − ⌊h/2⌋ + h) ∩ [0, H), so an unclipped box has
    exactly the side h (timm's ±⌊h/2⌋ loses a row when h is odd).
    """
    batch = side_h.shape[0]
    cy = _as_device_tensor(rng.integers(0, height, size=batch), device, torch.long)
    cx = _as_device_tensor(rng.integers(0, width, size=batch), device, torch.long)
    top = (cy - torch.div(side_h, 2, rounding_mode="floor")).view(-1, 1, 1)
    left = (cx - torch.div(side_w, 2, rounding_mode="floor")).view(-1, 1, 1)
    rows, cols = _grid(height, width, device)
    inside_rows = (rows >= top) & (rows < top + side_h.view(-1, 1, 1))
    inside_cols = (cols >= left) & (cols < left + side_w.view(-1, 1, 1))
    return inside_rows & inside_cols


def vanilla_mask(lam: Tensor, height: int, width: int, rng: np.random.Generator,
                 device) -> Tensor:
    """No mixing: M = 1."""
    return torch.ones(lam.shape[0], 1, height, width, device=device)


def mixup_mask(lam: Tensor, height: int, width: int, rng: np.random.Generator,
               device) -> Tensor:
    """Mixup: M = λ at every pixel."""
    return lam.to(device).view(-1, 1, 1, 1).expand(-1, 1, height, width).contiguous()


def cutmix_mask(lam: Tensor, height: int, width: int, rng: np.random.Generator,
                device) -> Tensor:
    """CutMix: M = 0 inside a box of side ⌊H√(1−λ)⌋ × ⌊W√(1−λ)⌋ at a uniform centre, 1 outside.

    Clipping at the border makes E[mean M] larger than E[λ] (≈ 0.70 for α = 1 on 32×32);
    the label uses the realised mean, so ỹ stays consistent with x̃.
    """
    cut = torch.sqrt(1.0 - lam.to(device))
    side_h = torch.floor(height * cut).long()
    side_w = torch.floor(width * cut).long()
    inside = _box(side_h, side_w, height, width, rng, device)
    return (~inside).float().unsqueeze(1)


def hmix_mask(r: float) -> MaskSampler:
    """HMix(r): a box of nominal area fraction r·(1−λ) comes whole from the partner (M = 0);
    outside it M = w with w = λ / (outside area fraction), so mean(M) = λ exactly.

    r = 0 is Mixup; r = 1 without clipping is CutMix. The box's sides are
    ⌊H√(r(1−λ))⌋ × ⌊W√(r(1−λ))⌋ at a uniform centre, clipped.
    """
    if not 0.0 <= r <= 1.0:
        raise ConfigError("hmix_r", f"must lie in [0, 1], got {r}")

    def sample(lam: Tensor, height: int, width: int, rng: np.random.Generator,
               device) -> Tensor:
        lam = lam.to(device)
        cut = torch.sqrt(r * (1.0 - lam))
        side_h = torch.floor(height * cut).long()
        side_w = torch.floor(width * cut).long()
        inside = _box(side_h, side_w, height, width, rng, device)
        outside_fraction = 1.0 - inside.float().mean(dim=(1, 2))
        # outside_fraction >= λ because the box area is at most r(1−λ) <= 1−λ, so w <= 1.
        weight = (lam / outside_fraction.clamp_min(1e-12)).clamp(max=1.0)
        mask = torch.where(inside, torch.zeros_like(lam).view(-1, 1, 1),
                           weight.view(-1, 1, 1))
        return mask.unsqueeze(1)

    sample.__name__ = f"hmix_mask(r={r})"
    return sample


def gmix_mask(lam: Tensor, height: int, width: int, rng: np.random.Generator,
              device) -> Tensor:
    """GMix: a Gaussian bump g(p) = exp(−π‖p − c‖² / (λ′·H·W)), λ′ = min(λ, 1−λ), c a uniform pixel.

    The bump belongs to the minority image: M = g if λ < 0.5, else M = 1 − g. Its integral
    over the plane is λ′·H·W, so mean(M) ≈ λ away from the borders (σ² = λ′HW / 2π).
    The official code assumes square images (H·H); this uses H·W.
    """
    lam = lam.to(device)
    batch = lam.shape[0]
    cy = _as_device_tensor(rng.integers(0, height, size=batch), device).view(-1, 1, 1)
    cx = _as_device_tensor(rng.integers(0, width, size=batch), device).view(-1, 1, 1)
    rows, cols = _grid(height, width, device)
    minority = torch.minimum(lam, 1.0 - lam).clamp_min(1e-12).view(-1, 1, 1)
    dist2 = (rows - cy) ** 2 + (cols - cx) ** 2
    bump = torch.exp(-math.pi * dist2 / (minority * height * width))
    mask = torch.where(lam.view(-1, 1, 1) < 0.5, bump, 1.0 - bump)
    return mask.unsqueeze(1)


def stochastic_mask(switch_prob: float) -> MaskSampler:
    """Stochastic Mixup & CutMix: CutMix with probability ``switch_prob``, else Mixup.

    The choice is made per mask: once per batch with one mask per batch, per sample with
    one mask per sample.
    """
    if not 0.0 <= switch_prob <= 1.0:
        raise ConfigError("switch_prob", f"must lie in [0, 1], got {switch_prob}")

    def sample(lam: Tensor, height: int, width: int, rng: np.random.Generator,
               device) -> Tensor:
        use_cutmix = _as_device_tensor(rng.random(lam.shape[0]) < switch_prob, device,
                                       torch.bool).view(-1, 1, 1, 1)
        box = cutmix_mask(lam, height, width, rng, device)
        flat = mixup_mask(lam, height, width, rng, device)
        return torch.where(use_cutmix, box, flat)

    sample.__name__ = f"stochastic_mask(switch_prob={switch_prob})"
    return sample


def sample_lam(rng: np.random.Generator, alpha: float, size: int) -> np.ndarray:
    """λ ~ Beta(α, α), drawn on the host."""
    if not alpha > 0:
        raise ConfigError("alpha", f"must be > 0 (λ ~ Beta(α, α)), got {alpha}")
    return rng.beta(alpha, alpha, size=size)


def mix(x: Tensor, y: Tensor, mask: Tensor, partner: Tensor,
        partner_x: Tensor | None = None, *, check_values: bool = True) -> tuple[Tensor, Tensor]:
    """Form the mixed batch: x̃ = M ⊙ x + (1 − M) ⊙ x[partner], ỹ = m̄ y + (1 − m̄) y[partner].

    ``x`` is floating (B, C, H, W), ``y`` floating soft labels (B, K), ``mask`` (B or 1, 1,
    H, W) with values in [0, 1], and ``partner`` (B,) integer indices in [0, B), all on
    x's device. m̄ is the mean of each mask actually used. ``partner_x`` replaces
    x[partner] when a sampler rearranged the partners' pixels (PuzzleMix's transport);
    their labels are still y[partner]. A wrong argument raises
    :class:`~robustmix.core.errors.ConfigError` naming it (TypeError for a non-tensor).

    The shapes, dtypes and devices are always checked: they are metadata, free, no host
    synchronization. The values (mask finite and in [0, 1], partner indices in range) need
    a reduction and a host synchronization, so they are checked only with
    ``check_values=True`` (the default, for callers of this public function); the training
    hot path (:class:`~robustmix.mixing.Mixer`, PuzzleMix), whose masks and partners come
    from the samplers themselves, passes ``check_values=False`` and never synchronizes here.
    """
    _check_mix_args(x, y, mask, partner)
    if check_values:
        _check_mix_values(mask, partner, x.shape[0])
    if partner_x is None:
        partner_x = x[partner]
    elif checks.tensor("partner_x", partner_x, "images").shape != x.shape:
        raise ConfigError("partner_x", f"must have the shape of x {tuple(x.shape)}, "
                                       f"got {tuple(partner_x.shape)}")
    mask = mask.to(x.dtype)
    x_mixed = torch.lerp(partner_x, x, mask)
    weight = mask.mean(dim=(1, 2, 3)).to(y.dtype).unsqueeze(1)
    y_mixed = torch.lerp(y[partner], y, weight)
    return x_mixed, y_mixed


def _check_mix_args(x: Tensor, y: Tensor, mask: Tensor, partner: Tensor) -> None:
    """The shapes, dtypes and devices of :func:`mix`'s arguments: metadata only, no sync."""
    x = checks.tensor("x", x, "images (B, C, H, W)")
    checks.ndim("x", x, 4, "(B, C, H, W)")
    checks.dtype("x", x, "floating")
    checks.nonempty("x", x, "image of at least one pixel")
    batch, _, height, width = x.shape
    y = checks.tensor("y", y, "soft labels (B, K)")
    if y.dim() != 2 or y.shape[0] != batch or y.shape[1] == 0:
        raise ConfigError("y", f"must be probabilities of shape (batch_size, classes) = "
                               f"({batch}, K), got {tuple(y.shape)}")
    checks.dtype("y", y, "floating")
    mask = checks.tensor("mask", mask, "(B or 1, 1, H, W)")
    if mask.dim() != 4 or mask.shape[0] not in (1, batch) or mask.shape[1] != 1 \
            or mask.shape[2:] != x.shape[2:]:
        raise ConfigError("mask", f"must have shape ({batch} or 1, 1, {height}, {width}) "
                                  f"for x of shape {tuple(x.shape)}, got {tuple(mask.shape)}")
    if not (checks.is_floating(mask) or mask.dtype == torch.bool):
        raise ConfigError("mask", f"must have a floating or bool dtype, got {mask.dtype}")
    partner = checks.tensor("partner", partner, "indices (B,)")
    if partner.dim() != 1 or partner.shape[0] != batch:
        raise ConfigError("partner", f"must be ({batch},) indices into the batch, "
                                     f"got shape {tuple(partner.shape)}")
    checks.dtype("partner", partner, "integer")
    for name, t in (("y", y), ("mask", mask), ("partner", partner)):
        checks.same_device(name, t, "x", x.device)


def _check_mix_values(mask: Tensor, partner: Tensor, batch: int) -> None:
    """Mask finite and in [0, 1], partners in [0, B): one host synchronization."""
    mask_bad = ~((mask >= 0) & (mask <= 1)) if checks.is_floating(mask) else mask.new_zeros(())
    partner_bad = (partner < 0) | (partner >= batch)
    bad_mask, bad_partner = torch.stack([mask_bad.any(), partner_bad.any()]).tolist()
    if bad_mask:
        checks.in_unit_range("mask", mask, "mask values (finite)")
    if bad_partner:
        raise ConfigError("partner", f"must be indices in [0, {batch}), got indices from "
                                     f"{int(partner.min())} to {int(partner.max())}")


def mask_kernel(sampler: MaskSampler, size: int | tuple[int, int], *, alpha: float = 1.0,
                draws: int = 4096, seed: int = 0, chunk: int = 512,
                device="cpu") -> np.ndarray:
    """The regularization kernel c(p) = E_{λ,M}[(1 − M_u)(1 − M_{u+p})] of a mask sampler.

    For horizontal offsets p = 0..W−1, averaged over every position u = (row, col) with
    col + p < W, estimated from ``draws`` masks with λ ~ Beta(α, α). Mixup gives
    E[(1−λ)²] at every p (1/3 for α = 1); CutMix falls from E[1 − mean M] at p = 0 to 0.
    """
    if is_data_dependent(sampler):
        raise TypeError("this sampler's masks depend on the images: estimate its kernel on "
                        "real batches with robustmix.mixing.puzzlemix.kernel_on_batches")
    height, width = _check_kernel_args(size, alpha, draws, chunk)
    rng = np.random.default_rng(seed)
    total = torch.zeros(width, dtype=torch.float64)
    done = 0
    while done < draws:
        n = min(chunk, draws - done)
        lam = _as_device_tensor(sample_lam(rng, alpha, n), device)
        total += kernel_sums((1.0 - sampler(lam, height, width, rng, device)).double().squeeze(1))
        done += n
    return (total / draws).numpy()


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_kernel_args(size, alpha, draws, chunk) -> tuple[int, int]:
    """:func:`mask_kernel`'s settings checked; returns (height, width)."""
    pair = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    if len(pair) != 2 or not all(_is_int(s) and s >= 2 for s in pair):
        raise ConfigError("size", f"must be an int >= 2 or a pair (H, W) of ints >= 2 (the "
                                  f"kernel needs offsets p = 0..W−1), got {size!r}")
    if not _is_int(draws) or draws < 1:
        raise ConfigError("draws", f"must be an int >= 1, got {draws!r}")
    if not _is_int(chunk) or chunk < 1:
        raise ConfigError("chunk", f"must be an int >= 1, got {chunk!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)) \
            or not alpha > 0 or not np.isfinite(alpha):
        raise ConfigError("alpha", f"must be a finite number > 0 (λ ~ Beta(α, α)), got {alpha!r}")
    return int(pair[0]), int(pair[1])


def kernel_sums(hole: Tensor) -> Tensor:
    """Σ over masks of the position-averaged (1 − M_u)(1 − M_{u+p}), p = 0..W−1.

    ``hole`` is 1 − M of shape (N, H, W); returns float64 sums of shape (W,) on the CPU,
    which :func:`mask_kernel` divides by the number of masks.
    """
    width = hole.shape[-1]
    sums = torch.zeros(width, dtype=torch.float64)
    for offset in range(width):
        products = hole[:, :, : width - offset] * hole[:, :, offset:]
        sums[offset] = products.mean(dim=(1, 2)).sum().cpu()
    return sums
