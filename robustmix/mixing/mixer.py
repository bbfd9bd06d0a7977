"""Mixing training batches with a run's sampler.

:class:`Mixer` takes its sampler from the registry (:mod:`robustmix.mixing.registry`),
draws (λ, mask, partner) once per batch and then applies them with
:func:`robustmix.mixing.samplers.mix`, so images and labels never disagree.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from robustmix.core.config import MixConfig
from robustmix.mixing.registry import sampler_of
from robustmix.mixing.samplers import _as_device_tensor, is_data_dependent, mix, sample_lam


SaliencyFn = Callable[[Tensor, Tensor], Tensor]   # (x (B, C, H, W), y (B, K)) -> (B, H, W)


class Mixer:
    """Draws (λ, mask, partner) for a batch from a host RNG, then mixes with :func:`mix`.

    For a data-dependent sampler (PuzzleMix) the draw needs the batch and, when the sampler
    asks for it, ``saliency_fn(x, y)``: the Mixer calls it once per mixed batch on the clean
    batch (the training loop passes one that does the extra forward and backward pass).
    """

    def __init__(self, config: MixConfig):
        config.validate()
        self.config = config
        self.sampler = sampler_of(config)

    @property
    def active(self) -> bool:
        return self.config.mix != "vanilla" and self.config.mix_prob > 0

    @property
    def needs_data(self) -> bool:
        return is_data_dependent(self.sampler)

    @property
    def needs_saliency(self) -> bool:
        return self.active and self.needs_data and bool(self.sampler.needs_saliency)

    def check_image_size(self, height: int, width: int) -> None:
        """Refuse, before any work, an image size the sampler cannot handle (PuzzleMix's
        blocks must tile the image)."""
        check = getattr(self.sampler, "check_image_size", None)
        if self.active and check is not None:
            check(height, width)

    def _lam_and_applied(self, batch: int, rng: np.random.Generator):
        count = batch if self.config.lam_per == "sample" else 1
        lam = sample_lam(rng, self.config.alpha, count)
        return lam, rng.random(count) < self.config.mix_prob

    def _partner(self, batch: int, rng: np.random.Generator, device) -> Tensor:
        if self.config.pairing == "flip":
            return torch.arange(batch - 1, -1, -1, device=device)
        return _as_device_tensor(rng.permutation(batch), device, torch.long)

    def draw(self, batch: int, height: int, width: int, rng: np.random.Generator,
             device) -> tuple[Tensor, Tensor]:
        """The mask (B or 1, 1, H, W) and partner indices (B,) for one batch."""
        if self.needs_data:
            raise TypeError(f"{self.config.mix} draws its masks from the images: call the "
                            "Mixer with the batch, Mixer(config)(x, y, rng, saliency_fn=...)")
        lam, applied = self._lam_and_applied(batch, rng)
        mask = self.sampler(_as_device_tensor(lam, device), height, width, rng, device)
        if not applied.all():
            keep = _as_device_tensor(applied, device, torch.bool).view(-1, 1, 1, 1)
            mask = torch.where(keep, mask, torch.ones_like(mask))
        return mask, self._partner(batch, rng, device)

    def __call__(self, x: Tensor, y: Tensor, rng: np.random.Generator,
                 saliency_fn: SaliencyFn | None = None) -> tuple[Tensor, Tensor]:
        """Mix a batch ``x`` (B, C, H, W) with soft labels ``y`` (B, K).

        ``saliency_fn`` is needed (and called) only by samplers with ``needs_saliency``.
        """
        if not self.active:
            return x, y
        if x.shape[0] < 2:
            raise ValueError(f"x: mixing needs a batch of at least 2 images, got {x.shape[0]}")
        if self.needs_data:
            return self._mix_with_data(x, y, rng, saliency_fn)
        mask, partner = self.draw(x.shape[0], x.shape[2], x.shape[3], rng, x.device)
        return mix(x, y, mask, partner, check_values=False)  # no host sync on the hot path

    def _mix_with_data(self, x: Tensor, y: Tensor, rng: np.random.Generator,
                       saliency_fn: SaliencyFn | None) -> tuple[Tensor, Tensor]:
        """Draw order: λ, which masks apply, partners, then the sampler's own draws."""
        batch = x.shape[0]
        lam, applied = self._lam_and_applied(batch, rng)
        partner = self._partner(batch, rng, x.device)
        if not applied.any():
            return x, y   # no extra pass for a batch that is not mixed
        saliency = partner_saliency = None
        if self.sampler.needs_saliency:
            if saliency_fn is None:
                raise TypeError(f"{self.config.mix} needs saliency maps: pass "
                                "saliency_fn(x, y) -> (B, H, W) to the Mixer")
            saliency = saliency_fn(x, y).detach()
            if saliency.shape != (batch, x.shape[2], x.shape[3]):
                raise ValueError(f"saliency_fn should return ({batch}, {x.shape[2]}, "
                                 f"{x.shape[3]}), got {tuple(saliency.shape)}")
            partner_saliency = saliency[partner]
        draw = self.sampler(_as_device_tensor(lam, x.device), x, x[partner], rng,
                            saliency=saliency, partner_saliency=partner_saliency)
        mask, own, partner_x = draw
        if not applied.all():
            keep = _as_device_tensor(applied, x.device, torch.bool).view(-1, 1, 1, 1)
            mask = torch.where(keep, mask, torch.ones_like(mask))
            own = torch.where(keep, own, x)
        return mix(own, y, mask, partner, partner_x=partner_x, check_values=False)
