"""`robustmix study`: train every MSDA over seeds, attack, evaluate, report — restartably.

A study is a list of steps (train, attack, evaluate for every variant × method × seed,
then the report). Each step reads and writes plain files in its run directory and counts
as done when its files say so, so rerunning the same command after a crash or Ctrl-C
skips what is finished, resumes the training run that was cut off (from its last
checkpoint), and redoes no finished attack or evaluation.

Presets live in :data:`PRESETS`; a TOML file with the same keys makes a custom study
(``robustmix study --preset NAME --print-config`` prints one to start from).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from attacks import ATTACKS, AttackConfig, PGDSettings, parse_eps
from attacks.runner import ROBUSTNESS, attack_run, read_rows
from evaluations import evaluate_run, write_report
from robustmix.core import runs
from robustmix.core.config import MIX_NAMES, TrainConfig
from robustmix.core.devices import resolve_device
from robustmix.core.errors import UsageError
from robustmix.training.trainer import train

STUDY_METHODS = ("vanilla", "mixup", "cutmix", "stochastic", "hmix", "gmix", "puzzlemix")
MIX_KEYS = ("alpha", "lam_per", "pairing", "mix_prob", "switch_prob", "hmix_r", "puzzle_beta",
            "puzzle_gamma", "puzzle_eta", "puzzle_transport")

_DIGITS = {
    "description": "every MSDA on the embedded digits (8×8), 3 seeds, trained to "
                   "convergence; minutes on a CPU",
    "out": "study",
    "methods": list(STUDY_METHODS),
    "seeds": [0, 1, 2],
    "device": "auto",
    # digits at their native 8×8: every method converges to ~99% test accuracy in 15
    # epochs, and the study fits in 10 minutes on 2 CPU cores (benchmarks/bench_study.py)
    "train": {"dataset": "digits", "arch": "smallcnn", "image_size": 8, "epochs": 15,
              "batch_size": 64, "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine"},
    # 8×8 digits are robust to the ε used on CIFAR; the grid spans where PGD starts to
    # break examples to where it breaks most of them
    "attack": {"eps": "8/255,16/255,24/255,32/255,48/255", "norm": "linf",
               "attacks": ["fgsm", "pgd"], "pgd_steps": 10, "restarts": 1, "n_examples": 200,
               # APGD-CE + APGD-T (AutoAttack's gradient attacks) on the same examples and
               # every seed; FAB-T and Square cost ~35 s a model on 2 cores
               "autoattack": "autoattack-fast", "autoattack_eps": "32/255",
               "autoattack_examples": 200, "autoattack_seeds": [], "batch_size": 256,
               "seed": 0},
    "evaluate": {"n_examples": 200, "q_draws": 256, "seed": 0},
}

_CIFAR_RECIPE = {"arch": "preactresnet18", "epochs": 200, "batch_size": 128, "lr": 0.1,
                 "weight_decay": 5e-4, "schedule": "cosine", "data_dir": "data"}

PRESETS: dict[str, dict[str, Any]] = {
    "digits": _DIGITS,
    "cifar10-robustness": {
        "description": "PreActResNet-18 on CIFAR-10, every MSDA: robustness from 1/255 to "
                       "8/255, AutoAttack on 1,000 test images (a GPU job)",
        "out": "study-cifar10", "methods": list(STUDY_METHODS), "seeds": [0, 1, 2],
        "device": "auto",
        "train": {"dataset": "cifar10", **_CIFAR_RECIPE},
        "attack": {"eps": "1/255,2/255,4/255,8/255", "norm": "linf", "attacks": ["fgsm", "pgd"],
                   "pgd_steps": 20, "restarts": 1, "n_examples": 1000,
                   "autoattack": "autoattack", "autoattack_eps": "1/255,2/255,4/255,8/255",
                   "autoattack_examples": 1000, "autoattack_seeds": [], "batch_size": 500, "seed": 0},
        "evaluate": {"n_examples": 1000, "q_draws": 512, "seed": 0},
    },
    "cifar100-table2": {
        "description": "the paper's Table 2 setting: PreActResNet-18 on CIFAR-100, every "
                       "MSDA, 200 epochs; accuracies beside the paper's (a GPU job)",
        "out": "study-cifar100", "methods": list(STUDY_METHODS), "seeds": [0, 1, 2],
        "device": "auto", "paper": "cifar100-preactresnet18",
        "train": {"dataset": "cifar100", **_CIFAR_RECIPE},
        "attack": {"eps": "1/255,2/255,4/255,8/255", "norm": "linf", "attacks": ["fgsm", "pgd"],
                   "pgd_steps": 20, "restarts": 1, "n_examples": 1000, "autoattack": "",
                   "autoattack_eps": "", "autoattack_examples": 0, "autoattack_seeds": [], "batch_size": 500,
                   "seed": 0},
        "evaluate": {"n_examples": 1000, "q_draws": 512, "seed": 0},
    },
    "imagenet100-scenarios": {
        "description": "the paper's scenario table: Mixup and CutMix on an ImageNet-100 image "
                       "folder with a large-crop and a small-crop scale (a multi-GPU job)",
        "out": "study-imagenet100", "methods": ["mixup", "cutmix"], "seeds": [0],
        "device": "auto", "paper": "imagenet100-scenarios",
        "variants": {"large-crop": {"crop_scale": [0.5, 1.0]},
                     "small-crop": {"crop_scale": [0.08, 0.3]}},
        "train": {"dataset": "imagefolder:data/imagenet100", "arch": "resnet50",
                  "image_size": 224, "epochs": 100, "batch_size": 256, "lr": 0.1,
                  "weight_decay": 1e-4, "schedule": "cosine", "warmup_epochs": 5},
        "attack": {"eps": "1/255,2/255,4/255", "norm": "linf", "attacks": ["fgsm", "pgd"],
                   "pgd_steps": 10, "restarts": 1, "n_examples": 1000, "autoattack": "",
                   "autoattack_eps": "", "autoattack_examples": 0, "autoattack_seeds": [], "batch_size": 250,
                   "seed": 0},
        "evaluate": {"n_examples": 500, "q_draws": 256, "seed": 0},
    },
}

# The paper's numbers (../shared/paper.md): Table 2, PreActResNet-18 column, and the
# ImageNet-100 scenario table.
PAPER = {
    "cifar100-preactresnet18": {
        "title": "CIFAR-100, PreActResNet-18 top-1 (%) — the paper's Table 2",
        "rows": {"vanilla": 76.73, "mixup": 77.21, "cutmix": 78.66, "puzzlemix": 79.38,
                 "stochastic": 79.25, "hmix": 79.25, "gmix": 79.17}},
    "imagenet100-scenarios": {
        "title": "ImageNet-100 validation accuracy (%) — the paper's scenario table",
        "rows": {"large-crop/mixup": 58.3, "large-crop/cutmix": 64.4,
                 "small-crop/mixup": 67.7, "small-crop/cutmix": 67.0}},
}

TOP_KEYS = {"description", "out", "methods", "seeds", "device", "train", "attack", "evaluate",
            "variants", "paper"}
ATTACK_KEYS = set(_DIGITS["attack"])
EVALUATE_KEYS = set(_DIGITS["evaluate"])


# ------------------------------------------------------------------------------ config


def load_config(preset: str | None, config_path: str | None) -> dict[str, Any]:
    """A preset by name, or a TOML file (keys as in the presets; missing keys from the preset
    it names as ``preset = "NAME"``, else from digits). A TOML whose [train] names another
    data set than that preset's does not inherit the preset's image size (digits' 8×8)."""
    if config_path is not None:
        import tomllib  # standard library from Python 3.11; on 3.10 only --config needs it

        try:
            with open(config_path, "rb") as handle:
                values = tomllib.load(handle)
        except FileNotFoundError:
            raise UsageError(f"--config {config_path}: no such file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"--config {config_path} is not valid TOML ({err})") from None
        base = copy.deepcopy(PRESETS[values.get("preset", "digits")]
                             if values.get("preset", "digits") in PRESETS else _DIGITS)
        values.pop("preset", None)
        train = values.get("train")
        if isinstance(train, dict) and train.get("dataset", base["train"]["dataset"]) != \
                base["train"]["dataset"] and "image_size" not in train:
            base["train"].pop("image_size", None)
        return check_config(_merge(base, values), source=config_path)
    name = preset or "digits"
    if name not in PRESETS:
        raise UsageError(f"unknown preset '{name}'; valid: {', '.join(PRESETS)}")
    return check_config(copy.deepcopy(PRESETS[name]), source=f"preset {name}")


def _merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "variants":
            base[key] = _merge(base[key], value)
        else:
            base[key] = value
    return base


def check_config(config: dict[str, Any], source: str) -> dict[str, Any]:
    """Refuse unknown keys and wrong types with one line naming the key."""
    unknown = sorted(set(config) - TOP_KEYS)
    if unknown:
        raise UsageError(f"{source}: unknown keys {', '.join(unknown)}; valid: "
                         f"{', '.join(sorted(TOP_KEYS))}")
    for section, known in (("attack", ATTACK_KEYS), ("evaluate", EVALUATE_KEYS)):
        extra = sorted(set(config.get(section, {})) - known)
        if extra:
            raise UsageError(f"{source}: unknown [{section}] keys {', '.join(extra)}; valid: "
                             f"{', '.join(sorted(known))}")
    methods, seeds = config.get("methods"), config.get("seeds")
    if not isinstance(methods, list) or not methods or any(m not in MIX_NAMES for m in methods):
        raise UsageError(f"{source}: methods must be a non-empty list of {', '.join(MIX_NAMES)}; "
                         f"got {methods!r}")
    if not isinstance(seeds, list) or not seeds or any(
            not isinstance(s, int) or isinstance(s, bool) for s in seeds):
        raise UsageError(f"{source}: seeds must be a non-empty list of integers; got {seeds!r}")
    if not isinstance(config.get("out"), str) or not config["out"]:
        raise UsageError(f"{source}: out must be a directory name")
    if not isinstance(config.get("variants", {}), dict):
        raise UsageError(f"{source}: variants must be a table of name = {{train overrides}}")
    for variant in _variants(config):
        train_config(config, variant, methods[0], seeds[0], source)  # validates [train]
    attack = config["attack"]
    try:
        parse_eps(attack["eps"])
        if attack.get("autoattack"):
            if attack["autoattack"] not in ATTACKS or not attack["autoattack"].startswith("auto"):
                raise UsageError(f"{source}: attack.autoattack must be autoattack, "
                                 f"autoattack-fast or empty; got {attack['autoattack']!r}")
            parse_eps(attack["autoattack_eps"])
        gradient = attack["attacks"]
        if not isinstance(gradient, list) or any(a not in ("fgsm", "pgd") for a in gradient):
            raise UsageError(f"{source}: attack.attacks must be a list of fgsm, pgd; "
                             f"got {gradient!r}")
        if not isinstance(attack["autoattack_seeds"], list) or any(
                not isinstance(s, int) or isinstance(s, bool) for s in attack["autoattack_seeds"]):
            raise UsageError(f"{source}: attack.autoattack_seeds must be a list of seeds "
                             f"([] for every seed); got {attack['autoattack_seeds']!r}")
        for key in ("pgd_steps", "restarts", "batch_size", "n_examples",
                    "autoattack_examples", "seed"):
            if not isinstance(attack[key], int) or isinstance(attack[key], bool) or \
                    attack[key] < (0 if key in ("n_examples", "autoattack_examples", "seed")
                                   else 1):
                raise UsageError(f"{source}: attack.{key} must be a non-negative integer; "
                                 f"got {attack[key]!r}")
        for key in ("n_examples", "q_draws", "seed"):
            value = config["evaluate"][key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UsageError(f"{source}: evaluate.{key} must be a non-negative integer; "
                                 f"got {value!r}")
    except KeyError as err:
        raise UsageError(f"{source}: missing key {err}") from None
    return config


def _variants(config: dict[str, Any]) -> list[str]:
    return list(config.get("variants", {})) or [""]


def train_config(config: dict[str, Any], variant: str, method: str, seed: int,
                 source: str = "study"):
    """The TrainConfig of one run of the study."""
    values = dict(config["train"])
    if variant:
        overrides = config["variants"][variant]
        if not isinstance(overrides, dict):
            raise UsageError(f"{source}: variant {variant} must be a table of train settings")
        values.update(overrides)
    mix = {key: values.pop(key) for key in MIX_KEYS if key in values}
    values.update(seed=seed, device=config["device"], mix={"mix": method, **mix})
    return TrainConfig.from_dict(values, source=f"{source} [train]")


def to_toml(config: dict[str, Any]) -> str:
    """A study config as TOML (scalars and lists at the top, then one table per section)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines = []
    for key, v in config.items():
        if not isinstance(v, dict):
            lines.append(f"{key} = {value(v)}")
    for key, v in config.items():
        if isinstance(v, dict) and key != "variants":
            lines += ["", f"[{key}]"] + [f"{k} = {value(x)}" for k, x in v.items()
                                         if x is not None]
    for name, overrides in config.get("variants", {}).items():
        lines += ["", f'[variants."{name}"]'] + [f"{k} = {value(x)}"
                                                 for k, x in overrides.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ steps


@dataclass
class Step:
    kind: str            # train | attack | autoattack | evaluate | report
    run_dir: Path
    label: str
    done: Callable[[], bool]
    action: Callable[[], str]


def _run_name(variant: str, method: str, seed: int) -> str:
    return f"{variant + '-' if variant else ''}{method}-s{seed}"


def plan(config: dict[str, Any], *, progress: bool = True) -> list[Step]:
    """Every step of the study, in order, with its 'done' test and its action."""
    out = Path(config["out"])
    attack = config["attack"]
    evaluate = config["evaluate"]
    device = config["device"]
    gradient = AttackConfig(
        attacks=tuple(attack["attacks"]), eps=tuple(parse_eps(attack["eps"])),
        norm=attack["norm"], batch_size=attack["batch_size"], seed=attack["seed"],
        pgd=PGDSettings(steps=attack["pgd_steps"], restarts=attack["restarts"]))
    auto = None
    if attack.get("autoattack"):
        auto = dataclasses.replace(gradient, attacks=(attack["autoattack"],),
                                   eps=tuple(parse_eps(attack["autoattack_eps"])))
    steps: list[Step] = []
    run_dirs = []
    for variant in _variants(config):
        for method in config["methods"]:
            for seed in config["seeds"]:
                run_dir = out / "runs" / _run_name(variant, method, seed)
                run_dirs.append(run_dir)
                train = train_config(config, variant, method, seed)
                label = _run_name(variant, method, seed)
                steps.append(Step("train", run_dir, label,
                                  lambda d=run_dir, t=train: _trained(d, t),
                                  lambda d=run_dir, t=train: _train(d, t, progress)))
                if gradient.attacks:
                    steps.append(_attack_step("attack", run_dir, label, gradient, device,
                                              attack["n_examples"], progress))
                if auto is not None and (seed in attack["autoattack_seeds"]
                                         or not attack["autoattack_seeds"]):
                    steps.append(_attack_step("autoattack", run_dir, label, auto, device,
                                              attack["autoattack_examples"], progress))
                steps.append(Step("evaluate", run_dir, label,
                                  lambda d=run_dir: _evaluated(d, evaluate),
                                  lambda d=run_dir: _evaluate(d, evaluate, device)))
    steps.append(Step("report", out, "report", lambda: False,
                      lambda: _report(run_dirs, out, config)))
    return steps


def _trained(run_dir: Path, config) -> bool:
    """Whether the run is complete; a run directory with other settings is refused."""
    config_path = run_dir / runs.CONFIG
    if config_path.exists():
        saved = TrainConfig.from_dict(runs.read_config(run_dir)["train"],
                                      source=str(config_path))
        if saved != config:
            raise UsageError(f"{run_dir} was trained with other settings than this study's; "
                             "use another --out, or delete that run directory")
    return runs.is_complete(run_dir)


def _train(run_dir: Path, config, progress: bool) -> str:
    _trained(run_dir, config)
    result = train(config, run_dir, resume=(run_dir / runs.CONFIG).exists(), progress=progress)
    resumed = f", resumed after epoch {result.resumed_from}" if result.resumed_from else ""
    return f"test accuracy {result.test_acc:.2%}{resumed}"


def _attack_step(kind: str, run_dir: Path, label: str, config, device: str, n_examples: int,
                 progress: bool) -> Step:
    """A step that runs one attack configuration; done when robustness.csv holds its rows."""
    return Step(kind, run_dir, label, lambda: _attacked(run_dir, config, n_examples),
                lambda: _attack(run_dir, config, device, n_examples, progress))


def _attack_key(config) -> set[tuple]:
    return {(attack, config.settings(attack, eps.value), config.norm, f"{eps.value:.8g}")
            for attack in config.attacks for eps in config.eps}


def _attacked(run_dir: Path, config, n_examples: int) -> bool:
    """Whether robustness.csv holds every row of this attack configuration."""
    path = run_dir / ROBUSTNESS
    if not path.exists():
        return False
    have = set()
    for row in read_rows(path):
        if n_examples and row["n_examples"] != str(_n_examples(run_dir, n_examples)):
            continue
        have.add((row["attack"], row["settings"], row["norm"], f"{float(row['eps_value']):.8g}"))
    return _attack_key(config) <= have


def _n_examples(run_dir: Path, n_examples: int) -> int:
    n_test = runs.read_config(run_dir).get("dataset", {}).get("n_test")
    if not isinstance(n_test, int) or isinstance(n_test, bool) or n_test < 1:
        raise UsageError(f"{run_dir / runs.CONFIG}: dataset.n_test must be a positive "
                         f"integer, got {n_test!r}")
    return min(n_examples, n_test) if n_examples else n_test


def _attack(run_dir: Path, config, device: str, n_examples: int, progress: bool) -> str:
    rows = attack_run(run_dir, config, device=resolve_device(device),
                      n_examples=n_examples or None, progress=progress)
    worst = [r for r in rows if r.attack != "worst-case"]
    return ", ".join(f"{r.attack} {r.eps.text} {r.robust_acc:.1%}" for r in worst[-2:])


def _evaluated(run_dir: Path, settings: dict) -> bool:
    path = run_dir / "generalization.json"
    if not path.exists():
        return False
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return saved.get("study_settings") == settings


def _evaluate(run_dir: Path, settings: dict, device: str) -> str:
    result = evaluate_run(run_dir, device=device, n_examples=settings["n_examples"] or None,
                          q_draws=settings["q_draws"], seed=settings["seed"])
    result["study_settings"] = settings
    runs.write_json(run_dir / "generalization.json", result)
    return f"gap {result['gap']['accuracy']:+.2%}"


def _report(run_dirs: list[Path], out: Path, config: dict) -> str:
    path = write_report(run_dirs, out)
    if config.get("paper") in PAPER:
        _append_paper_table(path, run_dirs, config)
    runs.atomic_write_text(out / "study.toml", to_toml(config))
    return f"wrote {path}"


def _append_paper_table(report: Path, run_dirs: list[Path], config: dict) -> None:
    """Set the study's clean test accuracies beside the paper's numbers."""
    paper = PAPER[config["paper"]]
    measured: dict[str, list[float]] = {}
    for run_dir in run_dirs:
        name = run_dir.name.rsplit("-s", 1)[0]
        key = name.replace("-", "/", 1) if config.get("variants") else name
        rows = runs.read_metrics(run_dir / runs.METRICS)
        measured.setdefault(key, []).append(100 * float(rows[-1]["test_acc"]))
    lines = ["", f"## Beside the paper: {paper['title']}", "",
             "| method | paper | this study (mean ± std over seeds) | difference |",
             "|---|---|---|---|"]
    csv_rows = []
    for key, reference in paper["rows"].items():
        values = measured.get(key)
        if not values:
            lines.append(f"| {key} | {reference:.2f} | not run | - |")
            continue
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) \
            if len(values) > 1 else float("nan")
        lines.append(f"| {key} | {reference:.2f} | {mean:.2f} ± {std:.2f} ({len(values)}) | "
                     f"{mean - reference:+.2f} |")
        csv_rows.append({"method": key, "paper": reference, "measured_mean": f"{mean:.4f}",
                         "measured_std": f"{std:.4f}", "n": len(values)})
    lines += ["", "The paper's recipes are not published beside its code; differences of a "
              "point or two are expected from the recipe alone.", ""]
    runs.write_csv(report.parent / "paper_comparison.csv", csv_rows,
                   ["method", "paper", "measured_mean", "measured_std", "n"])
    runs.atomic_write_text(report, report.read_text(encoding="utf-8") + "\n".join(lines))


# ------------------------------------------------------------------------------ running


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def run_study(config: dict[str, Any], *, dry_run: bool = False, progress: bool = True,
              echo: Callable[[str], None] = print) -> list[Step]:
    """Run (or, with ``dry_run``, list) every step not yet done; returns the steps."""
    steps = plan(config, progress=progress)
    pending = [step for step in steps if not step.done()]
    if dry_run:
        for number, step in enumerate(steps, 1):
            state = "to do" if step in pending else "done"
            echo(f"[{number:>3}/{len(steps)}] {state:<5} {step.kind:<10} {step.label}")
        echo(f"robustmix study: {len(pending)} of {len(steps)} steps to do in {config['out']}")
        return steps
    started = time.perf_counter()
    spent: dict[str, list[float]] = {}
    for number, step in enumerate(pending, 1):
        elapsed = time.perf_counter() - started
        echo(f"[{number}/{len(pending)}] {step.kind} {step.label} "
             f"(elapsed {_clock(elapsed)}{_eta(spent, pending[number - 1:])})")
        step_start = time.perf_counter()
        summary = step.action()
        took = time.perf_counter() - step_start
        spent.setdefault(step.kind, []).append(took)
        echo(f"    {summary} ({took:.1f} s)")
    echo(f"robustmix study: {config['out']} done in {_clock(time.perf_counter() - started)}; "
         f"report: {Path(config['out']) / 'report.md'}")
    return steps


def _eta(spent: dict[str, list[float]], remaining: list[Step]) -> str:
    """Estimated time left: the mean time of each kind of step so far × steps remaining."""
    if not spent:
        return ""
    overall = sum(sum(v) for v in spent.values()) / sum(len(v) for v in spent.values())
    left = sum(sum(spent[s.kind]) / len(spent[s.kind]) if s.kind in spent else overall
               for s in remaining)
    return f", about {_clock(left)} left"


def print_config(config: dict[str, Any]) -> None:
    sys.stdout.write(to_toml(config))
