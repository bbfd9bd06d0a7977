"""The `robustmix` command: argument parsing and dispatch only.

What each command does is in :mod:`robustmix.app.commands`, loaded when one runs.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from types import MappingProxyType
from typing import Sequence

from robustmix.core.errors import ConfigError, UsageError
from robustmix.core.methods import BUILTIN_OPTIONS, DATA_FREE_MIX_NAMES, MIX_NAMES

ALPHA_HELP = ("the mixing law's α: λ ~ Beta(α, α) (not torchattacks' alpha, PGD's step size: "
              "that is attack --pgd-step-size)")
MIX_HELP = (f"the MSDA: {', '.join(MIX_NAMES)}, a registered plugin's name, or a factory's "
            "path package.module:factory")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message}\n")


def _float_pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0.35,1), got {text!r}") from None
    if not 0 < lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"expected 0 < LO <= HI <= 1, got {text!r}")
    return lo, hi


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers (e.g. 100,150), got {text!r}") from None


class _KeyValues(argparse.Action):
    """``--flag KEY=VALUE``, repeatable, into a dict (the text; its type is the option's)."""

    def __call__(self, parser, namespace, values, option_string=None):
        key, sep, value = values.partition("=")
        if not sep or not key.strip():
            parser.error(f"argument {option_string}: expected KEY=VALUE, got {values!r}")
        setattr(namespace, self.dest, {**(getattr(namespace, self.dest) or {}),
                                       key.strip(): value})


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


# the options several commands share: each has one flag, one default and one meaning here
_SHARED = {
    "device": (("--device",), {
        "default": "auto", "help": "auto (CUDA when present; in a study: the study's own "
                                   "device setting, auto unless its TOML says), cpu, cuda, "
                                   "cuda:N (default: auto)"}),
    "threads": (("--threads",), {
        "type": _positive_int, "default": None, "metavar": "N",
        "help": "torch's intra-op threads (default: ROBUSTMIX_THREADS, else OMP_NUM_THREADS, "
                "else the cores not busy with other work at start)"}),
    "quiet": (("--quiet",), {"action": "store_true", "help": "no progress bars"}),
    "data_dir": (("--data-dir",), {
        "default": None, "metavar": "DIR",
        "help": "where torchvision data sets live (default: a trained run's own, else ./data)"}),
}


def _shared(*names: str) -> argparse.ArgumentParser:
    """The parent parser of a command's shared options (``_SHARED``)."""
    parent = argparse.ArgumentParser(add_help=False)
    for name in names:
        flags, settings = _SHARED[name]
        parent.add_argument(*flags, **settings)
    return parent


def say_renamed(old: str, new: str) -> None:
    """One stderr line for a form kept one release: its new form (on rank 0 under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"robustmix: {old} is now {new}; this form goes in the next release",
              file=sys.stderr)


class _Renamed(argparse.Action):
    """An old flag kept one release: stores as its new form does and says the new form."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        say_renamed(option_string, self.new)
        setattr(namespace, self.dest, values)


def _add_run_dirs(p: argparse.ArgumentParser, old: tuple[str, ...] = ()) -> None:
    """The runs a command takes: one positional list (``old``: the flags it replaces)."""
    p.add_argument("runs", nargs="*", metavar="RUN_DIR",
                   help="run directories, or folders of runs (a study's folder: its runs/), "
                        "each taken as its finished runs (default: every finished run under "
                        "./runs/)")
    if old:
        p.add_argument(*old, dest="old_runs", nargs="+", default=None, action=_Renamed,
                       new="a positional RUN_DIR...", help=argparse.SUPPRESS)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train one model under one MSDA into a run directory",
                       parents=[_shared("device", "threads", "quiet", "data_dir")],
                       description="Train one image classifier under one mixed-sample data "
                                   "augmentation; writes a resumable run directory.")
    _add_train_augmentation(p)
    _add_train_data(p)
    _add_train_recipe(p)
    _add_train_device_and_output(p)
    p.set_defaults(handler=_command("train"), parser=p)


def _add_train_augmentation(p: argparse.ArgumentParser) -> None:
    """train's MSDA options: the mix, λ's law and pairing, each method's knobs."""
    g = p.add_argument_group("augmentation")
    g.add_argument("--mix", default="vanilla", metavar="NAME",
                   help=MIX_HELP + " (default: vanilla)")
    g.add_argument("--alpha", type=float, default=1.0, help=ALPHA_HELP + " (default: %(default)s)")
    g.add_argument("--lam-per", choices=("batch", "sample"), default="batch",
                   help="one λ and mask per batch (the paper's code) or per sample")
    g.add_argument("--pairing", choices=("flip", "shuffle"), default="flip",
                   help="partner of sample k: B-1-k (flip, the paper's code) or a permutation")
    g.add_argument("--mix-prob", type=float, default=1.0,
                   help="probability that a batch (sample, with --lam-per sample) is mixed "
                        "(timm: --mixup-prob)")
    _add_method_options(g)
    g.add_argument("--mix-factory", dest="factory", default=None, metavar="MODULE:FACTORY",
                   help="the factory of --mix NAME: a plugin under a name of your choice "
                        "(--mix MODULE:FACTORY names it after the factory)")


def _add_method_options(g, names=tuple(BUILTIN_OPTIONS)) -> None:
    """A flag per built-in option, generated from its registry record (robustmix.core.methods:
    help, range, default; the flag's default None leaves the method's own), and
    ``--mix-option KEY=VALUE`` for any method's."""
    for name in names:
        method, spec = BUILTIN_OPTIONS[name]
        flag = "--" + name.replace("_", "-")
        kind = argparse.BooleanOptionalAction if isinstance(spec.default, bool) else None
        text = f"{method}: {spec.help}" + (f", {spec.range_text()}" if spec.range_text() else "")
        g.add_argument(flag, **({"action": kind} if kind else {"type": type(spec.default)}),
                       default=None,
                       help=f"{text} (default: {spec.default})".replace("%", "%%"))
    g.add_argument("--mix-option", dest="options", action=_KeyValues,
                   default=MappingProxyType({}),   # read-only: the parser is shared (_parser)
                   metavar="KEY=VALUE", help="an option of the method (repeatable), e.g. "
                                             "decay_power=3 for a plugin's")


def _add_train_data(p: argparse.ArgumentParser) -> None:
    """train's data set and its (unmixed) augmentation."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits",
                   help="digits (embedded, default), cifar10, cifar100, svhn, mnist, "
                        "fashionmnist, imagefolder:PATH (PATH/train, PATH/val), a plugin's "
                        "entry-point name, or a factory's path package.module:factory")
    g.add_argument("--download", action="store_true", help="fetch a torchvision data set")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="image folders: train without the files that cannot be decoded "
                        "(recorded in config.json); default: refuse to start")
    g.add_argument("--image-size", type=_positive_int, default=None,
                   help="resize images to this side (digits default: 16)")
    g.add_argument("--crop-scale", type=_float_pair, default=None, metavar="LO,HI",
                   help="random-resized-crop area scale instead of pad-crop (e.g. 0.08,1)")
    g.add_argument("--pad", type=int, default=None,
                   help="random-crop padding in pixels (default: image side / 8)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (default: on for CIFAR and image folders)")
    g.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="set N training images aside (a fixed choice, never trained on) and "
                        "score them each epoch; the report judges convergence on them "
                        "(default: 0, none)")


def _add_train_recipe(p: argparse.ArgumentParser) -> None:
    """train's architecture, optimizer, schedule and seed."""
    g = p.add_argument_group("model and recipe")
    g.add_argument("--arch", default="smallcnn",
                   help="smallcnn (default), preactresnet18/34/50, wrnDEPTH-WIDTH (e.g. "
                        "wrn28-2), resnetN for CIFAR (e.g. resnet56), resnet50 (torchvision), "
                        "a plugin's entry-point name, or a factory's path package.module:factory")
    g.add_argument("--epochs", type=int, default=15)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--lr", type=float, default=0.05, help="peak learning rate (SGD)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--nesterov", action="store_true")
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--schedule", choices=("cosine", "multistep"), default="cosine",
                   help="(timm: --sched; default: %(default)s)")
    g.add_argument("--milestones", type=_int_list, default=(), metavar="E1,E2",
                   help="multistep: epochs at which the lr is multiplied by --lr-gamma")
    g.add_argument("--lr-gamma", type=float, default=0.1)
    g.add_argument("--warmup-epochs", type=float, default=0.0)
    g.add_argument("--label-smoothing", type=float, default=0.0,
                   help="(timm: --smoothing; default: %(default)s)")
    g.add_argument("--seed", type=int, default=0)


def _add_train_device_and_output(p: argparse.ArgumentParser) -> None:
    """train's device, speed options and run directory."""
    g = p.add_argument_group("device and output")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 autocast on CUDA (default: on)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format on CUDA (default: on)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (pays off on a GPU, after warm-up)")
    g.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs: batch-norm statistics over the global batch")
    g.add_argument("--log-interval", type=int, default=20,
                   help="steps between progress updates (the only host synchronizations)")
    g.add_argument("--out", default=None, metavar="FOLDER",
                   help="run directory (default: runs/<dataset>-<arch>-<mix>-s<seed>)")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue a killed run from its last checkpoint, with its own settings")
    g.add_argument("--tensorboard", action="store_true",
                   help="TensorBoard event files in the run directory (pip install "
                        "'robustmix[tensorboard]')")




def _add_masks(sub) -> None:
    p = sub.add_parser("masks", help="mask gallery (PNG) or the kernel c(p) of one MSDA (CSV)",
                       description="Draw each MSDA's mask at a fixed λ (--out), and/or write the "
                                   "regularization kernel c(p) = E[(1-M_u)(1-M_u+p)] of one "
                                   "MSDA for horizontal offsets p (--kernel).")
    p.add_argument("--size", type=_positive_int, default=32, help="image side in pixels")
    p.add_argument("--mix", default="cutmix", metavar="NAME",
                   help="for --kernel: " + MIX_HELP + " (default: cutmix)")
    p.add_argument("--kernel", default=None, metavar="FILE.csv", help="write c(p) as offset,c")
    p.add_argument("--draws", type=_positive_int, default=4096,
                   help="masks drawn to estimate c(p)")
    p.add_argument("--alpha", type=float, default=1.0, help=ALPHA_HELP + " (default: %(default)s)")
    _add_method_options(p, tuple(key for key, (method, _) in BUILTIN_OPTIONS.items()
                                 if method in DATA_FREE_MIX_NAMES))   # the kernel's methods
    p.add_argument("--lam", type=float, default=0.65, help="λ of the gallery (default: 0.65)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="FOLDER",
                   help="write the gallery, FOLDER/mask_gallery.png")
    p.set_defaults(handler=_command("masks"), parser=p)


def _add_attack(sub) -> None:
    p = sub.add_parser("attack", help="FGSM / PGD / AutoAttack accuracy over an ε grid",
                       parents=[_shared("device", "threads", "quiet", "data_dir")],
                       description="Measure clean and robust accuracy of trained runs on their "
                                   "test split; writes RUN_DIR/robustness.csv. The settings "
                                   "are a study's [attack] section, with its defaults.")
    _add_run_dirs(p, old=("--run", "--runs"))
    _add_attack_settings(p)
    p.add_argument("--skip-bad-images", action="store_true",
                   help="image folders: leave out test images that cannot be decoded now")
    p.set_defaults(handler=_command("attack"), parser=p)


def _add_attack_settings(p: argparse.ArgumentParser) -> None:
    """The fields of a study's [attack] (robustmix.app.study_config.AttackPlan), one flag
    each; default None: the field's default, which each help states (a test holds them)."""
    p.add_argument("--eps", default=None,
                   help="budget(s): 8/255, 0.031, or a comma list (default: 8/255)")
    p.add_argument("--norm", default=None, choices=("linf", "l2"), help="(default: linf)")
    p.add_argument("--attacks", default=None,
                   help="comma list of attacks: fgsm, pgd, apgd (APGD-CE + APGD-T), "
                        "autoattack (standard: + FAB-T, Square), apgd-ce, apgd-t, fab-t, "
                        "square, torchattacks:NAME[,KEY=VALUE...] (the torchattacks extra), "
                        "package.module:attack (your own); KEY=VALUE items set the "
                        "attack before them, e.g. apgd,targets=3 (default: fgsm,pgd,apgd)")
    p.add_argument("--pgd-steps", type=_positive_int, default=None,
                   help="PGD iterations, torchattacks' steps (default: 20)")
    p.add_argument("--pgd-step-size", type=float, default=None, metavar="SIZE",
                   help="PGD step size, torchattacks' alpha (default: ε/4)")
    p.add_argument("--pgd-step", dest="pgd_step_size", type=float, action=_Renamed,
                   new="--pgd-step-size", help=argparse.SUPPRESS)
    p.add_argument("--restarts", type=_positive_int, default=None,
                   help="PGD restarts (AutoAttack's n_restarts); an example counts as broken "
                        "if any restart breaks it (default: 1)")
    p.add_argument("--n-examples", type=_positive_int, default=None,
                   help="a fixed subset of the test set, RobustBench's n_examples (default: "
                        "all of it)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="(default: 256)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of PGD starts and AutoAttack (default: 0)")
    p.add_argument("--diagnostics", action=argparse.BooleanOptionalAction, default=None,
                   help="the attack-failure checks after the sweep, RUN_DIR/diagnostics.csv "
                        "(with several runs, each also checked by transfer from the next; "
                        "default: on)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="train-test gap, first-layer norms, gradient profiles, Q",
                       parents=[_shared("device", "threads", "data_dir")],
                       description="Measure generalization and the paper's regularizers on "
                                   "trained runs; writes RUN_DIR/generalization.json and CSVs.")
    _add_run_dirs(p, old=("--run",))
    p.add_argument("--n-examples", type=_positive_int, default=None,
                   help="a fixed subset of the test set for the gradient parts")
    p.add_argument("--q-draws", type=_positive_int, default=512,
                   help="image pairs and masks drawn to estimate Q (default: 512)")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad-images", action="store_true",
                   help="image folders: leave out images that cannot be decoded now")
    p.add_argument("--corruptions", action="store_true",
                   help="also accuracy and calibration under common corruptions: "
                        "RUN_DIR/corruptions.csv (CIFAR-10-C / CIFAR-100-C from --data-dir "
                        "for CIFAR runs when present, else the on-the-fly suite)")
    p.add_argument("--corruption-examples", type=_positive_int, default=None,
                   help="a fixed subset of the test set for the corruptions (default: all)")
    p.set_defaults(handler=_command("evaluate"), parser=p)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="compare runs: tables, plots, the paper's predictions",
                       description="Gather runs (seeds averaged) into OUT/report.md with CSV "
                                   "tables and PNG plots.")
    _add_run_dirs(p)
    p.add_argument("--out", default="report", metavar="FOLDER",
                   help="output folder (default: report)")
    p.add_argument("--open", action="store_true",
                   help="open report.md in the system's viewer once written")
    p.set_defaults(handler=_command("report"), parser=p)


def _add_study(sub) -> None:
    p = sub.add_parser("study", help="the whole comparison: train, attack, evaluate, report",
                       parents=[_shared("device", "threads", "quiet")],
                       description="Train every MSDA over several seeds, attack each model, "
                                   "evaluate generalization, and write OUT/report.md. Rerun "
                                   "the same command to resume after a crash.")
    p.add_argument("--preset", default=None,
                   help="digits (default), cifar10-robustness, cifar100-table2, "
                        "imagenet100-scenarios")
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="a custom study (keys as printed by --print-config)")
    p.add_argument("--print-config", action="store_true",
                   help="print the study's settings as TOML and exit")
    p.add_argument("--methods", default=None, help="comma list overriding the methods")
    p.add_argument("--seeds", type=_int_list, default=None, metavar="S1,S2",
                   help="comma list overriding the seeds")
    p.add_argument("--out", default=None, metavar="FOLDER",
                   help="output folder (default: the preset's)")
    p.add_argument("--dry-run", action="store_true", help="list what would run and what is done")
    phase = p.add_mutually_exclusive_group()
    phase.add_argument("--pilot", action="store_true",
                       help="the pilot: every method on the preset's pilot_seeds (or --seeds) "
                            "in OUT/pilot, exploratory only (no verdicts); then robustmix power")
    phase.add_argument("--confirm", action="store_true",
                       help="the declared study in OUT again on fresh seeds (OUT/confirmation); "
                            "writes OUT/confirmation.md: which primaries replicated")
    _add_study_fan_out(p)
    p.set_defaults(handler=_command("study"), parser=p)


def _add_study_fan_out(p: argparse.ArgumentParser) -> None:
    """study's worker processes (robustmix.app.pool)."""
    g = p.add_argument_group("many runs at once")
    g.add_argument("--jobs", type=_positive_int, default=None, metavar="N",
                   help="up to N runs at once, each in its own process (default: one run "
                        "at a time in this process; with --devices: one per device)")
    g.add_argument("--devices", default=None, metavar="cuda:0,cuda:1",
                   help="GPUs the workers share, one run per GPU at a time, or cpu "
                        "(default with --jobs: every visible GPU, else the CPU)")
    g = p.add_argument_group("a SLURM cluster (pip install 'robustmix[slurm]')")
    g.add_argument("--executor", choices=("slurm", "submitit-local"), default=None,
                   help="one job per run as a SLURM job array (submitit-local: the same "
                        "through submitit's local processes)")
    g.add_argument("--no-wait", action="store_true",
                   help="return once submitted; rerun the command to see what is done")
    g.add_argument("--slurm-partition", default=None)
    g.add_argument("--slurm-time", default=None, metavar="TIME",
                   help="per job: minutes, H:MM:SS or D-H:MM:SS (default: 24:00:00)")
    g.add_argument("--slurm-gpus-per-job", type=_positive_int, default=None, metavar="N")
    g.add_argument("--slurm-cpus-per-job", type=_positive_int, default=None, metavar="N")
    g.add_argument("--slurm-mem", default=None, metavar="MEM", help="per job, e.g. 32G")
    g.add_argument("--slurm-array-parallelism", type=_positive_int, default=None,
                   metavar="N", help="at most N runs at once")
    g.add_argument("--slurm-extra", action="append", default=None, metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. account=myproject (repeatable)")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def _add_power(sub) -> None:
    p = sub.add_parser("power", help="seeds by power: read a pilot, choose the runs per method",
                       description="Read a study's pilot (OUT/pilot, after robustmix study "
                                   "--pilot), simulate whole studies through the report's "
                                   "test and Holm correction at the pilot's effects and seed "
                                   "spreads, and choose the runs per method within a budget; "
                                   "--declare freezes the confirmatory study in OUT/study.toml.")
    p.add_argument("study", nargs="?", default="study",
                   help="the study folder (its pilot/ is read; default: study)")
    p.add_argument("--power", type=_fraction, default=0.8, help="target power per primary "
                   "(default: %(default)s)")
    p.add_argument("--budget", type=_positive_int, default=40, metavar="RUNS",
                   help="most runs the confirmatory study may train (default: %(default)s)")
    p.add_argument("--studies", type=_positive_int, default=2000,
                   help="simulated studies per allocation (default: %(default)s)")
    p.add_argument("--no-strong", action="store_true",
                   help="accept worst-case rows made without APGD / AutoAttack")
    p.add_argument("--declare", action="store_true",
                   help="write OUT/study.toml: the pilot's study on fresh seeds, frozen")
    p.set_defaults(handler=_command("power"), parser=p)


def _add_runs(sub) -> None:
    p = sub.add_parser("runs", help="a table of runs: how far each got, and the next command",
                       description="One row per run (finished or not): method, seed, "
                                   "epochs done of planned, test accuracy, attacked at which "
                                   "ε, evaluated, converged; then the command that takes them "
                                   "further.")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR",
                   help="run directories, or folders of runs (a study's folder: its runs/) "
                        "(default: every run under ./runs/)")
    p.set_defaults(handler=_command("runs"), parser=p)


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers (e.g. 0.4914,0.4822,0.4465), got {text!r}") from None


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="turn weights trained elsewhere into a run directory",
                       parents=[_shared("data_dir")],
                       description="Fit a safetensors file or a PyTorch state dict (read with "
                                   "weights_only=True) to a zoo architecture or a timm model, "
                                   "with its normalization inside; attack, evaluate and "
                                   "report then work on it as on a trained run.")
    p.add_argument("--weights", required=True, metavar="FILE",
                   help=".safetensors, or a PyTorch file holding a state dict")
    p.add_argument("--arch", required=True,
                   help="a zoo architecture (smallcnn, preactresnet18, wrn28-10, resnet56, "
                        "resnet50, ...), timm:NAME (needs timm), or a factory's path "
                        "package.module:factory")
    p.add_argument("--dataset", default="digits",
                   help="the data set it was trained on (as train's --dataset)")
    p.add_argument("--image-size", type=_positive_int, default=None,
                   help="the image side it was trained at (default: the data set's)")
    p.add_argument("--mean", type=_float_list, default=None, metavar="M1,M2,...",
                   help="per-channel mean of its input normalization, one value for all channels "
                        "or one per channel (default: the data set's)")
    p.add_argument("--std", type=_float_list, default=None, metavar="S1,S2,...",
                   help="per-channel std of its input normalization (default: the data set's)")
    p.add_argument("--mix", default="vanilla", metavar="NAME",
                   help="the MSDA it was trained with, which the report groups by: "
                        + MIX_HELP + " (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="that MSDA's " + ALPHA_HELP + " (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="FOLDER",
                   help="the run directory to write (new or empty)")
    p.set_defaults(handler=_command("import"), parser=p)


def _command(name: str):
    """The handler of command ``name``, from :mod:`robustmix.app.commands`."""
    def handler(args: argparse.Namespace) -> int:
        # here, not at the top: torch and the libraries load only when a command runs, so
        # ``robustmix --help`` and a mistyped flag answer at once
        from robustmix.app import commands

        return commands.HANDLERS[name](args)
    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robustmix", description="Adversarial robustness and generalization "
                     "of mixed-sample data augmentation (Mixup, CutMix, HMix, GMix, ...).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)
    _add_train(sub)
    _add_attack(sub)
    _add_evaluate(sub)
    _add_report(sub)
    _add_study(sub)
    _add_power(sub)
    _add_masks(sub)
    _add_runs(sub)
    _add_import(sub)
    return parser


# fields whose flag is not the field's name with dashes
_FLAGS = {"pgd.steps": "--pgd-steps", "pgd.step_size": "--pgd-step-size",
          "pgd.restarts": "--restarts", "options": "--mix-option", "factory": "--mix-factory"}


def _in_flags(err: UsageError, parser: argparse.ArgumentParser,
              mix_options: dict | None = None) -> str:
    """The error's message, a setting's field named as the flag this command's user typed.

    Only an error about a setting given on the command line is translated: one read from
    a file (a study's TOML, a run's config.json) names the file and keeps the field name.
    """
    if not isinstance(err, ConfigError) or err.source is not None:
        return str(err)
    flag = _flag(err.field)
    flags = {option for action in parser._actions for option in action.option_strings}
    if flag not in flags and err.field in (mix_options or {}):   # a plugin's option
        return f"--mix-option {err.field} {err.problem}"
    if flag not in flags:
        return str(err)
    problem = err.problem
    for field in getattr(err, "mentions", ()):   # other settings the problem names
        if _flag(field) in flags:
            problem = re.sub(rf"(?<![\w-]){re.escape(field)}\b", _flag(field), problem)
    return f"{flag} {problem}"


def _flag(field: str) -> str:
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


def _computes(args: argparse.Namespace) -> bool:
    """Whether the command computes with torch (so its thread count matters): a command
    with --threads, except a study that only prints its settings or its plan."""
    return hasattr(args, "threads") and not (getattr(args, "print_config", False)
                                             or getattr(args, "dry_run", False))


def _choose_threads(args: argparse.Namespace) -> int | None:
    """Set torch's threads as robustmix.core.threads decides, say so once (on rank 0 under
    torchrun); returns the count torch had before, None when nothing was set."""
    if not _computes(args):
        return None
    # here, not at the top: the policy imports torch only when a command computes
    from robustmix.core import threads

    choice = threads.decide(args.threads)
    if os.environ.get("RANK", "0") == "0":
        print(choice.line(), flush=True)
    return threads.apply(choice)


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """The parser ``main`` parses with, built once per process. Building it takes about 7 ms
    (faster AMD EPYC), which a caller of ``main`` in one process pays on every call (the
    fast test tier: about 1,100 calls). Parsing leaves it as it was: no default can be changed in place."""
    return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    before = None
    try:
        before = _choose_threads(args)
        return args.handler(args)
    except UsageError as err:
        distributed = sys.modules.get("robustmix.core.distributed")  # loaded by a command only
        is_main = distributed is None or distributed.current().is_main
        if is_main or not getattr(err, "shared", False):
            line = _in_flags(err, args.parser, getattr(args, "options", None))
            print(f"robustmix {args.command}: error: {line}",
                  file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"robustmix {args.command}: interrupted; finished work is kept "
              "(rerun to continue)", file=sys.stderr)
        return 130
    finally:
        if (module := sys.modules.get("robustmix.core.distributed")) is not None:
            module.leave()
        if before is not None:   # a caller in this process (a test) keeps its own count
            sys.modules["robustmix.core.threads"].release()
            sys.modules["robustmix.core.threads"].set_count(before)


if __name__ == "__main__":
    sys.exit(main())
