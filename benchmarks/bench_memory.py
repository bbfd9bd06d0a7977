"""The memory check's estimate (robustmix.core.memory) against a training step's real peak.

    python -m benchmarks.bench_memory                              # the table in core/memory.py
    python -m benchmarks.bench_memory --cases preactresnet18:224:4:train,wrn28-2:32:128:train

Each case (ARCH:SIDE:BATCH:train|attack) runs in a fresh process with one thread: the model
is built, one step (forward, backward and SGD with momentum; an attack: the input's
gradient in eval mode) runs from cold, and the growth of the process's peak resident memory
over it (VmHWM after ``clear_refs`` minus VmRSS before) is taken, less the weights'
gradients and momentum that a first step allocates. Only then are the activations counted
(:func:`robustmix.models.memory.measure`, whose own freed memory must not lower the step's
growth). Printed per case: the count, the observed peak as a multiple of it, and the
check's activation estimate (SAFETY x count + KERNELS) as a multiple of the peak: above 1,
the estimate covers the step. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

if __package__ in (None, ""):
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = ("preactresnet18:32:32:train,preactresnet18:32:128:train,preactresnet18:224:2:train,"
         "preactresnet18:224:4:train,preactresnet18:224:8:train,preactresnet18:224:16:train,"
         "smallcnn:224:2:train,smallcnn:224:16:train,wrn28-2:32:32:train,"
         "wrn28-2:32:128:train,wrn28-2:32:256:train,resnet56:32:128:train,"
         "preactresnet18:32:128:attack,preactresnet18:224:4:attack")
MIB = 2 ** 20


def _rss(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def one_case(arch: str, side: int, batch: int, mode: str) -> dict:
    """In this (fresh) process: the step's observed peak growth and the count."""
    import torch
    import torch.nn.functional as F

    from robustmix.models import build_model
    from robustmix.models.memory import measure, parameter_bytes

    torch.set_num_threads(1)
    model = build_model(arch, num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    train = mode == "train"
    model.train(train)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.rand(batch, 3, side, side), torch.zeros(batch, dtype=torch.long)
    before = _rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")   # resets VmHWM to the current resident size
    if train:
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    else:
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    grown = _rss("VmHWM") - before - (2 * parameter_bytes(model) if train else 0)
    count = measure(model, (3, side, side), "cpu", train=train).per_example * batch
    return {"count": count, "observed": grown}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=CASES)
    parser.add_argument("--one", help=argparse.SUPPRESS)   # a case, in the child process
    args = parser.parse_args(argv)
    if args.one:
        arch, side, batch, mode = args.one.split(":")
        print(json.dumps(one_case(arch, int(side), int(batch), mode)))
        return 0
    from robustmix.core.memory import KERNELS, SAFETY

    print(f"{'case':<34}{'count MiB':>11}{'peak MiB':>10}{'peak/count':>12}{'estimate/peak':>15}")
    for case in args.cases.split(","):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_memory", "--one", case],
                             capture_output=True, text=True, env=env, check=True)
        found = json.loads(out.stdout.strip().splitlines()[-1])
        estimate = SAFETY["cpu"] * found["count"] + KERNELS["cpu"]
        print(f"{case:<34}{found['count'] / MIB:>11.1f}{found['observed'] / MIB:>10.1f}"
              f"{found['observed'] / found['count']:>12.2f}"
              f"{estimate / found['observed']:>15.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
