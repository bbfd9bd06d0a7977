"""Cost of one training step under PuzzleMix against CutMix.

    python -m benchmarks.bench_puzzlemix                       # both setups, CPU or the GPU
    python -m benchmarks.bench_puzzlemix --setups digits --steps 40 --device cpu

A step is what the training loop does per batch: mix (for PuzzleMix: the saliency pass on
the clean batch, the block count draw, the graph cuts on the host, the transport), then
forward, soft-target loss, backward and SGD. Setups: ``digits`` = smallcnn on the embedded
digits at 16×16, ``cifar`` = preactresnet18 on random 32×32×3 images (10 classes); batch 64.
PuzzleMix draws its block count n ∈ {2, 4, 8, 16} per batch, so its mean is over many steps
(the same seeded draws for every run), and its parts are timed per n as well. The two
methods alternate step by step, so the ratio holds up on a shared machine; times are
wall-clock with the device synchronized around what is timed.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import numpy as np
import torch

from benchmarks.common import format_machine, machine_info, resolve_device, set_threads, sync
from robustmix.data import load_dataset
from robustmix.mixing import MixConfig, Mixer
from robustmix.models import build_model
from robustmix.mixing.puzzlemix import PuzzleMix, input_saliency, saliency_of
from robustmix.core.config import TrainConfig
from robustmix.training.trainer import train_step

BATCH = 64


def setup(name: str, device: torch.device):
    """(model, batches of (x, y), classes) for a setup."""
    if name == "digits":
        data = load_dataset("digits", device=device)
        images, labels = data.tensors("train")
        model = build_model("smallcnn", num_classes=10, in_channels=1, mean=data.mean,
                            std=data.std)
        x_all = images.float() / 255
    else:
        g = torch.Generator().manual_seed(0)
        x_all = torch.rand(1024, 3, 32, 32, generator=g).to(device)
        labels = torch.randint(0, 10, (1024,), generator=g).to(device)
        model = build_model("preactresnet18", num_classes=10, in_channels=3,
                            mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    model = model.to(device)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(8):
        index = torch.from_numpy(rng.choice(x_all.shape[0], BATCH, replace=False)).to(device)
        batches.append((x_all[index].contiguous(), labels[index]))
    return model, batches


def time_steps(model, batches, steps: int, device) -> dict[str, list[float]]:
    """Seconds per training step (:func:`robustmix.training.trainer.train_step`) for CutMix and
    PuzzleMix, one entry per step.

    The two methods train their own copy of the model and take turns step by step (after
    3 warm-up steps each), so a change in the machine's load hits both alike.
    """
    runners = {}
    for mix in ("cutmix", "puzzlemix"):
        torch.manual_seed(0)
        net = copy.deepcopy(model)
        runners[mix] = (net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9),
                        Mixer(MixConfig(mix=mix)), np.random.default_rng(1),
                        saliency_of(net) if mix == "puzzlemix" else None)
    config = TrainConfig(amp=False)  # fp32, as before the GPU path existed: comparable
    times: dict[str, list[float]] = {mix: [] for mix in runners}
    for step in range(steps + 3):
        x, y = batches[step % len(batches)]
        for mix, (net, optimizer, mixer, rng, saliency_fn) in runners.items():
            net.train()
            sync(device)
            start = time.perf_counter()
            train_step(net, optimizer, mixer, x, y, rng, lr=0.01, config=config,
                       num_classes=10, saliency_fn=saliency_fn)
            sync(device)
            if step >= 3:
                times[mix].append(time.perf_counter() - start)
    return times


def time_parts(model, batches, device, repeats: int) -> dict[str, dict[int, float]]:
    """Median seconds of PuzzleMix's parts per block count: saliency pass, cut, transport."""
    x, y = batches[0]
    partner = torch.arange(x.shape[0] - 1, -1, -1, device=device)
    lam = torch.tensor([0.5])
    parts: dict[str, dict[int, float]] = {"saliency": {}, "masks (no transport)": {},
                                          "masks + transport": {}}

    def median(fn) -> float:
        values = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            values.append(time.perf_counter() - start)
        return statistics.median(values)

    saliency = input_saliency(model, x, y)
    seconds = median(lambda: input_saliency(model, x, y))
    for blocks in (2, 4, 8, 16):
        if x.shape[-1] % blocks:
            continue
        parts["saliency"][blocks] = seconds
        for label, sampler in (("masks (no transport)", PuzzleMix(transport=False)),
                               ("masks + transport", PuzzleMix())):
            parts[label][blocks] = median(lambda: sampler.cut(
                lam, x, x[partner], saliency, saliency[partner], blocks))
    return parts


def run(*, setups: tuple[str, ...] = ("digits", "cifar"), steps: int = 40, repeats: int = 5,
        device: str = "auto") -> dict[str, Any]:
    """Step times of both methods and PuzzleMix's parts, per setup."""
    device = resolve_device(device)
    result: dict[str, Any] = {"machine": machine_info(device), "setups": {}}
    for name in setups:
        model, batches = setup(name, device)
        times = time_steps(model, batches, steps, device)
        result["setups"][name] = {"steps": times,
                                  "parts": time_parts(model, batches, device, repeats)}
    return result


def format_results(result: dict[str, Any]) -> str:
    lines = [format_machine(result["machine"])]
    for name, numbers in result["setups"].items():
        arch = "smallcnn, digits 1x16x16" if name == "digits" else "preactresnet18, random 3x32x32"
        steps = len(numbers["steps"]["cutmix"])
        lines.append(f"\n== {arch}, batch {BATCH}, {steps} steps ==")
        means = {}
        for mix, times in numbers["steps"].items():
            means[mix] = statistics.fmean(times)
            lines.append(f"{mix:>10}: {1000 * means[mix]:8.1f} ms/step mean, "
                         f"{1000 * statistics.median(times):8.1f} median, "
                         f"{1000 * min(times):8.1f} min, {1000 * max(times):8.1f} max")
        lines.append(f"puzzlemix / cutmix: {means['puzzlemix'] / means['cutmix']:.2f}x")
        lines.append("PuzzleMix parts, median ms per batch, by block count n:")
        for label, values in numbers["parts"].items():
            lines.append(f"  {label:>22}: " + ", ".join(f"n={n}: {1000 * s:.1f}"
                                                        for n, s in values.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", default="digits,cifar", help="digits, cifar or both")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per method")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per part timing")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    set_threads(args.threads)
    setups = tuple(name.strip() for name in args.setups.split(","))
    print(format_results(run(setups=setups, steps=args.steps, repeats=args.repeats,
                             device=args.device)))


if __name__ == "__main__":
    main()
