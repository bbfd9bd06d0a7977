"""The per-batch augmentation of training images: pad-crop, flip and random-resized crop as
batched tensor ops, with every random draw made on the host by the caller's generator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robustmix.core.errors import UsageError

RESIZED_CROP_RATIO = (3 / 4, 4 / 3)  # aspect-ratio range of torchvision's RandomResizedCrop
RESIZED_CROP_TRIES = 10              # candidate boxes per sample, as torchvision tries


@dataclass(frozen=True)
class Augment:
    """The per-batch augmentation of training images.

    pad: random crop after zero padding by this many pixels on each side (0: no crop).
    flip: random horizontal flip with probability 1/2.
    crop_scale: random-resized-crop area scale (lo, hi) with aspect ratio in (3/4, 4/3), as
        torchvision's RandomResizedCrop; when set it replaces the pad-crop.
    """

    pad: int = 0
    flip: bool = False
    crop_scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.pad, bool) or not isinstance(self.pad, (int, np.integer)) or self.pad < 0:
            raise UsageError(f"crop padding must be an integer >= 0, got {self.pad!r}")
        object.__setattr__(self, "pad", int(self.pad))
        object.__setattr__(self, "flip", bool(self.flip))
        if self.crop_scale is not None:
            try:
                lo, hi = (float(v) for v in self.crop_scale)
            except (TypeError, ValueError):
                raise UsageError(f"crop scale must be two numbers lo,hi with 0 < lo <= hi <= 1, "
                                 f"got {self.crop_scale!r}") from None
            if not 0 < lo <= hi <= 1:
                raise UsageError(f"crop scale must satisfy 0 < lo <= hi <= 1, got ({lo}, {hi})")
            object.__setattr__(self, "crop_scale", (lo, hi))


def draw_resized_crop_boxes(rng: np.random.Generator, n: int, height: int, width: int,
                            scale: tuple[float, float],
                            ratio: tuple[float, float] = RESIZED_CROP_RATIO,
                            tries: int = RESIZED_CROP_TRIES) -> np.ndarray:
    """Boxes (top, left, h, w) of shape (n, 4), int64, drawn as RandomResizedCrop.get_params.

    For each sample ``tries`` candidates are drawn at once: area ``H*W*U(scale)`` and aspect
    ratio ``exp(U(log ratio))``, ``w = round(sqrt(area*ratio))``, ``h = round(sqrt(area/ratio))``;
    the first candidate that fits in the image is taken, at a uniform position. When none
    fits, the fallback is torchvision's: the centre crop of the whole image clamped to the
    ratio range.
    """
    u_area = rng.random((n, tries))
    u_ratio = rng.random((n, tries))
    u_pos = rng.random((n, 2))
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w = np.round(np.sqrt(area * aspect)).astype(np.int64)  # np.round rounds half to even, as round()
    h = np.round(np.sqrt(area / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.argmax(axis=1)
    found = fits.any(axis=1)
    rows = np.arange(n)

    in_ratio = width / height
    if in_ratio < min(ratio):
        fall_w, fall_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fall_w, fall_h = int(round(height * max(ratio))), height
    else:
        fall_w, fall_h = width, height
    box_h = np.where(found, h[rows, first], fall_h)
    box_w = np.where(found, w[rows, first], fall_w)
    top = np.where(found, np.floor(u_pos[:, 0] * (height - box_h + 1)), (height - fall_h) // 2)
    left = np.where(found, np.floor(u_pos[:, 1] * (width - box_w + 1)), (width - fall_w) // 2)
    return np.stack([top, left, box_h, box_w], axis=1).astype(np.int64)


def batch_crop(x: Tensor, offsets: Tensor, pad: int) -> Tensor:
    """Per-sample crops of the zero-padded batch: ``out[b] = pad(x)[b, :, oy:oy+H, ox:ox+W]``.

    ``offsets`` is (B, 2) int64 (oy, ox) in [0, 2*pad] on x's device; works on any dtype.
    """
    if pad == 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def batch_flip(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror horizontally the samples where the (B,) bool ``mask`` is set."""
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def batch_resized_crop(x: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop each sample to its box (top, left, h, w) and resize it to ``size``, bilinearly.

    One ``affine_grid`` + ``grid_sample`` (bilinear, align_corners=False) for the batch, with
    the sampling points clamped to the box: the same result as torch's bilinear resize of
    the cropped image (no antialiasing; the crops here are only ever enlarged). Returns
    float32 in the units of ``x``.
    """
    b, c = x.shape[:2]
    height, width = x.shape[2:]
    boxes = boxes.to(torch.float32)
    top, left, box_h, box_w = boxes.unbind(1)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = box_w / width
    theta[:, 0, 2] = (2 * left + box_w) / width - 1
    theta[:, 1, 1] = box_h / height
    theta[:, 1, 2] = (2 * top + box_h) / height - 1
    grid = F.affine_grid(theta, [b, c, size[0], size[1]], align_corners=False)
    # Clamp to the box's outer pixel centres, as a resize of the cropped image clamps to its
    # border: upsampling must not blend in the pixels just outside the box.
    low = torch.stack([(2 * left + 1) / width - 1, (2 * top + 1) / height - 1], dim=1)
    high = torch.stack([(2 * (left + box_w) - 1) / width - 1,
                        (2 * (top + box_h) - 1) / height - 1], dim=1)
    grid = torch.maximum(torch.minimum(grid, high[:, None, None, :]), low[:, None, None, :])
    return F.grid_sample(x.to(torch.float32), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def _to_device(array: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device, non_blocking=True)


def _to_unit_float(x: Tensor) -> Tensor:
    return x.to(torch.float32).div_(255)
