"""Cost of one mixing call: robustmix's Mixer (draw + mix) beside torchvision's v2 MixUp/CutMix.

    python -m benchmarks.bench_mixing                       # CPU, or the GPU when present
    python -m benchmarks.bench_mixing --device cuda --repeats 1000

The batch is 256×3×32×32 float32 in [0, 1] on the device (labels: 10 classes). For
robustmix one call is ``Mixer(config)(x, soft_labels, rng)``: λ, the mask and the partners
drawn, then x̃ and ỹ formed, for every data-free MSDA (PuzzleMix needs a model and is
timed by bench_puzzlemix.py), with one λ per batch and one per sample. torchvision's
``v2.MixUp`` / ``v2.CutMix`` take integer labels and one-hot them inside the call, and
draw one λ per batch only (no per-sample mode). Each call is timed on its own: the device
synchronized before it, and after it on a GPU via CUDA events; the numbers are the median
and interquartile range over ``--repeats`` calls, after ``--warmup`` untimed calls. The
methods take turns in 10 rounds, so a shift in a shared machine's load hits them alike.
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
import torch

if __package__ in (None, ""):
    from pathlib import Path
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (format_machine, machine_info, resolve_device, set_threads,
                               summarize_us, time_interleaved)
from robustmix.mixing import DATA_FREE_MIX_NAMES, LAM_PER, MixConfig, Mixer
from robustmix.training.trainer import soft_labels

NUM_CLASSES = 10


def run(*, batch_size: int = 256, size: int = 32, repeats: int | None = None,
        warmup: int = 10, device: str = "auto", seed: int = 0) -> dict:
    """Time every mixing call; returns ``{"machine", "settings", "results"}``.

    ``results`` maps ``"robustmix:<mix>:<batch|sample>"`` and ``"torchvision:MixUp"``,
    ``"torchvision:CutMix"`` to the :func:`summarize_us` of their per-call times.
    """
    from torchvision.transforms import v2

    device = resolve_device(device)
    if repeats is None:
        repeats = 1000 if device.type == "cuda" else 200
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 3, size, size, generator=generator).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator).to(device)
    target = soft_labels(y, NUM_CLASSES, 0.0)

    calls = {}
    for mix in DATA_FREE_MIX_NAMES:
        for lam_per in LAM_PER:
            mixer = Mixer(MixConfig(mix=mix, lam_per=lam_per))
            rng = np.random.default_rng(seed)
            calls[f"robustmix:{mix}:{lam_per}"] = partial(mixer, x, target, rng)
    torch.manual_seed(seed)  # torchvision draws λ and the box from the global torch RNG
    calls["torchvision:MixUp"] = partial(v2.MixUp(alpha=1.0, num_classes=NUM_CLASSES), x, y)
    calls["torchvision:CutMix"] = partial(v2.CutMix(alpha=1.0, num_classes=NUM_CLASSES), x, y)
    seconds = time_interleaved(calls, device=device, repeats=repeats, warmup=warmup)
    results = {name: summarize_us(values) for name, values in seconds.items()}
    return {"machine": machine_info(device),
            "settings": {"batch_size": batch_size, "shape": (batch_size, 3, size, size),
                         "repeats": repeats, "warmup": warmup, "device": str(device)},
            "results": results}


def format_results(result: dict) -> str:
    settings = result["settings"]
    lines = [format_machine(result["machine"]), "",
             f"mixing one batch {'×'.join(map(str, settings['shape']))} float32 on "
             f"{settings['device']}: µs per call, median [IQR] over {settings['repeats']} "
             f"calls after {settings['warmup']} warm-up",
             f"  {'library':<13}{'method':<12}{'λ per':<8}{'median µs':>12}"
             f"{'IQR µs':>10}"]
    for key, stats in result["results"].items():
        parts = key.split(":")
        impl, method = parts[0], parts[1]
        lam_per = parts[2] if len(parts) > 2 else "batch"
        lines.append(f"  {impl:<13}{method:<12}{lam_per:<8}{stats['median_us']:>12.1f}"
                     f"{stats['iqr_us']:>10.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=32, help="image side (square, 3 channels)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per method (default 1000 on CUDA, 200 on the CPU)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls first")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print(format_results(run(batch_size=args.batch_size, size=args.size, repeats=args.repeats,
                             warmup=args.warmup, device=args.device)))


if __name__ == "__main__":
    main()
