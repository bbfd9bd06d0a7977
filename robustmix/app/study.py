"""`robustmix study`: train every MSDA over seeds, attack, evaluate, report — restartably.

A study is a list of steps (train, attack, evaluate for every variant × method × seed,
then the report). Each step reads and writes plain files in its run directory and counts
as done when its files say so, so rerunning the same command after a crash or Ctrl-C
skips what is finished, resumes the training run that was cut off (from its last
checkpoint), and redoes no finished attack or evaluation.

What a study is, typed and checked, is :class:`~robustmix.app.study_config.StudyConfig`;
its presets are in :mod:`robustmix.app.presets` (``robustmix study --preset NAME
--print-config`` prints one as TOML to start a custom study from).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from robustmix.attacks import DiagnosticSettings, Eps, diagnostics, transfer_run
from robustmix.attacks.runner import attack_run
from robustmix.attacks.table import read_rows
from robustmix.attacks.worst_case import WORST
from robustmix.evaluations import confirmation, evaluate_corruptions, evaluate_run, write_report
from robustmix.evaluations.report_paper import PaperTable
from robustmix.app.presets import PAPER, PRESETS  # noqa: F401 (the study's presets)
from robustmix.app.protocol import STUDY_FILE, declare  # noqa: F401 (the declaration)
from robustmix.app.study_config import StudyConfig, load_config, to_toml  # noqa: F401
from robustmix.app import study_plan
from robustmix.core import methods, runs, threads
from robustmix.core.config import TrainConfig
from robustmix.core.devices import resolve_device
from robustmix.core.errors import UsageError
from robustmix.data import check_available
from robustmix.training.trainer import train

# ------------------------------------------------------------------------------ steps


@dataclass
class Step:
    kind: str     # train | attack | autoattack | evaluate | corruptions | transfer | report
    run_dir: Path
    label: str
    done: Callable[[], bool]
    action: Callable[[], str]
    final: bool = False   # needs every run's earlier steps: run after them, by the parent
    settings: Any = None  # train: its TrainConfig; attack: (AttackConfig, n, TrainConfig)


def _run_name(variant: str, method: str, seed: int) -> str:
    return f"{variant + '-' if variant else ''}{method}-s{seed}"


def plan(config: StudyConfig, *, progress: bool = True) -> list[Step]:
    """Every step of the study, in order, with its 'done' test and its action."""
    out = Path(config.out)
    attack, device = config.attack, config.device
    evaluate = dataclasses.asdict(config.evaluate)
    corruptions = evaluate.pop("corruptions")   # its own step; not in generalization.json
    strong, auto = attack.config(), attack.auto()
    checks = config.diagnostics if attack.diagnostics else None
    steps: list[Step] = []
    run_dirs = []
    for variant in config.variant_names():
        for method in config.methods:
            for seed in config.seeds_of(method):
                label = _run_name(variant, methods.split_spec(method)[0], seed)
                run_dir = out / "runs" / label
                run_dirs.append(run_dir)
                train = config.run_config(variant, method, seed)
                steps.append(Step("train", run_dir, label,
                                  lambda d=run_dir, t=train: _trained(d, t),
                                  lambda d=run_dir, t=train: _train(d, t, progress, config),
                                  settings=train))
                steps.append(_attack_step("attack", run_dir, label, strong, device,
                                          attack.n_examples, progress, checks, train))
                if auto is not None and attack.autoattacks(seed):
                    steps.append(_attack_step("autoattack", run_dir, label, auto, device,
                                              attack.autoattack_examples, progress, checks,
                                              train))
                steps.append(Step("evaluate", run_dir, label,
                                  lambda d=run_dir: _evaluated(d, evaluate),
                                  lambda d=run_dir: _evaluate(d, evaluate, device)))
                if corruptions:
                    steps.append(Step("corruptions", run_dir, label,
                                      lambda d=run_dir: _corrupted(d, evaluate),
                                      lambda d=run_dir: _corrupt(d, evaluate, device)))
    if checks is not None and len(run_dirs) > 1:
        steps += _transfer_steps(run_dirs, strong, device, attack.n_examples, checks)
    steps.append(Step("report", out, "report", lambda: False,
                      lambda: _report(run_dirs, out, config), final=True))
    return steps


def _transfer_steps(run_dirs: list[Path], config, device: str, n_examples: int,
                    checks: DiagnosticSettings) -> list[Step]:
    """Each run checked by transfer from a run of another recipe (:func:`transfer_sources`):
    after every run is attacked."""
    steps = []
    sources = transfer_sources([(d, *_recipe(d.name, run_dirs)) for d in run_dirs])
    for run_dir in run_dirs:
        source = sources[run_dir]
        steps.append(Step(
            "transfer", run_dir, run_dir.name,
            lambda d=run_dir, s=source: _transferred(d, s, config, n_examples),
            lambda d=run_dir, s=source: _transfer(d, s, config, device, n_examples, checks),
            final=True))
    return steps


def _recipe(name: str, run_dirs: list[Path]) -> tuple[bool, str, str]:
    """(vanilla?, variant, seed) of a study run's name ``[VARIANT-]METHOD-sSEED``; an MSDA
    run's variant is the longest of the vanilla runs' variants its name starts with."""
    prefix, _, seed = name.rpartition("-s")
    if prefix == "vanilla" or prefix.endswith("-vanilla"):
        return True, prefix.removesuffix("vanilla").removesuffix("-"), seed
    variants = {_recipe(d.name, [])[1] for d in run_dirs
                if d.name.rpartition("-s")[0].endswith("vanilla")}
    matching = [v for v in variants if v and prefix.startswith(v + "-")]
    return False, max(matching, key=len, default=""), seed


def transfer_sources(runs_: list[tuple]) -> dict:
    """Per run, the run whose model the transfer check attacks it from: one trained with a
    different recipe. ``runs_``: (key, vanilla?, variant, seed) in the study's order. An
    MSDA run's source is the vanilla run of its variant and seed, else its variant's first
    vanilla run; a vanilla run's the first MSDA run of its variant and seed, else its
    variant's first MSDA run; failing those, any run of the other recipe, and where there
    is none (every run vanilla, or none), the next run."""
    found = {}
    for index, (key, vanilla, variant, seed) in enumerate(runs_):
        other = [r for r in runs_ if r[1] != vanilla]
        ranked = [r for r in other if r[2] == variant and r[3] == seed] + \
            [r for r in other if r[2] == variant] + other
        found[key] = ranked[0][0] if ranked else runs_[(index + 1) % len(runs_)][0]
    return found


def _transferred(run_dir: Path, source: Path, config, n_examples: int) -> bool:
    """Whether diagnostics.csv holds this source's transfer check at every ε of the grid."""
    path = runs.RunDir(run_dir).diagnostics_path
    try:
        rows = diagnostics.read(path)
    except UsageError:  # damaged: checked again, rewritten whole
        return False
    if not rows:
        return False
    n = str(_n_examples(run_dir, n_examples))
    have = {Eps(r["eps"]) for r in rows if r["check"] == "transfer" and r["norm"] == config.norm
            and r["n_examples"] == n and f" on {source.name} " in r["detail"]}
    return set(config.eps) <= have


def _transfer(run_dir: Path, source: Path, config, device: str, n_examples: int,
              checks: DiagnosticSettings) -> str:
    found = transfer_run(run_dir, source, config, device=resolve_device(device),
                         n_examples=n_examples or None, settings=checks)
    failed = [c.eps.text for c in found if not c.passed]
    return f"from {source.name}: " + (f"flagged at {', '.join(failed)}" if failed else "passed")


def _trained(run_dir: Path, config) -> bool:
    """Whether the run is complete; a run directory with other settings is refused."""
    run = runs.RunDir(run_dir)
    if run.config_path.exists():
        saved = TrainConfig.from_dict(run.read_config()["train"], source=str(run.config_path))
        if saved != config:
            raise UsageError(f"{run_dir} was trained with other settings than this study's; "
                             "use another --out, or delete that run directory")
    return run.is_complete()


def _train(run_dir: Path, config, progress: bool, study: StudyConfig) -> str:
    declare(study)
    _trained(run_dir, config)
    result = train(config, run_dir, resume=runs.RunDir(run_dir).config_path.exists(), progress=progress)
    resumed = f", resumed after epoch {result.resumed_from}" if result.resumed_from else ""
    return f"test accuracy {result.test_acc:.2%}{resumed}"


def _attack_step(kind: str, run_dir: Path, label: str, config, device: str, n_examples: int,
                 progress: bool, checks: DiagnosticSettings | None, train: TrainConfig
                 ) -> Step:
    """A step that runs one attack configuration; done when robustness.csv holds its rows
    (and, with ``checks``, their diagnostics)."""
    return Step(kind, run_dir, label,
                lambda: _attacked(run_dir, config, n_examples, checks is not None),
                lambda: _attack(run_dir, config, device, n_examples, progress, checks),
                settings=(config, n_examples, train))


def _attack_key(config) -> set[tuple]:
    return {(attack, config.settings(attack, eps), config.norm, eps)
            for attack in config.attacks for eps in config.eps}


def _attacked(run_dir: Path, config, n_examples: int, diagnosed: bool) -> bool:
    """Whether robustness.csv holds every row of this attack configuration, diagnosed
    where ``diagnosed``, and no Square escalation was cut off."""
    path = runs.RunDir(run_dir).robustness_path
    if not path.exists() or runs.RunDir(run_dir).square_pending_path.exists():
        return False
    n = str(_n_examples(run_dir, n_examples))
    have = {(row["attack"], row["settings"], row["norm"], Eps(row["eps"]))
            for row in read_rows(path) if row["n_examples"] == n
            and (row["diagnostics"] or not diagnosed)}
    return _attack_key(config) <= have


def _n_examples(run_dir: Path, n_examples: int) -> int:
    n_test = runs.read_config(run_dir).get("dataset", {}).get("n_test")
    if not isinstance(n_test, int) or isinstance(n_test, bool) or n_test < 1:
        raise UsageError(f"{run_dir / runs.CONFIG}: dataset.n_test must be a positive "
                         f"integer, got {n_test!r}")
    return min(n_examples, n_test) if n_examples else n_test


def _attack(run_dir: Path, config, device: str, n_examples: int, progress: bool,
            checks: DiagnosticSettings | None) -> str:
    rows = attack_run(run_dir, config, device=resolve_device(device),
                      n_examples=n_examples or None, progress=progress, diagnostics=checks)
    worst = [r for r in rows if r.attack == WORST and r.eps in config.eps]
    flagged = [r.eps.text for r in worst if r.diagnostics.startswith("failed")]
    return (", ".join(f"worst {r.eps.text} {r.robust_acc:.1%}" for r in worst[-2:])
            + (f"; diagnostics failed at {', '.join(flagged)}" if flagged else ""))


def _evaluated(run_dir: Path, settings: dict) -> bool:
    try:
        saved = runs.RunDir(run_dir).read_generalization()
    except UsageError:   # a damaged file: evaluate again, which rewrites it whole
        return False
    return isinstance(saved, dict) and saved.get("study_settings") == settings


def _evaluate(run_dir: Path, settings: dict, device: str) -> str:
    result = evaluate_run(run_dir, device=device, n_examples=settings["n_examples"] or None,
                          q_draws=settings["q_draws"], seed=settings["seed"])
    result["study_settings"] = settings
    runs.write_json(runs.RunDir(run_dir).generalization_path, result)
    return f"gap {result['gap']['accuracy']:+.2%}"


def _corrupted(run_dir: Path, settings: dict) -> bool:
    """Whether corruptions.csv holds this study's cells (its examples and seed)."""
    path = runs.RunDir(run_dir).corruptions_path
    if not path.is_file():
        return False
    try:
        rows = runs.read_csv(path)
    except (UsageError, OSError, ValueError):  # damaged: measured again, rewritten whole
        return False
    want = (str(_n_examples(run_dir, settings["n_examples"])), str(settings["seed"]))
    return bool(rows) and all((r.get("n_examples"), r.get("seed")) == want for r in rows)


def _corrupt(run_dir: Path, settings: dict, device: str) -> str:
    result = evaluate_corruptions(run_dir, device=device, seed=settings["seed"],
                                  n_examples=settings["n_examples"] or None)
    note = f" ({result['note']})" if result["note"] else ""
    return f"{result['source']}: mean accuracy {result['mean_accuracy']:.1f}%{note}"


def _report(run_dirs: list[Path], out: Path, config: StudyConfig) -> str:
    declare(config)
    # the source names the study's own file, not its path: a study moved or rerun in
    # another folder writes the same tables
    paper = PaperTable(**PAPER[config.paper], variants=tuple(config.variant_names())) \
        if config.paper in PAPER else None
    path = write_report(run_dirs, out, declaration=config.declaration(
        f"the study's {STUDY_FILE}, written before its first run trained"), paper=paper)
    if config.phase == "confirmation":   # OUT/confirmation: set beside the declared study
        written = confirmation.write(out.parent, out, config.verdicts.replication)
        return f"wrote {path} and {written}"
    return f"wrote {path}"


# ------------------------------------------------------------------------------ running


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def run_study(config: StudyConfig, *, dry_run: bool = False, progress: bool = True,
              echo: Callable[[str], None] = print) -> list[Step]:
    """Run (or, with ``dry_run``, list) every step not yet done; returns the steps."""
    steps = plan(config, progress=progress)
    pending = [step for step in steps if not step.done()]
    missing = missing_data(config) if any(s.kind == "train" for s in pending) else []
    if dry_run:
        for number, step in enumerate(steps, 1):
            state = "to do" if step in pending else "done"
            echo(f"[{number:>3}/{len(steps)}] {state:<5} {step.kind:<10} {step.label}")
        for problem in missing:
            echo(f"robustmix study: data missing: {problem}")
        echo(f"robustmix study: {len(pending)} of {len(steps)} steps to do in {config.out}"
             + (f"; it cannot start: {len(missing)} data problem"
                f"{'s' if len(missing) > 1 else ''} above" if missing else "; data ready"))
        return steps
    if missing:
        more = f" (and {len(missing) - 1} more: see --dry-run)" if len(missing) > 1 else ""
        raise UsageError(f"the study's data is not ready: {missing[0]}{more}")
    started = time.perf_counter()
    device, loaded = resolve_device(config.device), {}
    memory = study_plan.plan_memory(pending, device, loaded)   # one that cannot fit: refused
    planned = study_plan.plan_times(pending, device, loaded)
    loaded.clear()
    echo(study_plan.plan_line(pending, planned))
    if memory:
        echo(study_plan.memory_line(memory))
    took = _run_steps(pending, planned, Path(config.out), echo)
    echo(f"robustmix study: {config.out} done in {_clock(time.perf_counter() - started)}; "
         f"report: {Path(config.out) / 'report.md'}")
    if (line := study_plan.took_line(pending, planned,
                                     {i: t for i, t in took.items() if i in planned})):
        echo(line)
    return steps


def _run_steps(pending: list[Step], planned: dict[int, float], out: Path,
               echo: Callable[[str], None]) -> dict[int, float]:
    """Run the steps in turn, the thread count checked before each (a neighbour may have
    come or gone) and recorded with its time in OUT/steps.csv; the seconds each took."""
    started, took = time.perf_counter(), {}
    spent: dict[str, list[float]] = {}
    for number, step in enumerate(pending, 1):
        threads.mark()
        threads.recheck(f"{step.kind} {step.label}")
        elapsed = time.perf_counter() - started
        echo(f"[{number}/{len(pending)}] {step.kind} {step.label} "
             f"(elapsed {_clock(elapsed)}{_eta(spent, pending[number - 1:])})")
        step_start = time.perf_counter()
        summary = step.action()
        took[number - 1] = time.perf_counter() - step_start
        spent.setdefault(step.kind, []).append(took[number - 1])
        _record(out, step, took[number - 1], planned.get(number - 1))
        echo(f"    {summary} ({took[number - 1]:.1f} s)")
    return took


STEPS_FILE = "steps.csv"
STEP_FIELDS = ["kind", "label", "threads", "seconds", "planned_seconds"]


def _record(out: Path, step: Step, seconds: float, planned: float | None) -> None:
    """Add the step to OUT/steps.csv: the torch thread counts it ran with (in order, where
    a neighbour changed them), its seconds and its plan's."""
    path = out / STEPS_FILE
    rows = runs.read_csv(path) if path.is_file() else []
    rows.append({"kind": step.kind, "label": step.label,
                 "threads": " ".join(str(n) for n in threads.used()),
                 "seconds": f"{seconds:.1f}",
                 "planned_seconds": "" if planned is None else f"{planned:.1f}"})
    runs.write_csv(path, rows, STEP_FIELDS)


def finish(config: StudyConfig) -> str:
    """The final steps not yet done (the transfer checks, then the report), once every
    run's own steps are done (by worker processes or jobs); the report's summary."""
    summary = ""
    for step in plan(config, progress=False):
        if step.final and not step.done():
            summary = step.action()
    return summary


def missing_data(config: StudyConfig) -> list[str]:
    """One line per data set of the study's variants that cannot be trained on now
    (:func:`robustmix.data.check_available`); a variant that downloads is not checked."""
    problems, seen = [], set()
    for variant in config.variant_names():
        train = config.run_config(variant, config.methods[0], config.seeds_of(config.methods[0])[0])
        key = (train.dataset, train.data_dir, train.skip_bad_images)
        if train.download or key in seen:
            continue
        seen.add(key)
        problem = check_available(train.dataset, data_dir=train.data_dir,
                                  skip_bad_images=train.skip_bad_images)
        if problem is not None:
            problems.append(f"{variant}: {problem}" if variant else problem)
    return problems


def _eta(spent: dict[str, list[float]], remaining: list[Step]) -> str:
    """Estimated time left: the mean time of each kind of step so far × steps remaining."""
    if not spent:
        return ""
    overall = sum(sum(v) for v in spent.values()) / sum(len(v) for v in spent.values())
    left = sum(sum(spent[s.kind]) / len(spent[s.kind]) if s.kind in spent else overall
               for s in remaining)
    return f", about {_clock(left)} left"


def print_config(config: StudyConfig) -> None:
    sys.stdout.write(to_toml(config))
