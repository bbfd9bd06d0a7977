"""The attack runner's cost: model passes of the ε-sweep against plain torchattacks, and its
throughput against the model's raw forward+backward throughput.

    python -m benchmarks.bench_attack                          # trains smallcnn on digits, 2 epochs
    python -m benchmarks.bench_attack --run runs/digits-smallcnn-vanilla-s0 --pgd-steps 20

The claim checked: "on a model where many examples fall at small ε, the ε-sweep costs at
most half the model passes of attacking each ε independently with plain torchattacks, and
the runner's throughput (passes per second) is within 10% of the model's raw
forward+backward throughput."

- Model: smallcnn trained on the embedded digits for ``--epochs`` (2) epochs with
  :func:`robustmix.training.trainer.train` into a temporary folder (≈80% clean accuracy, most
  examples broken by 8/255), or the finished run given by ``--run``; evaluated on its test
  split (397 images for digits, or ``--n-examples``).
- Sweep: :func:`robustmix.attacks.runner.robustness` with FGSM and PGD (``--pgd-steps``, step ε/4,
  random start) over ``--eps`` (8 values by default). Its passes are counted twice: the
  ``forward_passes``/``backward_passes`` of its rows, and a :class:`robustmix.attacks.gradient.PassCounter`
  wrapped around the model it is given, which also sees the clean pass and the model
  checks.
- Independent: for every ε, ``torchattacks.FGSM`` and ``torchattacks.PGD`` (same steps,
  step and random start) on every example, each batch then evaluated with one forward
  pass, plus one clean pass: what a script looping over ε does. Counted with the same
  PassCounter.
- Throughput: the sweep's passes (outer counter) per second of its wall time, against
  the model's raw rate: ``--raw-repeats`` forward+backward passes (input gradient, as the
  attacks take it) on one batch of ``--batch-size`` examples, in 5 blocks, the fastest
  block of a measurement before the sweep and one after the independent run (a ceiling);
  likewise forward-only passes. A pass is
  one example through the model, forward or backward, as PassCounter counts them. Because
  the sweep mixes forward-only passes (the checks, each attack's evaluation) with
  forward+backward pairs, the result also gives the time those passes would take at the
  raw rates (``expected_s``) and the sweep's efficiency ``expected_s / sweep_s``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (Stopwatch, format_machine, machine_info, resolve_device,
                               set_threads)

DEFAULT_EPS = "1/255,2/255,4/255,8/255,16/255,32/255,64/255,128/255"


def trained_model(run: str | None, epochs: int, seed: int):
    """(model in eval mode on the CPU, run directory, dataset name)."""
    import robustmix
    from robustmix.core import runs
    from robustmix.mixing import MixConfig
    from robustmix.core.config import TrainConfig
    from robustmix.training.trainer import train

    if run is None:
        out = Path(tempfile.mkdtemp(prefix="bench-attack-")) / "run"
        train(TrainConfig(dataset="digits", arch="smallcnn", epochs=epochs, seed=seed,
                          mix=MixConfig(mix="vanilla"), device="cpu"), out, progress=False)
        run = str(out)
    config = runs.read_config(run)["train"]
    return robustmix.load_model(run), run, config


def test_split(config: dict, n_examples: int | None, data_dir: str | None):
    from robustmix.core.runs import test_subset as select_examples
    from robustmix.data import load_dataset

    data = load_dataset(config["dataset"], data_dir=data_dir or config.get("data_dir", "data"),
                        image_size=config.get("image_size"))
    x_all, y_all = data.tensors("test")
    chosen = torch.from_numpy(select_examples(x_all.shape[0], n_examples))
    return x_all[chosen].float().div_(255), y_all[chosen], chosen, data.num_classes


def independent(model, x, y, eps_values, *, steps: int, batch_size: int, device,
                seed: int) -> dict:
    """Plain torchattacks at every ε on every example; passes counted by PassCounter."""
    import torchattacks

    from robustmix.attacks.gradient import PassCounter

    counter = PassCounter(model).eval()
    torch.manual_seed(seed)
    robust: dict[str, list[float]] = {"fgsm": [], "pgd": []}
    start = time.perf_counter()
    with torch.no_grad():
        clean = torch.cat([counter(xb.to(device)).argmax(1).cpu() == yb
                           for xb, yb in zip(x.split(batch_size), y.split(batch_size))])
    for eps in eps_values:
        attacks = {"fgsm": torchattacks.FGSM(counter, eps=eps),
                   "pgd": torchattacks.PGD(counter, eps=eps, alpha=eps / 4, steps=steps,
                                           random_start=True)}
        for name, attack in attacks.items():
            standing = 0
            for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
                xb, yb = xb.to(device), yb.to(device)
                x_adv = attack(xb, yb)
                with torch.no_grad():
                    standing += int((counter(x_adv).argmax(1) == yb).sum())
            robust[name].append(standing / len(x))
    return {"forward_passes": counter.forwards, "backward_passes": counter.backwards,
            "seconds": time.perf_counter() - start, "clean_acc": float(clean.float().mean()),
            "robust_acc": robust}


def sweep(model, x, y, indices, eps_list, *, steps: int, batch_size: int, device,
          n_classes: int, seed: int) -> dict:
    """robustmix's runner over the ε grid; passes from its rows and from an outer counter."""
    from robustmix.attacks import AttackConfig, PGDSettings, robustness
    from robustmix.attacks.gradient import PassCounter

    config = AttackConfig(attacks=("fgsm", "pgd"), eps=tuple(eps_list),
                          pgd=PGDSettings(steps=steps), batch_size=batch_size, seed=seed)
    counter = PassCounter(model).eval()
    watch = Stopwatch(torch.device(device))
    watch.start()
    result = robustness(counter, x, y, config, indices=indices, device=device,
                        n_classes=n_classes)
    seconds = watch.stop()
    rows = [row for row in result.rows if row.attack != "worst-case"]
    return {"forward_passes": counter.forwards, "backward_passes": counter.backwards,
            "row_forward_passes": sum(r.forward_passes for r in rows),
            "row_backward_passes": sum(r.backward_passes for r in rows),
            "seconds": seconds, "clean_acc": rows[0].clean_acc if rows else 0.0,
            "robust_acc": {name: [r.robust_acc for r in rows if r.attack == name]
                           for name in ("fgsm", "pgd")}}


def raw_throughput(model, x, y, *, batch_size: int, repeats: int, device,
                   blocks: int = 5) -> dict:
    """Passes per second of forward+backward (input gradient) and of forward alone.

    ``repeats`` batches are timed in ``blocks`` blocks and the fastest block counts: the
    raw rate is a ceiling, and on a shared host the slow blocks are other jobs' doing.
    """
    model = model.eval()
    reps = -(-batch_size // len(x))
    xb = x.repeat(reps, 1, 1, 1)[:batch_size].to(device)
    yb = y.repeat(reps)[:batch_size].to(device)

    def forward_backward():
        inputs = xb.detach().requires_grad_(True)
        loss = F.cross_entropy(model(inputs), yb, reduction="sum")
        torch.autograd.grad(loss, inputs)

    def forward():
        with torch.no_grad():
            model(xb)

    rates = {}
    watch = Stopwatch(torch.device(device))
    per_block = max(1, repeats // blocks)
    for name, fn, passes in (("forward_backward", forward_backward, 2 * batch_size),
                             ("forward", forward, batch_size)):
        fn()
        best = float("inf")
        for _ in range(max(1, min(blocks, repeats))):
            watch.start()
            for _ in range(per_block):
                fn()
            best = min(best, watch.stop())
        rates[name] = passes * per_block / best
    return rates


def run(*, epochs: int = 2, run_dir: str | None = None, eps: str = DEFAULT_EPS,
        pgd_steps: int = 10, batch_size: int = 256, n_examples: int | None = None,
        raw_repeats: int = 20, device: str = "auto", data_dir: str | None = None,
        seed: int = 0) -> dict:
    """Both pass counts, their ratio, and the throughputs; see the module docstring.

    Keys: machine, settings, sweep, independent (each with forward_passes,
    backward_passes, seconds, clean_acc, robust_acc), pass_ratio, sweep_passes_per_s,
    raw_forward_backward_passes_per_s, raw_forward_passes_per_s, throughput_ratio,
    expected_s, efficiency.
    """
    from robustmix.attacks.eps import parse_eps

    device = resolve_device(device)
    started = time.perf_counter()
    model, run_dir, config = trained_model(run_dir, epochs, seed)
    train_seconds = time.perf_counter() - started
    model = model.to(device)
    x, y, indices, n_classes = test_split(config, n_examples, data_dir)
    eps_list = parse_eps(eps)

    def raw():
        return raw_throughput(model, x, y, batch_size=batch_size, repeats=raw_repeats,
                              device=device)

    before = raw()
    ours = sweep(model, x, y, indices, eps_list, steps=pgd_steps, batch_size=batch_size,
                 device=device, n_classes=n_classes, seed=seed)
    theirs = independent(model, x, y, [e.value for e in eps_list], steps=pgd_steps,
                         batch_size=batch_size, device=device, seed=seed)
    after = raw()
    rates = {name: max(before[name], after[name]) for name in before}
    our_passes = ours["forward_passes"] + ours["backward_passes"]
    their_passes = theirs["forward_passes"] + theirs["backward_passes"]
    # Time the sweep's passes would take at the raw rates: each backward pairs with a
    # forward; the forwards left over run alone.
    pairs = ours["backward_passes"]
    alone = ours["forward_passes"] - pairs
    expected_s = (2 * pairs / rates["forward_backward"] + alone / rates["forward"])
    return {
        "machine": machine_info(device),
        "settings": {"run": run_dir, "dataset": config["dataset"], "arch": config["arch"],
                     "train_epochs": config["epochs"], "train_seconds": train_seconds,
                     "n_examples": len(x), "eps": [e.text for e in eps_list],
                     "pgd_steps": pgd_steps, "batch_size": batch_size,
                     "raw_repeats": raw_repeats, "device": str(device)},
        "sweep": ours, "independent": theirs,
        "pass_ratio": our_passes / their_passes,
        "forward_ratio": ours["forward_passes"] / theirs["forward_passes"],
        "backward_ratio": ours["backward_passes"] / theirs["backward_passes"],
        "sweep_passes_per_s": our_passes / ours["seconds"],
        "independent_passes_per_s": their_passes / theirs["seconds"],
        "raw_forward_backward_passes_per_s": rates["forward_backward"],
        "raw_forward_passes_per_s": rates["forward"],
        "throughput_ratio": our_passes / ours["seconds"] / rates["forward_backward"],
        "expected_s": expected_s,
        "efficiency": expected_s / ours["seconds"],
    }


def format_results(result: dict) -> str:
    s, ours, theirs = result["settings"], result["sweep"], result["independent"]
    line = "  {:<34}{:>10}{:>10}{:>10}{:>10}"
    lines = [format_machine(result["machine"]), "",
             f"{s['arch']} on {s['dataset']} ({s['train_epochs']} epochs, "
             f"{s['train_seconds']:.1f} s incl. loading), {s['n_examples']} test examples, "
             f"clean accuracy {ours['clean_acc']:.2%}; FGSM + PGD-{s['pgd_steps']} "
             f"(step ε/4, random start), batch {s['batch_size']}, device {s['device']}",
             f"ε: {', '.join(s['eps'])}",
             "robust accuracy per ε (sweep counts an example broken at a smaller ε as broken):",
             *(f"  {name:<5} sweep       " + " ".join(f"{v:6.1%}" for v in ours['robust_acc'][name])
               + f"\n  {name:<5} independent " + " ".join(f"{v:6.1%}" for v in
                                                      theirs['robust_acc'][name])
               for name in ("fgsm", "pgd")),
             "",
             line.format("model passes (examples)", "forward", "backward", "total", "seconds"),
             line.format("robustmix sweep", ours["forward_passes"], ours["backward_passes"],
                         ours["forward_passes"] + ours["backward_passes"],
                         f"{ours['seconds']:.2f}"),
             line.format("  of which in its rows", ours["row_forward_passes"],
                         ours["row_backward_passes"],
                         ours["row_forward_passes"] + ours["row_backward_passes"], ""),
             line.format("torchattacks, each ε independently", theirs["forward_passes"],
                         theirs["backward_passes"],
                         theirs["forward_passes"] + theirs["backward_passes"],
                         f"{theirs['seconds']:.2f}"),
             f"  sweep / independent: {result['pass_ratio']:.3f} of the passes "
             f"(forward {result['forward_ratio']:.3f}, backward {result['backward_ratio']:.3f});"
             f" claim: <= 0.5",
             "",
             f"throughput, passes/s (one pass = one example forward or backward):",
             f"  robustmix sweep:                    {result['sweep_passes_per_s']:12.0f}",
             f"  torchattacks independent:           {result['independent_passes_per_s']:12.0f}",
             f"  raw forward+backward, batch {s['batch_size']:<5}:  "
             f"{result['raw_forward_backward_passes_per_s']:12.0f}",
             f"  raw forward only, batch {s['batch_size']:<5}:      "
             f"{result['raw_forward_passes_per_s']:12.0f}",
             f"  sweep / raw forward+backward: {result['throughput_ratio']:.3f} (claim: >= 0.9)",
             f"  the sweep's passes at the raw rates would take {result['expected_s']:.2f} s; "
             f"it took {ours['seconds']:.2f} s: efficiency {result['efficiency']:.3f}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None,
                        help="a finished run directory (default: train smallcnn on digits)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs without --run")
    parser.add_argument("--eps", default=DEFAULT_EPS, help="ε grid, comma list like 1/255,2/255")
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-examples", type=int, default=None,
                        help="test examples (default all: 397 for digits)")
    parser.add_argument("--raw-repeats", type=int, default=20,
                        help="timed batches for the raw throughput")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--data-dir", default=None, help="for a --run on a torchvision data set")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print(format_results(run(epochs=args.epochs, run_dir=args.run, eps=args.eps,
                             pgd_steps=args.pgd_steps, batch_size=args.batch_size,
                             n_examples=args.n_examples, raw_repeats=args.raw_repeats,
                             device=args.device, data_dir=args.data_dir)))


if __name__ == "__main__":
    main()
