"""Cost of one training step under PuzzleMix against CutMix.

    python benchmarks/bench_puzzlemix.py                       # both setups, CPU or the GPU
    python benchmarks/bench_puzzlemix.py --setups digits --steps 40 --device cpu

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
import os
import platform
import statistics
import time

import numpy as np
import torch

from robustmix.data import load_dataset
from robustmix.mixing import MixConfig, Mixer
from robustmix.models import build_model
from robustmix.puzzlemix import PuzzleMix, input_saliency, saliency_of
from robustmix.train import resolve_device, soft_cross_entropy, soft_labels

BATCH = 64


def machine_info(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [f"python {platform.python_version()}, torch {torch.__version__}, numpy "
             f"{np.__version__}", f"CPU: {cpu}, {os.cpu_count()} logical cores visible, "
             f"torch threads {torch.get_num_threads()}", f"device: {device}"]
    if device.type == "cuda":
        lines[-1] += f" ({torch.cuda.get_device_name(device)})"
    try:
        lines.append(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    except OSError:
        pass
    return "\n".join(lines)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    """Seconds per training step for CutMix and PuzzleMix, one entry per step.

    The two methods train their own copy of the model and take turns step by step (after
    3 warm-up steps each), so a change in the machine's load hits both alike.
    """
    runners = {}
    for mix in ("cutmix", "puzzlemix"):
        torch.manual_seed(0)
        copy = copy_module(model)
        runners[mix] = (copy, torch.optim.SGD(copy.parameters(), lr=0.01, momentum=0.9),
                        Mixer(MixConfig(mix=mix)), np.random.default_rng(1))
    times: dict[str, list[float]] = {mix: [] for mix in runners}
    for step in range(steps + 3):
        x, y = batches[step % len(batches)]
        for mix, (net, optimizer, mixer, rng) in runners.items():
            saliency_fn = saliency_of(net) if mixer.needs_saliency else None
            net.train()
            sync(device)
            start = time.perf_counter()
            target = soft_labels(y, 10, 0.0)
            x_mixed, target = mixer(x, target, rng, saliency_fn=saliency_fn)
            loss = soft_cross_entropy(net(x_mixed), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync(device)
            if step >= 3:
                times[mix].append(time.perf_counter() - start)
    return times


def copy_module(model):
    import copy

    return copy.deepcopy(model)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", default="digits,cifar", help="digits, cifar or both")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per method")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per part timing")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(machine_info(device))
    for name in args.setups.split(","):
        model, batches = setup(name.strip(), device)
        arch = "smallcnn, digits 1x16x16" if name == "digits" else "preactresnet18, random 3x32x32"
        print(f"\n== {arch}, batch {BATCH}, {args.steps} steps ==")
        means = {}
        for mix, times in time_steps(model, batches, args.steps, device).items():
            means[mix] = statistics.fmean(times)
            print(f"{mix:>10}: {1000 * means[mix]:8.1f} ms/step mean, "
                  f"{1000 * statistics.median(times):8.1f} median, "
                  f"{1000 * min(times):8.1f} min, {1000 * max(times):8.1f} max")
        print(f"puzzlemix / cutmix: {means['puzzlemix'] / means['cutmix']:.2f}x")
        parts = time_parts(model, batches, device, args.repeats)
        print("PuzzleMix parts, median ms per batch, by block count n:")
        for label, values in parts.items():
            print(f"  {label:>22}: " + ", ".join(f"n={n}: {1000 * s:.1f}"
                                                 for n, s in values.items()))


if __name__ == "__main__":
    main()
