"""Training images/s: robustmix's on-device pipeline against the usual DataLoader pipeline.

    python -m benchmarks.bench_train                                   # GPU: preactresnet18, N 50,000
    python -m benchmarks.bench_train --device cuda --data-dir ~/data   # real CIFAR-10 if there
    python -m benchmarks.bench_train --device cpu --n 2048 --steps 5   # CPU: smallcnn by default

Both pipelines run in one process on the same device, data shape and MSDA (``--mix``):

(a) robustmix: the training split as one uint8 tensor on the device
    (:class:`robustmix.data.TensorSource`; real CIFAR-10 through ``load_dataset`` when
    ``--data-dir`` holds it), batches gathered, cropped (pad 4) and flipped there by
    ``TensorSource.train_batches``, mixed there by :class:`robustmix.mixing.Mixer`; on CUDA
    bf16 autocast and channels_last. Each step is :func:`robustmix.training.trainer.train_step`, the
    function the training loop calls, with the loop's learning rate, on-device loss and
    accuracy sums and one ``.item()`` per ``log_interval``; left out are the progress bar
    and the tracking of the first non-finite loss (two ``torch.where`` per step).
(b) the usual research pipeline: a ``DataLoader`` (shuffle, drop_last, ``--workers``
    workers, pinned memory and persistent workers on CUDA) over a Dataset that turns each
    uint8 HWC image into a PIL image and applies ``RandomCrop(32, padding=4)``,
    ``RandomHorizontalFlip()``, ``ToTensor()`` (torchvision's CIFAR10 class itself when the
    real data is there); the batch mixed on the host with timm-style Mixup/CutMix (λ from
    NumPy, partner = the flipped batch, in place), then ``.to(device)``; fp32, contiguous;
    the same model, soft-target loss and SGD. No Normalize: robustmix models normalize
    inside, so adding it would only slow (b) down.

For every data-free MSDA it also times the Mixer call alone (the median of single calls,
each on an idle device: an upper bound on what it adds to a step) against the mean time of
a whole step of (a) under that MSDA, and prints the share. Steps are timed as a block after
``--warmup`` untimed steps (CUDA events on a GPU, perf_counter on the CPU).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (Stopwatch, format_machine, machine_info, resolve_device,
                               set_threads, summarize_us, time_calls)
from robustmix.data import Augment, TensorSource, load_dataset
from robustmix.mixing import DATA_FREE_MIX_NAMES, MixConfig, Mixer
from robustmix.models import build_model
from robustmix.core.config import TrainConfig
from robustmix.training.trainer import (learning_rate, soft_cross_entropy, soft_labels,
                             train_step)

NUM_CLASSES = 10
BASELINE_MIXES = ("vanilla", "mixup", "cutmix", "stochastic")  # what timm's Mixup offers
PAD = 4
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


# --------------------------------------------------------------------------- data


def cifar10_present(data_dir: str | None) -> bool:
    return bool(data_dir) and (Path(data_dir).expanduser() / "cifar-10-batches-py"
                               / "data_batch_1").is_file()


def random_cifar(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images of CIFAR's shape, (N, 32, 32, 3) as CIFAR10.data, and labels."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, NUM_CLASSES, size=n))


class PILImages(torch.utils.data.Dataset):
    """What ``torchvision.datasets.CIFAR10`` does per item: uint8 HWC -> PIL -> transform."""

    def __init__(self, data: np.ndarray, targets: np.ndarray, transform):
        self.data, self.targets, self.transform = data, targets.tolist(), transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def robustmix_source(data_dir: str | None, n: int, device: torch.device) -> TensorSource:
    if cifar10_present(data_dir):
        return load_dataset("cifar10", data_dir=str(Path(data_dir).expanduser()), device=device)
    images, labels = random_cifar(n)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels)
    return TensorSource("random-cifar", x, y, x[:2], y[:2], num_classes=NUM_CLASSES,
                        default_augment=Augment(pad=PAD, flip=True), device=device)


def baseline_loader(data_dir: str | None, n: int, batch_size: int, workers: int,
                    device: torch.device):
    import torchvision
    import torchvision.transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=PAD), T.RandomHorizontalFlip(),
                           T.ToTensor()])
    if cifar10_present(data_dir):
        dataset = torchvision.datasets.CIFAR10(str(Path(data_dir).expanduser()), train=True,
                                               transform=transform)
    else:
        dataset = PILImages(*random_cifar(n), transform)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0)


def forever(make_epoch):
    while True:
        yield from make_epoch()


# --------------------------------------------------------------------------- timm-style mix


def rand_bbox(height: int, width: int, lam: float, rng: np.random.Generator):
    """timm's ``rand_bbox`` (no margin): a box of side ⌊H√(1−λ)⌋ at a uniform centre, clipped."""
    cut = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = rng.integers(0, height), rng.integers(0, width)
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    return int(top), int(bottom), int(left), int(right)


def timm_style_mix(x: torch.Tensor, y: torch.Tensor, mix: str, rng: np.random.Generator,
                   alpha: float = 1.0, switch_prob: float = 0.5):
    """timm's ``Mixup`` in batch mode on a host batch: one λ, partner = ``x.flip(0)``, in place.

    Returns (x, soft labels). λ is corrected to the box's clipped area for CutMix.
    """
    lam = 1.0
    if mix != "vanilla":
        lam = float(rng.beta(alpha, alpha))
        use_cutmix = mix == "cutmix" or (mix == "stochastic" and rng.random() < switch_prob)
        if use_cutmix:
            top, bottom, left, right = rand_bbox(x.shape[2], x.shape[3], lam, rng)
            x[:, :, top:bottom, left:right] = x.flip(0)[:, :, top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (x.shape[2] * x.shape[3])
        else:
            partner = x.flip(0).mul_(1.0 - lam)  # before x changes: flip copies
            x.mul_(lam).add_(partner)
    one_hot = F.one_hot(y, NUM_CLASSES).float()
    return x, one_hot * lam + one_hot.flip(0) * (1.0 - lam)


# --------------------------------------------------------------------------- steps


def robustmix_steps(data: TensorSource, model, mix: str, *, batch_size: int, steps: int,
                    warmup: int, device: torch.device, seed: int = 0,
                    channels_last: bool | None = None,
                    compile_backend: str | None = None) -> float:
    """Seconds for ``steps`` steps of robustmix's training loop (after ``warmup`` steps).

    ``channels_last`` None follows the trainer (channels_last on CUDA only);
    ``compile_backend`` steps through ``torch.compile(model, backend=...)``, as the trainer's
    ``--compile`` does (compilation happens in the first, untimed, steps).
    """
    config = TrainConfig(arch=model.arch, mix=MixConfig(mix=mix), batch_size=batch_size,
                         lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                         epochs=max(1, -(-(steps + warmup) * batch_size // data.n_train)))
    if channels_last is None:
        channels_last = config.channels_last and device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    model = model.to(device=device, memory_format=memory_format)
    net = torch.compile(model, backend=compile_backend) if compile_backend else model
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    mixer = Mixer(config.mix)
    rng = np.random.default_rng(seed)
    augment = Augment(pad=PAD, flip=True)
    steps_per_epoch = data.n_train // batch_size
    batches = forever(lambda: data.train_batches(rng, batch_size, device, augment))
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    watch = Stopwatch(device)
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            watch.start()
        x, y = next(batches)
        loss, logits, target = train_step(net, optimizer, mixer, x, y, rng,
                                          lr=learning_rate(config, step, steps_per_epoch),
                                          config=config, num_classes=data.num_classes,
                                          memory_format=memory_format)
        loss_sum += loss * y.shape[0]
        correct += (logits.argmax(1) == target.argmax(1)).sum()
        in_epoch = step % steps_per_epoch
        if (in_epoch + 1) % config.log_interval == 0 or in_epoch + 1 == steps_per_epoch:
            loss_sum.item()  # the trainer's one host synchronization per interval
    return watch.stop()


def baseline_steps(loader, model, mix: str, *, steps: int, warmup: int,
                   device: torch.device, seed: int = 0) -> float:
    """Seconds for ``steps`` steps of the DataLoader pipeline (after ``warmup`` steps)."""
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    rng = np.random.default_rng(seed)
    batches = forever(lambda: iter(loader))
    watch = Stopwatch(device)
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            watch.start()
        x, y = next(batches)
        x, target = timm_style_mix(x, y, mix, rng)
        x = x.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        loss = soft_cross_entropy(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return watch.stop()


def mixing_alone_us(data: TensorSource, mix: str, *, batch_size: int, device: torch.device,
                    repeats: int, seed: int = 0) -> dict[str, float]:
    """Per-call time of the Mixer on an augmented batch of ``data``, in µs."""
    rng = np.random.default_rng(seed)
    x, y = next(iter(data.train_batches(rng, batch_size, device, Augment(pad=PAD, flip=True))))
    target = soft_labels(y, data.num_classes, 0.0)
    mixer = Mixer(MixConfig(mix=mix))
    return summarize_us(time_calls(lambda: mixer(x, target, rng), device=device,
                                   repeats=repeats, warmup=max(2, repeats // 10)))


def mixing_shares(data: TensorSource, make_model, mixes, *, batch_size: int, steps: int,
                  warmup: int, mix_repeats: int, device: torch.device, seed: int = 0,
                  **step_options) -> dict[str, dict[str, float]]:
    """Per MSDA: the Mixer call alone (µs, median and IQR of ``mix_repeats`` calls) against
    the mean step of :func:`robustmix_steps` on a fresh ``make_model()``, and its share.
    ``step_options`` go to :func:`robustmix_steps`."""
    shares = {}
    for name in mixes:
        seconds = robustmix_steps(data, make_model(), name, batch_size=batch_size, steps=steps,
                                  warmup=warmup, device=device, seed=seed, **step_options)
        alone = mixing_alone_us(data, name, batch_size=batch_size, device=device,
                                repeats=mix_repeats, seed=seed)
        step_s = seconds / steps
        shares[name] = {"mix_us": alone["median_us"], "mix_iqr_us": alone["iqr_us"],
                        "step_ms": 1e3 * step_s, "images_per_s": batch_size / step_s,
                        "share": alone["median_us"] * 1e-6 / step_s}
    return shares


# --------------------------------------------------------------------------- the benchmark


def defaults(device: torch.device) -> dict:
    """Settings that finish in a minute or two on a CPU, and a real measurement on a GPU."""
    if device.type == "cuda":
        return {"arch": "preactresnet18", "batch_size": 128, "steps": 200, "warmup": 20,
                "n": 50_000, "workers": min(4, os.cpu_count() or 1), "mix_repeats": 200}
    return {"arch": "smallcnn", "batch_size": 64, "steps": 5, "warmup": 2, "n": 2048,
            "workers": min(2, os.cpu_count() or 1), "mix_repeats": 20}


def run(*, steps: int | None = None, warmup: int | None = None,
        batch_size: int | None = None, device: str = "auto", arch: str | None = None,
        n: int | None = None, workers: int | None = None, mix: str = "cutmix",
        data_dir: str | None = None, mixes=DATA_FREE_MIX_NAMES,
        mix_repeats: int | None = None, seed: int = 0) -> dict:
    """Run both pipelines and the per-MSDA mixing shares; returns the numbers as a dict.

    Keys: machine, settings, robustmix_images_per_s, baseline_images_per_s, speedup
    (a over b), and mixing: {mix: {mix_us, mix_iqr_us, step_ms, images_per_s, share}}.
    Any argument left None takes :func:`defaults` for the device.
    """
    if mix not in BASELINE_MIXES:
        raise ValueError(f"--mix for the comparison must be one timm offers: "
                         f"{', '.join(BASELINE_MIXES)}; got {mix!r}")
    device = resolve_device(device)
    chosen = defaults(device)
    for name, value in (("steps", steps), ("warmup", warmup), ("batch_size", batch_size),
                        ("arch", arch), ("n", n), ("workers", workers),
                        ("mix_repeats", mix_repeats)):
        if value is not None:
            chosen[name] = value
    mixes = tuple(dict.fromkeys((*mixes, mix)))
    data = robustmix_source(data_dir, chosen["n"], device)
    batch = chosen["batch_size"]
    if batch > data.n_train:
        raise ValueError(f"batch size {batch} is larger than N = {data.n_train}")

    def fresh_model():
        torch.manual_seed(seed)
        return build_model(chosen["arch"], num_classes=NUM_CLASSES, in_channels=3,
                           mean=data.mean, std=data.std)

    shares = mixing_shares(data, fresh_model, mixes, batch_size=batch, steps=chosen["steps"],
                           warmup=chosen["warmup"], mix_repeats=chosen["mix_repeats"],
                           device=device, seed=seed)
    loader = baseline_loader(data_dir, chosen["n"], batch, chosen["workers"], device)
    baseline_s = baseline_steps(loader, fresh_model(), mix, steps=chosen["steps"],
                                warmup=chosen["warmup"], device=device, seed=seed)
    del loader  # stops persistent workers
    ours = shares[mix]["images_per_s"]
    theirs = batch * chosen["steps"] / baseline_s
    return {"machine": machine_info(device),
            "settings": {**chosen, "device": str(device), "mix": mix, "data": data.name,
                         "n_train": data.n_train, "torch": torch.__version__,
                         "amp_bf16": device.type == "cuda", "channels_last": device.type == "cuda"},
            "robustmix_images_per_s": ours, "baseline_images_per_s": theirs,
            "speedup": ours / theirs, "mixing": shares}


def format_results(result: dict) -> str:
    s = result["settings"]
    lines = [format_machine(result["machine"]), "",
             f"{s['arch']} on {s['data']} (N = {s['n_train']}), batch {s['batch_size']}, "
             f"{s['steps']} timed steps after {s['warmup']} warm-up, device {s['device']}, "
             f"torch {s['torch']}, DataLoader workers {s['workers']}, mix {s['mix']}",
             f"  (a) robustmix: uint8 data on the device, crop/flip/mix there, "
             f"{'bf16 autocast + channels_last' if s['amp_bf16'] else 'fp32'}: "
             f"{result['robustmix_images_per_s']:.1f} images/s",
             f"  (b) DataLoader + PIL RandomCrop/Flip/ToTensor + host timm-style mix, fp32: "
             f"{result['baseline_images_per_s']:.1f} images/s",
             f"  (a) / (b): {result['speedup']:.2f}x", "",
             "share of a robustmix training step spent mixing (Mixer call alone, median of "
             f"{s['mix_repeats']} single calls, vs the mean step):",
             f"  {'mix':<12}{'mix µs':>10}{'IQR µs':>10}{'step ms':>10}{'images/s':>10}"
             f"{'share':>9}"]
    for name, row in result["mixing"].items():
        lines.append(f"  {name:<12}{row['mix_us']:>10.1f}{row['mix_iqr_us']:>10.1f}"
                     f"{row['step_ms']:>10.2f}{row['images_per_s']:>10.1f}"
                     f"{100 * row['share']:>8.2f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--arch", default=None,
                        help="model (default preactresnet18 on CUDA, smallcnn on the CPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per run (default 200 on CUDA, 5 on the CPU)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default 20 on CUDA, 2 on the CPU)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default 128 on CUDA (the README's CIFAR recipe), 64 on the CPU")
    parser.add_argument("--n", type=int, default=None,
                        help="random training images when no CIFAR-10 is found "
                             "(default 50,000 on CUDA, 2,048 on the CPU)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers of (b) (default min(4, CPUs) on CUDA, "
                             "min(2, CPUs) on the CPU)")
    parser.add_argument("--mix", default="cutmix", choices=BASELINE_MIXES,
                        help="MSDA of the (a)-vs-(b) comparison")
    parser.add_argument("--data-dir", default=None,
                        help="folder holding cifar-10-batches-py/ (else random data)")
    parser.add_argument("--mix-repeats", type=int, default=None,
                        help="single Mixer calls timed per MSDA (default 200 CUDA, 20 CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print(format_results(run(steps=args.steps, warmup=args.warmup, batch_size=args.batch_size,
                             device=args.device, arch=args.arch, n=args.n,
                             workers=args.workers, mix=args.mix, data_dir=args.data_dir,
                             mix_repeats=args.mix_repeats)))


if __name__ == "__main__":
    main()
