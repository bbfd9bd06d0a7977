"""Common corruptions for any data set, on the fly: noise, blur and digital, severities 1-5.

``corrupt(x, name, severity, generator)`` takes a float batch (N, C, H, W) in [0, 1] on any
device and returns the corrupted batch, same shape, dtype and device, clamped to [0, 1];
severity 0 returns ``x`` unchanged. Random draws come from ``generator`` only (a
``torch.Generator`` on ``x``'s device; :func:`generator_for` makes one per corruption and
severity), so a seed, the same batches and the same device give the same images.

:data:`CORRUPTIONS` is the one table of parameters: one value per severity 1-5. Spatial
parameters are fractions of the image side s = min(H, W), so they scale with the image size;
the others are in [0, 1] intensity units (or JPEG quality). docs/guide/evaluate.md prints this
table (``python docs/readme_table.py corruptions``).

Written from the definitions below with torchvision's v2 functional ops (gaussian_blur,
adjust_contrast, resize), Pillow's JPEG codec and plain tensor code; no code is taken from the ImageNet-C
generators, and the parameters are this project's own (so numbers are not comparable with
ImageNet-C's or CIFAR-10-C's; for CIFAR use the released -C files).
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor

SEVERITIES = (1, 2, 3, 4, 5)
ELASTIC_SMOOTHNESS = 0.1   # σ of the elastic displacement field's Gaussian smoothing, × s


@dataclass(frozen=True)
class Corruption:
    family: str                       # noise | blur | digital
    parameter: str                    # what the values are, for the README's table
    values: tuple[float, ...]         # severity 1..5
    apply: Callable[[Tensor, float, torch.Generator], Tensor]   # unclamped


def _side(x: Tensor) -> int:
    return min(x.shape[-2], x.shape[-1])


def gaussian_noise(x: Tensor, std: float, g: torch.Generator) -> Tensor:
    """x + N(0, std²) independently per pixel and channel."""
    return x + std * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def shot_noise(x: Tensor, rate: float, g: torch.Generator) -> Tensor:
    """Poisson(rate · x) / rate: photon noise with ``rate`` photons at full intensity."""
    return torch.poisson(x * rate, generator=g) / rate


def impulse_noise(x: Tensor, fraction: float, g: torch.Generator) -> Tensor:
    """Salt and pepper: each pixel value is set to 0 or to 1 (equally likely) with
    probability ``fraction``, independently per channel."""
    u = torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)
    out = torch.where(u < fraction / 2, torch.zeros_like(x), x)
    return torch.where((u >= fraction / 2) & (u < fraction), torch.ones_like(x), out)


def _odd_kernel(radius: float, side: int) -> int:
    """An odd kernel size covering ``radius`` pixels each way, at most 2·side − 1 (the
    reflect padding's limit)."""
    return min(2 * max(1, math.ceil(radius)) + 1, 2 * side - 1)


def gaussian_blur(x: Tensor, sigma_frac: float, g: torch.Generator) -> Tensor:
    """Gaussian blur of σ = sigma_frac · s pixels (kernel ±3σ, reflected borders)."""
    sigma = sigma_frac * _side(x)
    k = _odd_kernel(3 * sigma, _side(x))
    return TF.gaussian_blur(x, [k, k], [sigma, sigma])


def motion_blur(x: Tensor, length_frac: float, g: torch.Generator) -> Tensor:
    """The mean along a line segment of length length_frac · s pixels through each pixel,
    at a uniform random angle per image (the segment drawn anti-aliased: weight 1 − distance
    to it, clipped at 0; reflected borders)."""
    n, c, h, w = x.shape
    length = length_frac * _side(x)
    k = _odd_kernel(length / 2 + 1, _side(x))
    angle = torch.rand(n, generator=g, device=x.device, dtype=x.dtype) * math.pi
    direction = torch.stack([angle.sin(), angle.cos()], dim=1)            # (N, 2): dy, dx
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    grid = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1)   # (k, k, 2)
    along = torch.einsum("ijd,nd->nij", grid, direction).clamp(-length / 2, length / 2)
    nearest = along[..., None] * direction[:, None, None, :]
    weight = (1 - (grid - nearest).norm(dim=-1)).clamp(min=0)            # (N, k, k)
    weight = weight / weight.sum(dim=(1, 2), keepdim=True)
    # one kernel per image: a grouped convolution over the N·C planes
    kernels = weight.repeat_interleave(c, dim=0)[:, None]
    padded = F.pad(x.reshape(1, n * c, h, w), [k // 2] * 4, mode="reflect")
    return F.conv2d(padded, kernels, groups=n * c).reshape(n, c, h, w)


def contrast(x: Tensor, factor: float, g: torch.Generator) -> Tensor:
    """Blend with the image's mean grey level: factor 1 leaves it, 0 makes it uniform."""
    return TF.adjust_contrast(x, factor)


def brightness(x: Tensor, shift: float, g: torch.Generator) -> Tensor:
    """x + shift on every channel. Additive, not torchvision's adjust_brightness (which
    multiplies, and so leaves black backgrounds such as the digits' black)."""
    return x + shift


def jpeg(x: Tensor, quality: float, g: torch.Generator) -> Tensor:
    """JPEG compression at ``quality`` (1-100) of the image quantized to 8 bits, with Pillow
    on the CPU (torchvision's jpeg op is deprecated from 0.29 on): 3-channel images as RGB
    (Pillow's default 4:2:0 chroma), any other channel count plane by plane as greyscale."""
    u8 = x.clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()     # (N, C, H, W)
    q = int(quality)
    if u8.shape[1] == 3:
        out = np.stack([_jpeg_round_trip(im.transpose(1, 2, 0), q).transpose(2, 0, 1)
                        for im in u8])
    else:
        out = np.stack([[_jpeg_round_trip(plane, q) for plane in im] for im in u8])
    return torch.from_numpy(out).to(x.device, x.dtype).div(255)


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """One (H, W) or (H, W, 3) uint8 image through a JPEG file in memory."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer))


def pixelate(x: Tensor, scale: float, g: torch.Generator) -> Tensor:
    """Downsample to scale · (H, W) (antialiased) and back up with nearest neighbours."""
    h, w = x.shape[-2:]
    small = [max(1, round(h * scale)), max(1, round(w * scale))]
    down = TF.resize(x, small, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.resize(down, [h, w], interpolation=TF.InterpolationMode.NEAREST)


def elastic(x: Tensor, magnitude_frac: float, g: torch.Generator) -> Tensor:
    """Resample at positions moved by a smooth random field: uniform noise smoothed by a
    Gaussian of σ = ELASTIC_SMOOTHNESS · s, scaled per image to an RMS displacement of
    magnitude_frac · s pixels; bilinear, reflected borders. By hand with grid_sample (what
    torchvision's elastic_transform does inside) because that op takes one field per call,
    and each image here gets its own."""
    n, _, h, w = x.shape
    side = _side(x)
    field = torch.rand((n, 2, h, w), generator=g, device=x.device, dtype=x.dtype) * 2 - 1
    sigma = ELASTIC_SMOOTHNESS * side
    k = _odd_kernel(3 * sigma, side)
    field = TF.gaussian_blur(field, [k, k], [sigma, sigma])
    rms = field.square().mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp(min=1e-12)
    pixels = field / rms * (magnitude_frac * side)                        # (N, 2, H, W): dx, dy
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=x.device, dtype=x.dtype)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)      # (H, W, 2): x, y
    shift = torch.stack([pixels[:, 0] * 2 / w, pixels[:, 1] * 2 / h], dim=-1)
    return F.grid_sample(x, base + shift, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": Corruption("noise", "σ (intensity)", (0.04, 0.08, 0.12, 0.18, 0.26),
                                 gaussian_noise),
    "shot_noise": Corruption("noise", "photons at full intensity", (60, 25, 12, 6, 3),
                             shot_noise),
    "impulse_noise": Corruption("noise", "share of values set to 0 or 1",
                                (0.02, 0.05, 0.09, 0.15, 0.24), impulse_noise),
    "gaussian_blur": Corruption("blur", "σ / s", (0.025, 0.04, 0.055, 0.075, 0.1),
                                gaussian_blur),
    "motion_blur": Corruption("blur", "length / s", (0.06, 0.1, 0.15, 0.2, 0.3), motion_blur),
    "contrast": Corruption("digital", "contrast factor", (0.75, 0.55, 0.4, 0.3, 0.2), contrast),
    "brightness": Corruption("digital", "added intensity", (0.1, 0.2, 0.3, 0.4, 0.5),
                             brightness),
    "jpeg": Corruption("digital", "JPEG quality", (80, 60, 40, 20, 10), jpeg),
    "pixelate": Corruption("digital", "kept resolution (× H, W)", (0.85, 0.75, 0.6, 0.5, 0.4),
                           pixelate),
    "elastic": Corruption("digital", "RMS displacement / s", (0.015, 0.03, 0.045, 0.06, 0.08),
                          elastic),
}


def check_name(name: str) -> Corruption:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name]


def corrupt(x: Tensor, name: str, severity: int, generator: torch.Generator | None = None
            ) -> Tensor:
    """``x`` (float (N, C, H, W) in [0, 1]) under corruption ``name`` at ``severity`` (0-5),
    clamped to [0, 1]; severity 0 is ``x`` itself."""
    corruption = check_name(name)
    if isinstance(severity, bool) or severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be 0-5, got {severity!r}")
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"images must be a float (N, C, H, W) batch, got {x.dtype} "
                         f"{tuple(x.shape)}")
    if severity == 0:
        return x
    if generator is None:
        generator = generator_for(0, name, severity, x.device)
    out = corruption.apply(x, float(corruption.values[severity - 1]), generator)
    return out.clamp_(0, 1).to(x.dtype)


def generator_for(seed: int, name: str, severity: int, device) -> torch.Generator:
    """A generator on ``device`` seeded from (seed, corruption, severity): each cell of the
    suite draws the same numbers whichever cells run before it."""
    key = zlib.crc32(f"{seed}/{name}/{severity}".encode())
    return torch.Generator(device=torch.device(device)).manual_seed(key)


def parameter_table() -> list[list[str]]:
    """The README's table: corruption, family, parameter, then the value at each severity."""
    return [[name, c.family, c.parameter, *(f"{v:g}" for v in c.values)]
            for name, c in CORRUPTIONS.items()]
