"""The GPU check: what this project needs from a card, in one command of at most 8 minutes.

    python -m benchmarks.gpu_check --out gpu-check              # cuda:0 (and cuda:1 where there)
    python -m benchmarks.gpu_check --device cpu --out /tmp/gc   # every check at toy size
    python -m benchmarks.gpu_check --only train,compile         # some checks

It writes OUT/gpu_check.json (every number, the card, torch and CUDA versions),
OUT/gpu_check.md (the table, also printed), OUT/logs/CHECK.log (what each check printed)
and OUT/work/ (the runs the checks made). Exit 0 when every check passed or was skipped
with its reason, 1 when one failed or ran out of time, 2 (one line) for bad input.

The checks, in order (their sizes: SIZES; the CPU's toy sizes: TOY_SIZES):

- model: ``robustmix train`` on the device, smallcnn-16 on the embedded digits (bf16
  autocast and channels_last on CUDA, the trainer's defaults); the two attack checks use it.
- train: PreActResNet-18 training images/s in bf16 autocast with channels_last, robustmix's
  on-device pipeline against the DataLoader pipeline (bench_train's two pipelines).
- compile: the same steps through torch.compile against the same steps without it.
- mixing: the share of a training step spent mixing for every data-free MSDA
  (bench_train.mixing_shares), and PuzzleMix's step against CutMix's (bench_puzzlemix).
- attacks: every built-in attack on CUDA and on the CPU, same model, same examples: the
  per-example robust flags must agree on at least 99% at each ε. AutoAttack's parts run a
  smaller budget here (SIZES["attacks"]["budget"], through :func:`attack_budget`: the CPU
  side must finish in time); the full one is the next check's.
- autoattack: standard AutoAttack on 100 test images at 8/255, on the device.
- ddp: ``torchrun -m robustmix train`` with one process, and two where two GPUs exist, over
  NCCL (NCCL's "NCCL version" line is required): one complete run of world size N. The
  ranks run through :mod:`benchmarks.gpu_check_rank`, which records their peak memory.
- study: ``robustmix study --jobs 2 --devices cuda:0[,cuda:1]`` on a tiny digits study
  (TINY_STUDY: two runs of one epoch, FGSM and PGD on 8 images, the report).

A check passes when it ran and its numbers are what it claims (positive rates, agreement
of at least 99%, a complete run); the GPU goals of benchmarks/RESULTS.md ((a)/(b) ≥ 3, each
mixing share < 2%) are reported as met or missed, not as a failure.

Every check records its peak memory: torch.cuda.max_memory_allocated on CUDA (of the ranks
too), and on the CPU the max RSS of the largest process of the check's process tree.

Each check runs in a process of its own, in a session of its own, with a timeout (TIMEOUTS,
summing to 7.5 minutes, times --timeout-scale); one that fails or overruns is recorded so,
its process group is ended (SIGTERM, then SIGKILL) and the next one runs. Processes, not a
time budget inside one process, because a check stuck in a CUDA or NCCL call cannot be
interrupted from Python while its process group can be killed; because a CUDA error (an
illegal address, say) spoils the process's CUDA context for every later check; and because
max_memory_allocated and the max RSS are per process, so each check's peak is its own. The
processes fork from a server that imported torch and robustmix once (multiprocessing's
forkserver; it never touches CUDA), started before the first check's clock, which saves
each check the seconds of importing torch.

With ``--device cpu`` (or no GPU) every check runs at toy size with CPU stand-ins: bf16
autocast on the CPU (the trainer's autocast is CUDA-only, so the model's forward is wrapped
in it) with channels_last; torch.compile with the aot_eager backend (dynamo and AOT
autograd without inductor's C++ build, which alone takes minutes on a small CPU;
``--compile-backend inductor`` to try it); DDP over gloo with 1 and 2 processes; the study
with ``--devices cpu``; the attack agreement between two CPU paths whose kernels sum in
other orders, the model contiguous against channels_last (the largest difference of their
logits is recorded, so that one sees they differ). No number of a toy run says anything
about a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import multiprocessing
import os
import re
import resource
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, resolve_device
from benchmarks.gpu_check_rank import peak_memory
from robustmix.core import runs, threads
from robustmix.core.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
CHECKS = ("model", "train", "compile", "mixing", "attacks", "autoattack", "ddp", "study")
NEEDS_MODEL = ("attacks", "autoattack")
TIMEOUTS = {"model": 30, "train": 50, "compile": 95, "mixing": 45, "attacks": 65,
            "autoattack": 45, "ddp": 55, "study": 65}          # seconds: 450 in all
MIN_AGREEMENT = 0.99
MIX = "cutmix"
# What the fork server imports once. Not this module: each check's process imports it again
# as multiprocessing's __mp_main__ (cheap once these are in), and runpy warns when it is in.
PRELOAD = ["benchmarks.bench_train", "benchmarks.bench_puzzlemix", "benchmarks.bench_study",
           "robustmix.app.cli", "robustmix.attacks.builtin", "robustmix.attacks.runner",
           "pyautoattack"]

_MODEL = {"dataset": "digits", "arch": "smallcnn-16", "image_size": 8, "epochs": 2,
          "batch_size": 64}
SIZES: dict[str, dict[str, Any]] = {
    "model": _MODEL,
    "train": {"arch": "preactresnet18", "batch_size": 128, "n": 50_000, "steps": 200,
              "warmup": 20, "workers": min(4, os.cpu_count() or 1)},
    "compile": {"arch": "preactresnet18", "batch_size": 128, "n": 50_000, "steps": 100,
                "warmup": 10},
    "mixing": {"arch": "preactresnet18", "batch_size": 128, "n": 50_000, "steps": 100,
               "warmup": 10, "mix_repeats": 200, "puzzlemix_setup": "cifar",
               "puzzlemix_steps": 20},
    "attacks": {"n_examples": 200, "eps": ("8/255", "16/255", "32/255"), "pgd_steps": 10,
                "batch_size": 200,
                "budget": {"n_iter": 20, "targets": 3, "square_queries": 500,
                           "fab_iterations": 20}},
    "autoattack": {"n_examples": 100, "eps": "8/255", "batch_size": 100, "budget": None},
    "ddp": {**_MODEL, "epochs": 1},
    "study": {"jobs": 2},
}
TOY_SIZES: dict[str, dict[str, Any]] = {
    **SIZES,
    # smallcnn-8: bf16 autocast on a CPU without bf16 instructions is ~7× slower than fp32
    "train": {"arch": "smallcnn-8", "batch_size": 8, "n": 32, "steps": 2, "warmup": 1,
              "workers": 1},
    "compile": {"arch": "smallcnn-8", "batch_size": 8, "n": 32, "steps": 2, "warmup": 1},
    "mixing": {"arch": "smallcnn-8", "batch_size": 8, "n": 32, "steps": 2, "warmup": 1,
               "mix_repeats": 3, "puzzlemix_setup": "digits", "puzzlemix_steps": 1},
    "attacks": {"n_examples": 100, "eps": ("16/255", "32/255"), "pgd_steps": 3,
                "batch_size": 100,
                "budget": {"n_iter": 5, "targets": 2, "square_queries": 50,
                           "fab_iterations": 5}},
    "autoattack": {"n_examples": 20, "eps": "32/255", "batch_size": 20,
                   "budget": {"n_iter": 5, "targets": 2, "square_queries": 50,
                              "fab_iterations": 5}},
}
TINY_STUDY = """\
preset = "digits"
methods = ["vanilla", "cutmix"]
seeds = [0]
seeds_by_method = {}
device = "{device}"

[train]
epochs = 1
batch_size = 128

[attack]
eps = "16/255"
attacks = ["fgsm", "pgd"]
pgd_steps = 1
n_examples = 8
diagnostics = false

[evaluate]
n_examples = 8
q_draws = 4
corruptions = false
"""


class Skip(Exception):
    """A check that cannot run here; its message says why."""


@dataclass(frozen=True)
class Setting:
    """What every check process is told."""

    device: str
    threads: int
    compile_backend: str
    out: str
    toy: bool

    @property
    def work(self) -> Path:
        return Path(self.out) / "work"

    def sizes(self, check: str) -> dict[str, Any]:
        return (TOY_SIZES if self.toy else SIZES)[check]


# --------------------------------------------------------------------------- pure helpers


def agreement(a: Mapping[Any, torch.Tensor], b: Mapping[Any, torch.Tensor]) -> dict[Any, float]:
    """Per key, the fraction of examples whose flags are equal in ``a`` and ``b`` (1.0 for
    none). Both must have the same keys and, per key, flags of the same shape."""
    if set(a) != set(b):
        differ = sorted(map(str, set(a) ^ set(b)))
        raise ValueError(f"the two results name different keys: {differ}")
    fractions = {}
    for key, flags in a.items():
        other = b[key]
        if tuple(flags.shape) != tuple(other.shape):
            raise ValueError(f"{key}: {tuple(flags.shape)} flags against {tuple(other.shape)}")
        same = flags.cpu().bool() == other.cpu().bool()
        fractions[key] = float(same.float().mean()) if same.numel() else 1.0
    return fractions


def disagreements(fractions: Mapping[tuple[str, str], float],
                  minimum: float = MIN_AGREEMENT) -> list[str]:
    """The (attack, ε) whose agreement is below ``minimum``, as texts."""
    return [f"{attack} at {eps}: {value:.3f} < {minimum}"
            for (attack, eps), value in fractions.items() if not value >= minimum]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _peak_text(peak: Mapping[str, Any] | None, cuda: bool) -> str:
    peak = peak or {}
    if cuda:
        if peak.get("gpu_mib") is None:
            return f"GPU: {peak.get('gpu_note', 'not measured')}"
        return f"GPU {peak['gpu_mib']:,.0f} MiB"
    return "n/a" if peak.get("rss_mib") is None else f"RSS {peak['rss_mib']:,.0f} MiB"


def _header(report: Mapping[str, Any]) -> list[str]:
    machine, card = report["machine"], report.get("card")
    if card:
        title = card["name"]
        named = (f"{card['name']} ×{card['count']} (compute capability {card['capability']}, "
                 f"{card['memory_gib']:.0f} GiB); torch {machine['torch']}; CUDA "
                 f"{card['cuda']}; cuDNN {card['cudnn']}")
    else:
        title = "no GPU (a CPU toy run: no number here is a GPU's)"
        named = f"none; torch {machine['torch']}; CUDA {machine['cuda'] or 'none'} (torch's build)"
    return [f"# GPU check: {title}", "",
            f"card: {named}; device {machine['device']}; {report['threads']} torch thread(s) "
            f"per process; {machine['cpu']}; {machine['date']}; {report['seconds']:.0f} s in "
            f"all (the fork server's start {report.get('server_start_s', 0):.0f} s of it), CPU "
            f"time {report['cpu_s']:.0f} s", "", f"`{report['command']}`", ""]


def markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: the card, then one row per check."""
    cuda = bool(report.get("card"))
    lines = _header(report) + ["| check | status | result | s | peak memory |",
                               "|---|---|---|---|---|"]
    for name, record in report["checks"].items():
        status = record["status"]
        result = record.get("summary") or ""
        if record.get("reason"):
            result = f"{status}: {record['reason']}" + (f" ({result})" if result else "")
        seconds = record.get("seconds")
        lines.append("| " + " | ".join(_cell(part) for part in (
            name, status, result, "" if seconds is None else f"{seconds:.1f}",
            _peak_text(record.get("peak"), cuda))) + " |")
    return "\n".join(lines) + "\n"


def card(device: torch.device) -> dict[str, Any] | None:
    """The GPU: name, count, compute capability, memory, CUDA and cuDNN (None on the CPU)."""
    if device.type != "cuda":
        return None
    properties = torch.cuda.get_device_properties(device)
    return {"name": torch.cuda.get_device_name(device), "count": torch.cuda.device_count(),
            "capability": f"{properties.major}.{properties.minor}",
            "memory_gib": properties.total_memory / 2**30, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()}


def exit_code(report: Mapping[str, Any]) -> int:
    """0 when every check passed or was skipped, 1 when one failed."""
    return int(any(r["status"] == "failed" for r in report["checks"].values()))


def selected(only: str | None) -> tuple[str, ...]:
    """The checks ``--only`` names, in their order, with the model check where needed."""
    if only is None:
        return CHECKS
    names = {name.strip() for name in only.split(",") if name.strip()}
    unknown = sorted(names - set(CHECKS))
    if unknown or not names:
        raise UsageError(f"--only takes a comma list of {', '.join(CHECKS)}; got {only!r}")
    if names & set(NEEDS_MODEL):
        names.add("model")
    return tuple(name for name in CHECKS if name in names)


# --------------------------------------------------------------------------- processes


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and the children it waited for."""
    return sum(usage.ru_utime + usage.ru_stime for usage in
               map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def commands_env(setting: Setting) -> dict[str, str]:
    """The environment of the commands a check starts: this checkout's code first, the
    check's thread count."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else ""),
            threads.ENV: str(setting.threads)}


def _child(name: str, setting: Setting, function: Callable | None = None) -> None:
    """In a check's process: its own session and log, then the check; writes its record."""
    os.setsid()
    out = Path(setting.out)
    with open(out / "logs" / f"{name}.log", "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # whatever sys.stdout was
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    torch.set_num_threads(setting.threads)
    device = torch.device(setting.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    record: dict[str, Any] = {"status": "passed", "reason": None, "summary": None}
    try:
        numbers = (function or CHECK_FUNCTIONS[name])(setting)
        failures = numbers.pop("failures", [])
        record.update(summary=numbers.pop("summary", None), numbers=numbers)
        if failures:
            record.update(status="failed", reason="; ".join(failures))
    except Skip as skip:
        record.update(status="skipped", reason=str(skip))
    except BaseException as err:  # any failure of a check is its record, not the harness's
        traceback.print_exc()
        record.update(status="failed", reason=one_line(err))
    peak = peak_memory()
    peak.update(record.get("numbers", {}).pop("peak", {}))
    record.update(peak=peak, cpu_s=cpu_seconds())
    sys.stdout.flush()
    _write_json(out / "checks" / f"{name}.json", record)


def one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1][:300] if lines else ''}".rstrip(": ")


def _write_json(path: Path, value: Any) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(value, indent=1, default=str) + "\n")
    os.replace(partial, path)


def _end_group(process, grace: float = 10.0) -> None:
    """End the check's process group: SIGTERM (torchrun passes it on to its ranks, which
    live in sessions of their own), then SIGKILL whatever is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        process.join(wait)
    if process.is_alive():  # killed before it made its session
        process.kill()
        process.join()


def run_check(context, name: str, setting: Setting, timeout: float,
              function: Callable | None = None) -> dict[str, Any]:
    """Run one check in a process of its own; its record, or a failed one saying why."""
    result = Path(setting.out) / "checks" / f"{name}.json"
    result.unlink(missing_ok=True)
    process = context.Process(target=_child, args=(name, setting, function))
    start = time.perf_counter()
    process.start()
    process.join(timeout)
    overran = process.is_alive()
    _end_group(process, grace=10.0 if overran else 0.0)
    seconds = time.perf_counter() - start
    if overran:
        record = {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
    elif result.is_file():
        record = json.loads(result.read_text())
    else:
        record = {"status": "failed", "reason": f"its process ended with exit code "
                  f"{process.exitcode} and no result (see logs/{name}.log)"}
    return {**record, "seconds": seconds, "timeout_s": timeout}


# --------------------------------------------------------------------------- the checks


class CpuBf16(torch.nn.Module):
    """The model's forward under bf16 autocast on the CPU: the CPU stand-in for the
    trainer's CUDA autocast (:func:`robustmix.core.devices.autocast` is off on the CPU, and
    an autocast entered inside the forward turns it on again)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.arch = model, model.arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x)


def _model(arch: str, data, device: torch.device, *, autocast_stand_in: bool = True):
    from robustmix.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, num_classes=data.num_classes, in_channels=3,
                        mean=data.mean, std=data.std)
    return CpuBf16(model) if autocast_stand_in and device.type == "cpu" else model


def _precision(device: torch.device) -> str:
    return "bf16 autocast, channels_last" + (", CPU stand-ins" if device.type == "cpu" else "")


def _positive(numbers: Mapping[str, float]) -> list[str]:
    return [f"{key} is {value}, not a positive number" for key, value in numbers.items()
            if not (isinstance(value, float) and 0 < value < float("inf"))]


def check_model(setting: Setting) -> dict[str, Any]:
    """``robustmix train`` on the device: the run the attack checks attack."""
    from robustmix.app.cli import main

    s, out = setting.sizes("model"), setting.work / "model"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["train", "--quiet", "--dataset", s["dataset"], "--arch", s["arch"],
            "--image-size", str(s["image_size"]), "--epochs", str(s["epochs"]),
            "--batch-size", str(s["batch_size"]), "--device", setting.device,
            "--threads", str(setting.threads), "--out", str(out)]
    code = main(argv)
    if code != 0 or not runs.is_complete(out):
        return {"failures": [f"robustmix train exited {code} (see the log)"]}
    last = runs.read_metrics(out / runs.METRICS)[-1]
    precision = "bf16 autocast, channels_last" if torch.device(setting.device).type == "cuda" \
        else "fp32 (the trainer's autocast is CUDA-only)"
    numbers = {"run": str(out), "test_acc": float(last["test_acc"]),
               "images_per_s": float(last["images_per_s"]), "argv": argv}
    return {**numbers, "failures": _positive({"images_per_s": numbers["images_per_s"]}),
            "summary": f"{s['arch']} on {s['dataset']} {s['image_size']}×{s['image_size']}, "
                       f"{s['epochs']} epochs, {precision}: test accuracy "
                       f"{numbers['test_acc']:.1%}, {numbers['images_per_s']:,.0f} images/s"}


def check_train(setting: Setting) -> dict[str, Any]:
    """robustmix's pipeline (bf16 autocast, channels_last) against the DataLoader's."""
    from benchmarks import bench_train

    s, device = setting.sizes("train"), torch.device(setting.device)
    data = bench_train.robustmix_source(None, s["n"], device)
    steps = {"steps": s["steps"], "warmup": s["warmup"], "device": device}
    ours_s = bench_train.robustmix_steps(data, _model(s["arch"], data, device), MIX,
                                         batch_size=s["batch_size"], channels_last=True, **steps)
    loader = bench_train.baseline_loader(None, s["n"], s["batch_size"], s["workers"], device)
    theirs_s = bench_train.baseline_steps(
        loader, _model(s["arch"], data, device, autocast_stand_in=False), MIX, **steps)
    del loader  # stops its workers
    images = s["batch_size"] * s["steps"]
    rates = {"robustmix_images_per_s": images / ours_s,
             "dataloader_images_per_s": images / theirs_s}
    speedup = rates["robustmix_images_per_s"] / rates["dataloader_images_per_s"]
    goal = "" if setting.toy else f"; goal ≥ 3×: {'met' if speedup >= 3 else 'missed'}"
    return {**rates, "speedup": speedup, "sizes": s, "failures": _positive(rates),
            "summary": f"{s['arch']}, batch {s['batch_size']}, {MIX}: robustmix "
                       f"{rates['robustmix_images_per_s']:,.0f} images/s ({_precision(device)}), "
                       f"DataLoader pipeline {rates['dataloader_images_per_s']:,.0f} (fp32, "
                       f"{s['workers']} worker(s)): {speedup:.2f}×{goal}"}


def _compiler_missing(backend: str, device: torch.device) -> str | None:
    import importlib.util

    if backend != "inductor":
        return None
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "Triton is not installed: inductor cannot generate GPU kernels"
    if device.type == "cpu" and not any(map(shutil.which, ("c++", "g++", "clang++"))):
        return "no C++ compiler on the PATH: inductor cannot build CPU kernels"
    return None


def check_compile(setting: Setting) -> dict[str, Any]:
    """The training steps through torch.compile against the same steps without it."""
    from benchmarks import bench_train

    s, device = setting.sizes("compile"), torch.device(setting.device)
    missing = _compiler_missing(setting.compile_backend, device)
    if missing:
        raise Skip(missing)
    data = bench_train.robustmix_source(None, s["n"], device)
    common = {"batch_size": s["batch_size"], "steps": s["steps"], "warmup": s["warmup"],
              "device": device, "channels_last": True}
    eager_s = bench_train.robustmix_steps(data, _model(s["arch"], data, device), MIX, **common)
    start = time.perf_counter()
    compiled_s = bench_train.robustmix_steps(data, _model(s["arch"], data, device), MIX,
                                             compile_backend=setting.compile_backend, **common)
    warmup_s = time.perf_counter() - start - compiled_s
    images = s["batch_size"] * s["steps"]
    rates = {"compiled_images_per_s": images / compiled_s, "eager_images_per_s": images / eager_s}
    ratio = rates["compiled_images_per_s"] / rates["eager_images_per_s"]
    return {**rates, "compiled_over_eager": ratio, "warmup_with_compilation_s": warmup_s,
            "backend": setting.compile_backend, "sizes": s, "failures": _positive(rates),
            "summary": f"{s['arch']}, batch {s['batch_size']}, {_precision(device)}: "
                       f"torch.compile ({setting.compile_backend}) "
                       f"{rates['compiled_images_per_s']:,.0f} images/s, without "
                       f"{rates['eager_images_per_s']:,.0f}: {ratio:.2f}×; {s['warmup']} "
                       f"warm-up steps with the compilation {warmup_s:.1f} s"}


def check_mixing(setting: Setting) -> dict[str, Any]:
    """Every data-free MSDA's share of a step; PuzzleMix's step against CutMix's."""
    from benchmarks import bench_puzzlemix, bench_train

    from statistics import fmean

    from robustmix.mixing import DATA_FREE_MIX_NAMES

    s, device = setting.sizes("mixing"), torch.device(setting.device)
    data = bench_train.robustmix_source(None, s["n"], device)
    shares = bench_train.mixing_shares(
        data, lambda: _model(s["arch"], data, device), DATA_FREE_MIX_NAMES,
        batch_size=s["batch_size"], steps=s["steps"], warmup=s["warmup"],
        mix_repeats=s["mix_repeats"], device=device, channels_last=True)
    model, batches = bench_puzzlemix.setup(s["puzzlemix_setup"], device)
    times = bench_puzzlemix.time_steps(model, batches, s["puzzlemix_steps"], device)
    puzzle = {"puzzlemix_step_ms": 1e3 * fmean(times["puzzlemix"]),
              "cutmix_step_ms": 1e3 * fmean(times["cutmix"])}
    ratio = puzzle["puzzlemix_step_ms"] / puzzle["cutmix_step_ms"]
    failures = _positive({f"{mix} share": row["share"] for mix, row in shares.items()})
    worst = max(shares, key=lambda mix: shares[mix]["share"])
    goal = "" if setting.toy else \
        f"; goal < 2% each: {'met' if shares[worst]['share'] < 0.02 else 'missed'}"
    listed = ", ".join(f"{mix} {100 * row['share']:.2f}%" for mix, row in shares.items())
    return {"shares": shares, "puzzlemix": {**puzzle, "over_cutmix": ratio}, "sizes": s,
            "failures": failures + _positive(puzzle),
            "summary": f"share of a {s['arch']} step spent mixing ({_precision(device)}): "
                       f"{listed}{goal}; PuzzleMix's step (saliency pass, cuts, transport; "
                       f"fp32, {bench_puzzlemix.BATCH} {s['puzzlemix_setup']} images) "
                       f"{ratio:.2f}× CutMix's"}


@contextlib.contextmanager
def attack_budget(budget: Mapping[str, int] | None):
    """AutoAttack's Square and FAB with ``budget``'s queries and iterations (None: the
    reference's 5,000 and 100). The registry's settings reach APGD's iterations and the
    target classes only, so the check wraps the one function that builds the attacks."""
    from robustmix.attacks import autoattack

    if not budget:
        yield
        return
    build = autoattack._build

    def smaller(*args, **kwargs):
        adversary = build(*args, **kwargs)
        adversary.square.n_queries = budget["square_queries"]
        adversary.fab.n_iter = budget["fab_iterations"]
        return adversary

    autoattack._build = smaller
    try:
        yield
    finally:
        autoattack._build = build


def _budget_text(budget: Mapping[str, int]) -> str:
    return (f"APGD {budget['n_iter']} iterations, {budget['targets']} target classes, "
            f"FAB {budget['fab_iterations']} iterations, Square {budget['square_queries']} "
            "queries")


def _attack_config(names: tuple[str, ...], s: Mapping[str, Any]):
    from robustmix.attacks import AttackConfig, PGDSettings
    from robustmix.attacks.autoattack import REFERENCE

    eps = s["eps"] if isinstance(s["eps"], tuple) else (s["eps"],)
    budget = s["budget"] or {}
    options = {name: {key: budget[key] for key in REFERENCE if key in budget}
               for name in names if name not in ("fgsm", "pgd") and budget}
    return AttackConfig(attacks=names, eps=eps, pgd=PGDSettings(steps=s.get("pgd_steps", 10)),
                        batch_size=s["batch_size"], options=options)


def _subset(setting: Setting, n_examples: int):
    from robustmix.attacks.runner import load_subset

    run = setting.work / "model"
    if not runs.is_complete(run):
        raise Skip("needs the model check's run, which did not finish")
    return load_subset(run, "cpu", n_examples, None, False, echo=lambda text: None)


def _paths(setting: Setting, model) -> dict[str, tuple[torch.nn.Module, str]]:
    """The two ways the attack check computes: CUDA and the CPU, or on the CPU the model
    contiguous and channels_last."""
    if torch.device(setting.device).type == "cuda":
        return {setting.device: (copy.deepcopy(model).to(setting.device), setting.device),
                "cpu": (copy.deepcopy(model), "cpu")}
    return {"cpu contiguous": (copy.deepcopy(model), "cpu"),
            "cpu channels_last": (copy.deepcopy(model).to(memory_format=torch.channels_last),
                                  "cpu")}


def _built_in(name: str) -> bool:
    """Whether robustmix registers attack ``name`` itself (not a plugin)."""
    from robustmix.attacks.registry import get

    attack = get(name)
    if attack.stages:
        return all(map(_built_in, attack.stages))
    return attack.perturb.__module__ in ("robustmix.attacks.builtin",
                                         "robustmix.attacks.autoattack")


def check_attacks(setting: Setting) -> dict[str, Any]:
    """Every built-in attack on two paths: per-example robust flags agree ≥ 99% per ε."""
    from robustmix.attacks.registry import registered
    from robustmix.attacks.sweep import robustness

    s = setting.sizes("attacks")
    subset = _subset(setting, s["n_examples"])
    names = tuple(name for name in registered() if _built_in(name))
    config = _attack_config(names, s)
    flags, accuracy, logits = {}, {}, {}
    with attack_budget(s["budget"]):
        for label, (model, device) in _paths(setting, subset.model).items():
            result = robustness(model, subset.x, subset.y, config, indices=subset.indices,
                                device=device, n_classes=subset.n_classes)
            flags[label] = {(name, eps.text): result.robust[(name, eps)]
                            for name in names for eps in config.eps}
            flags[label][("clean", "0")] = result.clean
            accuracy[label] = {f"{row.attack} {row.eps.text}": row.robust_acc
                               for row in result.rows}
            with torch.no_grad():
                logits[label] = model(subset.x.to(device)).float().cpu()
    first, second = flags
    fractions = agreement(flags[first], flags[second])
    logit_diff = float((logits[first] - logits[second]).abs().max())
    table = {f"{attack} {eps}": value for (attack, eps), value in fractions.items()}
    lowest = min(fractions, key=fractions.get)
    budget = "the reference budget" if not s["budget"] else _budget_text(s["budget"])
    return {"paths": [first, second], "n_examples": len(subset.y), "eps": list(s["eps"]),
            "budget": s["budget"], "agreement": table, "robust_acc": accuracy,
            "max_logit_difference": logit_diff,
            "failures": disagreements(fractions),
            "summary": f"{len(names)} built-in attacks ({budget}) × {len(config.eps)} ε on "
                       f"{len(subset.y)} digits, {first} against {second}: robust flags agree "
                       f"on {fractions[lowest]:.1%} at the least ({' '.join(lowest)}), "
                       f"logits differ by {logit_diff:.1e} at the most"}


def check_autoattack(setting: Setting) -> dict[str, Any]:
    """Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) on the device."""
    from robustmix.attacks.sweep import robustness

    s = setting.sizes("autoattack")
    subset = _subset(setting, s["n_examples"])
    config = _attack_config(("autoattack",), s)
    with attack_budget(s["budget"]):
        start = time.perf_counter()
        result = robustness(subset.model.to(setting.device), subset.x, subset.y, config,
                            indices=subset.indices, device=setting.device,
                            n_classes=subset.n_classes)
        seconds = time.perf_counter() - start
    row = next(r for r in result.rows if r.attack == "autoattack")
    failures = [] if 0 <= row.robust_acc <= row.clean_acc else \
        [f"robust accuracy {row.robust_acc} outside [0, clean {row.clean_acc}]"]
    budget = "the reference budget" if not s["budget"] else _budget_text(s["budget"])
    return {"n_examples": row.n_examples, "eps": row.eps.text, "clean_acc": row.clean_acc,
            "robust_acc": row.robust_acc, "attack_s": seconds, "checks": row.checks,
            "forward_passes": row.forward_passes, "backward_passes": row.backward_passes,
            "budget": s["budget"], "failures": failures,
            "summary": f"AutoAttack (APGD-CE, APGD-T, FAB-T, Square; {budget}) on "
                       f"{row.n_examples} digits at {row.eps.text}: clean {row.clean_acc:.1%}, "
                       f"robust {row.robust_acc:.1%}, {seconds:.1f} s; its checks: "
                       f"{', '.join(row.checks) or 'none'}"}


def _torchrun(setting: Setting, processes: int) -> dict[str, Any]:
    """``torchrun --nproc_per_node N -m robustmix train``, its ranks through
    :mod:`benchmarks.gpu_check_rank` (which records each one's peak memory); what it did.

    torchrun runs in this process (``torch.distributed.run.main``, what the ``torchrun``
    command calls), which saves importing torch once more; its ranks write to this
    check's log, where NCCL's version line is looked for.
    """
    from torch.distributed import run as torchrun

    s, cuda = setting.sizes("ddp"), torch.device(setting.device).type == "cuda"
    base = setting.work / f"ddp-{processes}"
    shutil.rmtree(base, ignore_errors=True)
    out, peaks = base / "run", base / "peaks"
    argv = ["--standalone", "--nproc_per_node", str(processes), "-m",
            "benchmarks.gpu_check_rank", str(peaks), "train", "--quiet", "--dataset", s["dataset"],
            "--arch", s["arch"], "--image-size", str(s["image_size"]),
            "--epochs", str(s["epochs"]), "--batch-size", str(s["batch_size"]),
            "--device", "cuda" if cuda else "cpu", "--threads", str(setting.threads),
            "--out", str(out)]
    os.environ.update({**commands_env(setting), "NCCL_DEBUG": "VERSION"})
    log = Path(setting.out) / "logs" / "ddp.log"
    sys.stdout.flush()
    offset = log.stat().st_size
    start = time.perf_counter()
    failure = None
    try:
        torchrun.main(argv)
    except Exception as err:  # ChildFailedError: a rank failed
        failure = one_line(err)
    seconds = time.perf_counter() - start
    with open(log, errors="replace") as printed:
        printed.seek(offset)
        nccl = re.search(r"NCCL version (\S+)", printed.read())
    numbers: dict[str, Any] = {"failure": failure, "seconds": seconds,
                               "nccl": nccl.group(1) if nccl else None,
                               "rank_peaks": [json.loads(p.read_text())
                                              for p in sorted(peaks.glob("rank*.json"))]}
    if failure is None and runs.is_complete(out):
        last = runs.read_metrics(out / runs.METRICS)[-1]
        numbers.update(world_size=runs.read_config(out).get("world_size"),
                       images_per_s=float(last["images_per_s"]),
                       test_acc=float(last["test_acc"]))
    return numbers


def _ddp_failures(processes: int, numbers: Mapping[str, Any], cuda: bool) -> list[str]:
    if numbers["failure"]:
        return [f"{processes} process(es): {numbers['failure']} (see the log)"]
    failures = []
    if numbers.get("world_size") != processes:
        failures.append(f"{processes} process(es): no complete run of world size {processes}")
    if cuda and numbers["nccl"] is None:
        failures.append(f"{processes} process(es): no 'NCCL version' line, so NCCL did not run")
    if len(numbers["rank_peaks"]) != processes:
        failures.append(f"{processes} process(es): {len(numbers['rank_peaks'])} ranks recorded")
    return failures


def check_ddp(setting: Setting) -> dict[str, Any]:
    """DDP training under torchrun: NCCL on CUDA (gloo on the CPU), 1 and 2 processes."""
    cuda = torch.device(setting.device).type == "cuda"
    counts = (1, 2) if not cuda or torch.cuda.device_count() >= 2 else (1,)
    results = {str(n): _torchrun(setting, n) for n in counts}
    failures = [f for n, numbers in results.items() for f in _ddp_failures(int(n), numbers, cuda)]
    gpu = [p["gpu_mib"] for r in results.values() for p in r["rank_peaks"]
           if p.get("gpu_mib") is not None]
    rss = [p["rss_mib"] for r in results.values() for p in r["rank_peaks"]]
    backend = "NCCL " + ", ".join(sorted({str(r["nccl"]) for r in results.values()})) \
        if cuda else "gloo"
    said = "; ".join(f"{n} process{'es' if n != '1' else ''} "
                     f"{r.get('images_per_s', 0):,.0f} images/s" for n, r in results.items())
    two = "" if "2" in results else "; 2 processes: skipped, one GPU"
    return {"backend": backend, "processes": results, "failures": failures,
            "peak": {"gpu_mib": max(gpu, default=None), "ranks_rss_mib": max(rss, default=None)},
            "summary": f"torchrun -m robustmix train ({backend}): {said}{two}"}


def check_study(setting: Setting) -> dict[str, Any]:
    """``robustmix study --jobs 2 --devices ...`` on a tiny digits study (in this process:
    its workers are processes of their own)."""
    from benchmarks import bench_study

    from robustmix.app.cli import main

    cuda = torch.device(setting.device).type == "cuda"
    devices = ",".join(f"cuda:{i}" for i in range(min(2, torch.cuda.device_count()))) \
        if cuda else "cpu"
    jobs, base = setting.sizes("study")["jobs"], setting.work / "study"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    (base / "tiny.toml").write_text(TINY_STUDY.replace("{device}", "cuda" if cuda else "cpu"))
    argv = ["study", "--quiet", "--config", str(base / "tiny.toml"), "--out", str(base / "study"),
            "--jobs", str(jobs), "--devices", devices, "--threads", str(setting.threads * jobs)]
    os.environ.update(commands_env(setting))
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = main(argv)
    seconds = time.perf_counter() - start
    print(printed.getvalue(), flush=True)
    done = [run for run in (base / "study" / "runs").glob("*") if runs.is_complete(run)]
    report = (base / "study" / "report.md").is_file()
    failures = [] if code == 0 and report and len(done) == 2 else \
        [f"robustmix study exited {code}: {len(done)} of 2 runs complete, report.md "
         f"{'written' if report else 'missing'} (see the log)"]
    return {"total_s": seconds, "per_kind_s": bench_study.per_kind(printed.getvalue()),
            "argv": argv, "complete_runs": len(done), "failures": failures,
            "peak": {"gpu_mib": None, "gpu_note": "in the study's workers, not measured"}
            if cuda else {},
            "summary": f"robustmix study --jobs {jobs} --devices {devices}: {len(done)} of 2 "
                       f"runs (1 epoch each) and the report in {seconds:.1f} s"}


CHECK_FUNCTIONS: dict[str, Callable[[Setting], dict[str, Any]]] = {
    "model": check_model, "train": check_train, "compile": check_compile,
    "mixing": check_mixing, "attacks": check_attacks, "autoattack": check_autoattack,
    "ddp": check_ddp, "study": check_study}


# --------------------------------------------------------------------------- the command


def run(setting: Setting, names: tuple[str, ...], *, timeout_scale: float = 1.0,
        command: str = "", echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Every check of ``names`` in turn, each in its process; the report, also written to
    OUT/gpu_check.json and OUT/gpu_check.md."""
    out = Path(setting.out)
    for folder in ("logs", "checks", "work"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    start = time.perf_counter()
    server_s = _start_server(context)
    records = {}
    for number, name in enumerate(names, 1):
        records[name] = run_check(context, name, setting, TIMEOUTS[name] * timeout_scale)
        record = records[name]
        echo(f"[{number}/{len(names)}] {name}: {record['status']} ({record['seconds']:.1f} s)"
             f" {record.get('reason') or record.get('summary') or ''}")
    cpu_s = _cpu_seconds_in_all()
    report = {"command": command, "machine": machine_info(setting.device),
              "card": card(torch.device(setting.device)),
              "setting": asdict(setting), "threads": setting.threads,
              "timeout_scale": timeout_scale, "seconds": time.perf_counter() - start,
              "server_start_s": server_s,
              "cpu_s": cpu_s, "checks": records}
    _write_json(out / "gpu_check.json", report)
    (out / "gpu_check.md").write_text(markdown(report))
    return report


def _start_server(context) -> float:
    """Start the fork server (it imports PRELOAD) before the first check's clock; seconds."""
    start = time.perf_counter()
    process = context.Process(target=os.getpid)
    process.start()
    process.join()
    return time.perf_counter() - start


def _cpu_seconds_in_all() -> float:
    """CPU time of this process and of every process it started: the fork server is
    stopped and waited for first, so that its own and its checks' times count."""
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)
    if stop is not None:
        stop()
    return cpu_seconds()


def parse(argv: list[str]) -> argparse.Namespace:
    from robustmix.app.cli import _Parser  # argparse, its errors one line and exit 2

    parser = _Parser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto",
                        help="cuda or cuda:N (the GPU checks; ddp and study use GPUs 0 and "
                             "1), cpu (every check at toy size), auto (default: cuda:0 when "
                             "there)")
    parser.add_argument("--out", default="gpu-check", help="folder for gpu_check.json/.md")
    parser.add_argument("--only", default=None, metavar="CHECK,CHECK",
                        help=f"some of {', '.join(CHECKS)} (attacks and autoattack bring model)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default: ROBUSTMIX_THREADS, else "
                             "OMP_NUM_THREADS, else the free cores)")
    parser.add_argument("--timeout-scale", type=float, default=1.0,
                        help="multiplies every check's timeout (default 1: 7.5 min in all)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile's backend (default: inductor on CUDA, aot_eager "
                             "on the CPU)")
    return parser.parse_args(argv)


def setting_from(args: argparse.Namespace) -> Setting:
    """The checks' setting from the command line; a UsageError for bad input."""
    try:
        device = resolve_device(args.device)
    except RuntimeError as err:  # torch.device's refusal of a name it does not know
        raise UsageError(f"--device takes auto, cpu, cuda or cuda:N, got {args.device!r} "
                         f"({str(err).splitlines()[0]})") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)   # torch.cuda.set_device needs the index
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: {torch.cuda.device_count()} GPU(s) visible")
    if not args.timeout_scale > 0:
        raise UsageError(f"--timeout-scale must be > 0, got {args.timeout_scale}")
    choice = threads.decide(args.threads)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {out}: cannot make the folder ({err.strerror})") from None
    backend = args.compile_backend or ("inductor" if device.type == "cuda" else "aot_eager")
    return Setting(str(device), choice.threads, backend, str(out.resolve()),
                   toy=device.type == "cpu")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    try:
        names = selected(args.only)
        setting = setting_from(args)
    except UsageError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    kind = "toy sizes on the CPU, CPU stand-ins" if setting.toy else f"on {setting.device}"
    print(f"gpu_check: {len(names)} checks, {kind}, {setting.threads} torch thread(s) each; "
          f"logs in {setting.out}/logs")
    report = run(setting, names, timeout_scale=args.timeout_scale,
                 command="python -m benchmarks.gpu_check " + " ".join(argv))
    print()
    print(markdown(report))
    print(f"wrote {setting.out}/gpu_check.json and gpu_check.md")
    return exit_code(report)


if __name__ == "__main__":
    sys.exit(main())
