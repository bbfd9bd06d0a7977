"""FMix as a robustmix plugin: the worked example of bringing your own MSDA.

FMix (Harris, Marcu, Painter, Niranjan, Prügel-Bennett, Hare: "FMix: Enhancing Mixed Sample
Data Augmentation", arXiv:2002.12047, 2020) draws a mask from low-frequency noise:

1. a random spectrum Z(f) = (a + i·b) / max(|f|, 1/max(H, W))^δ with a, b ~ N(0, 1) at every
   frequency f of the real 2-D FFT of an H × W image (δ = ``decay_power``, 3 by default),
   so low frequencies dominate;
2. the grey image g = Re(IFFT(Z)), a smooth random field;
3. the mask M = 1 on the ⌊λ·H·W⌉ pixels where g is largest, 0 elsewhere: binary, and
   mean(M) = λ up to the whole pixel that λ·H·W is rounded to.

The rounding is stochastic (up with probability equal to the fractional part of λ·H·W),
so E[mean M | λ] = λ exactly; the reference code (``ecs-vlc/FMix``, ``binarise_mask``)
rounds up or down with probability ½ each, which is biased by up to half a pixel. The
reference's ``max_soft`` (soft mask edges) is left out: its default, 0, is the FMix of the
paper. Every random number comes from the NumPy generator the Mixer passes in, the FFT and
the ranking run on the host in float64, so a seed gives the same masks on any device.
(Reading λ back to the host costs one device synchronization per mask draw.)

Use it without installing anything (the module is imported from the current directory or
the Python path)::

    robustmix train --mix examples.fmix:fmix                       # run name: ...-fmix-s0
    robustmix train --mix examples.fmix:fmix --mix-option decay_power=2
    robustmix study --methods vanilla,mixup,cutmix,examples.fmix:fmix

or, from a package of your own, register it by an entry point in its ``pyproject.toml``,
and ``--mix fmix`` works everywhere that package is installed::

    [project.entry-points."robustmix.methods"]
    fmix = "mypackage.fmix:fmix"

This module is not part of robustmix; it uses only the public API.
"""

from __future__ import annotations

import math

import numpy as np
import torch

import robustmix
from robustmix.core.errors import ConfigError


def low_frequency_noise(batch: int, height: int, width: int, decay_power: float,
                        rng: np.random.Generator) -> np.ndarray:
    """``batch`` grey images g = Re(IFFT(Z)), Z(f) = (a + ib) / max(|f|, 1/max(H, W))^δ, as
    float64 (batch, H, W); a, b standard normal, drawn from ``rng``."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    frequency = np.sqrt(fx * fx + fy * fy)
    scale = 1.0 / np.maximum(frequency, 1.0 / max(height, width)) ** decay_power
    shape = (batch, height, width // 2 + 1)
    spectrum = scale * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    return np.fft.irfft2(spectrum, s=(height, width))


def pixel_counts(lam: np.ndarray, pixels: int, rng: np.random.Generator) -> np.ndarray:
    """How many pixels each mask keeps: λ·N rounded up with probability frac(λ·N), else
    down, so the count's mean is exactly λ·N and it is within one pixel of it."""
    exact = np.clip(lam, 0.0, 1.0) * pixels
    low = np.floor(exact)
    return (low + (rng.random(len(lam)) < exact - low)).astype(np.int64)


def top_pixels(grey: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Binary masks (batch, H, W): 1 on the ``counts[b]`` largest pixels of ``grey[b]``."""
    batch = grey.shape[0]
    flat = grey.reshape(batch, -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(flat.shape[1]), flat.shape),
                      axis=1)
    return (ranks < counts[:, None]).reshape(grey.shape)


def fmix(*, decay_power: float = 3.0):
    """The FMix mask sampler: (λ (B,), H, W, rng, device) -> M (B, 1, H, W) in {0, 1},
    mean(M) = λ up to one pixel. ``decay_power`` δ >= 0: how fast the spectrum decays
    (larger: smoother, larger blobs)."""
    if isinstance(decay_power, bool) or not isinstance(decay_power, (int, float)) or \
            not math.isfinite(decay_power) or decay_power < 0:
        raise ConfigError("decay_power", f"must be a finite number >= 0, got {decay_power!r}")

    def sample(lam: torch.Tensor, height: int, width: int, rng: np.random.Generator,
               device) -> torch.Tensor:
        lam_host = lam.detach().to("cpu", torch.float64).numpy().reshape(-1)
        grey = low_frequency_noise(len(lam_host), height, width, decay_power, rng)
        masks = top_pixels(grey, pixel_counts(lam_host, height * width, rng))
        return torch.from_numpy(masks).to(device=device, dtype=torch.float32).unsqueeze(1)

    sample.__name__ = f"fmix(decay_power={decay_power})"
    return sample


# Optional: a colour and a summary for the figures and tables. Without this call the
# method still works (named after the factory, a colour picked by its name, its options
# read from the keyword parameters above).
robustmix.register_method("fmix", fmix, colour="#e377c2",
                          summary="the top λ of low-frequency Fourier noise (Harris et al. 2020)")
