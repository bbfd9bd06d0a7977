"""What each `robustmix` command does, once :mod:`robustmix.app.cli` has parsed it.

The top of the layers: with the study, the only code that sees the training loop, the
attacks and the evaluations together. The evaluations are imported by the commands that
use them, so that ``robustmix train`` does not wait for pandas and scipy.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import Sequence

from robustmix.attacks import AttackConfig, DiagnosticSettings, parse_attacks, transfer_run
from robustmix.attacks import memory as attack_memory
from robustmix.attacks.plan import clock, estimate
from robustmix.attacks.runner import attack_run, format_table, load_subset
from robustmix.app import listing
from robustmix.app.masks import write_kernel
from robustmix.core import distributed, methods, runs
from robustmix.core.config import MixConfig, TrainConfig
from robustmix.core.devices import resolve_device
from robustmix.core.errors import UsageError
from robustmix.mixing.registry import load_method, resolved
from robustmix.models import check_arch
from robustmix.training.trainer import TrainResult, prepare_run_dir, train


def _distributed(run):
    """Run a command handler inside torchrun's process group when torchrun started us."""
    def handler(args: argparse.Namespace) -> int:
        if not distributed.launched():
            return run(args)
        distributed.start()
        code = run(args)
        distributed.stop()
        return code
    return handler


def _one_process(run):
    """A command that runs in one process: refused under torchrun."""
    def handler(args: argparse.Namespace) -> int:
        if distributed.launched():
            raise UsageError(f"robustmix {args.command} runs in one process; under torchrun "
                             "run train or attack")
        return run(args)
    return handler


def _say(text: str) -> None:
    """Print on rank 0 only (every process prints alone)."""
    if distributed.current().is_main:
        print(text)


def _run_train(args: argparse.Namespace) -> int:
    result = _resume_train(args) if args.resume is not None else _start_train(args)
    if result is None:  # the run was already complete
        return 0
    resumed = f", resumed after epoch {result.resumed_from}" if result.resumed_from else ""
    _say(f"robustmix train: {result.run_dir} done: test accuracy {result.test_acc:.2%}, "
          f"train accuracy (mixed batches) {result.train_acc:.2%}, {result.epochs} epochs in "
          f"{result.seconds:.1f} s{resumed}")
    return 0


def _resume_train(args: argparse.Namespace) -> TrainResult | None:
    """``train --resume RUN_DIR``: the run's own settings; None when it is complete."""
    given = _explicit_options(args, ignore={"resume", "quiet", "threads"})
    if given:
        raise UsageError(f"--resume takes every setting from {args.resume}/config.json; "
                         f"drop {', '.join(given)}")
    run_dir = Path(args.resume)

    def read_run():
        if not (run_dir / runs.CONFIG).is_file():
            raise UsageError(f"{run_dir} holds no run to resume ({runs.CONFIG} is missing)")
        return (TrainConfig.from_dict(runs.read_config(run_dir)["train"],
                                      source=str(run_dir / runs.CONFIG)),
                runs.is_complete(run_dir))

    config, complete = distributed.on_main(read_run)
    if complete:
        _say(f"robustmix train: {run_dir} is already complete; nothing to do")
        return None
    return train(config, run_dir, resume=True, progress=not args.quiet)


def _start_train(args: argparse.Namespace) -> TrainResult | None:
    """``train`` with flags: a new run, or the same one continued; None when it is complete."""
    config = _train_config(args)
    out = Path(args.out or config.default_out())
    resume, complete = distributed.on_main(lambda: (
        (found := prepare_run_dir(out, overwrite=args.overwrite, config=config)),
        found and runs.is_complete(out)))
    if complete:
        _say(f"robustmix train: {out} already holds this run, complete; nothing to do")
        return None
    if resume:
        _say(f"robustmix train: {out} holds this run, unfinished; continuing it")
    return train(config, out, resume=resume, progress=not args.quiet)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig that train's flags spell, validated, with the canonical arch name."""
    # one flag per field, of the same name (tests/test_cli.py holds the parser to this);
    # --data-dir's None (the shared option's default) is the field's default, ./data
    config = TrainConfig(mix=_mix_config(args), **{
        f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
        if f.name != "mix" and not (f.name == "data_dir" and args.data_dir is None)})
    config = dataclasses.replace(config, arch=check_arch(config.arch))
    config.validate()
    return config


def _mix_config(args: argparse.Namespace, *, strict: bool = True) -> MixConfig:
    """The MixConfig of ``--mix`` (a name or a factory's path), ``--mix-factory``, the
    built-ins' option flags and ``--mix-option``: the method loaded, its options complete.

    A built-in's option flag for another method is refused (``strict``), or left out.
    """
    name, factory = methods.split_spec(args.mix)
    if getattr(args, "factory", None) is not None:
        if factory is not None:
            raise UsageError("give --mix NAME --mix-factory MODULE:FACTORY or --mix "
                             "MODULE:FACTORY, not both")
        factory = args.factory
    MixConfig(mix=name, factory=factory, alpha=args.alpha).validate()   # --mix, --alpha
    method = load_method(name, factory)          # a plugin's options are known from here
    options = {}
    for key, (owner, _) in methods.BUILTIN_OPTIONS.items():   # the generated flags
        value = getattr(args, key, None)
        if value is not None and key in method.options:
            options[key] = value
        elif value is not None and strict:
            raise UsageError(f"--{key.replace('_', '-')} is an option of {owner}, "
                             f"not of {name}")
    for key, text in args.options.items():
        if key in options:
            raise UsageError(f"--mix-option {key} repeats --{key.replace('_', '-')}")
        options[key] = _option_value(key, text, method.options.get(key, ""))
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(MixConfig)
              if f.name not in ("mix", "options", "factory")}
    return resolved(MixConfig(mix=name, factory=factory, options=options, **fields))


def _option_value(key: str, text: str, default):
    """``--mix-option KEY=TEXT`` as the option's type (its default's); unknown: the text."""
    try:
        if isinstance(default, bool):
            return {"true": True, "false": False, "1": True, "0": False}[text.lower()]
        if isinstance(default, (int, float)):
            return type(default)(text)
    except (KeyError, ValueError):
        kind = {bool: "true or false", int: "an integer"}.get(type(default), "a number")
        raise UsageError(f"--mix-option {key} must be {kind}, got {text!r}") from None
    return text


def _explicit_options(args: argparse.Namespace, ignore: set[str]) -> list[str]:
    """Options whose value differs from the parser default (i.e. given on the command line)."""
    parser = args.parser
    given = []
    for action in parser._actions:
        dest = action.dest
        if dest in ignore or dest in ("help", "handler", "parser") or not action.option_strings:
            continue
        if getattr(args, dest, None) != action.default:
            given.append(action.option_strings[0])
    return given


GALLERY = "mask_gallery.png"   # the name the report gives it too


def _gallery_path(out: str) -> Path:
    """``masks --out FOLDER``: FOLDER/mask_gallery.png; the former ``--out FILE.png`` is
    taken as it was, for one release, and says the new form."""
    if out.lower().endswith(".png"):
        from robustmix.app.cli import say_renamed

        say_renamed("masks --out FILE.png", f"--out FOLDER (writes FOLDER/{GALLERY})")
        return Path(out)
    Path(out).mkdir(parents=True, exist_ok=True)
    return Path(out) / GALLERY


def _given_options(args: argparse.Namespace) -> dict[str, dict]:
    """The MSDA options given on the command line, by MSDA."""
    given: dict[str, dict] = {}
    for key, (method, _) in methods.BUILTIN_OPTIONS.items():
        if getattr(args, key, None) is not None:
            given.setdefault(method, {})[key] = getattr(args, key)
    return given


def _run_masks(args: argparse.Namespace) -> int:
    if args.kernel is None and args.out is None:
        raise UsageError("nothing to do: give --kernel FILE.csv and/or --out FOLDER")
    # for --kernel: --mix's own options; the gallery draws each MSDA with its own
    mix = _mix_config(argparse.Namespace(**{**vars(args), "lam_per": "batch",
                                            "pairing": "flip", "mix_prob": 1.0}),
                      strict=False)
    if not 0 <= args.lam <= 1:
        raise UsageError(f"--lam must lie in [0, 1], got {args.lam}")
    if args.size < 2:
        raise UsageError(f"--size must be >= 2, got {args.size}")
    if args.kernel is not None:
        write_kernel(args.kernel, mix, args.size, draws=args.draws, seed=args.seed)
        print(f"robustmix masks: wrote c(p) of {mix.mix} for offsets 0..{args.size - 1} "
              f"({args.draws} masks) to {args.kernel}")
    if args.out is not None:
        # here: the evaluations package loads pandas and scipy (about 1.5 s) on import
        from robustmix.evaluations.plots import draw_gallery

        path = _gallery_path(args.out)
        draw_gallery(path, args.size, lam=args.lam, options=_given_options(args),
                     seed=args.seed)
        print(f"robustmix masks: wrote the gallery (λ = {args.lam}) to {path}")
    return 0


def attack_plan(args: argparse.Namespace):
    """The settings that ``robustmix attack``'s flags describe, checked: a study's
    [attack] section (:class:`~robustmix.app.study_config.AttackPlan`), each flag not given
    at the section's default."""
    # here: study_config reads the evaluations' declaration (pandas, scipy)
    from robustmix.app.study_config import AttackPlan

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(AttackPlan)
             if f.name not in ("attacks", "options") and getattr(args, f.name, None) is not None}
    if args.attacks is not None:
        specs = parse_attacks(args.attacks)
        given["attacks"] = tuple(name for name, _ in specs)
        given["options"] = {name: settings for name, settings in specs if settings}
    plan = AttackPlan(**given)
    plan.validate()
    return plan


def attack_config(args: argparse.Namespace) -> AttackConfig:
    """The AttackConfig that ``robustmix attack``'s flags describe, checked."""
    return attack_plan(args).config()


def _plan(run_dirs: list[str], config: AttackConfig, args: argparse.Namespace,
          device, n_examples: int | None) -> dict[str, float]:
    """Before any work: what each run will meet, and a bound on its time (printed)."""
    bounds = {}
    for run in run_dirs:
        subset = load_subset(run, device, n_examples, args.data_dir,
                             args.skip_bad_images, echo=None)
        # refused here, before the timed pass at the attack's batch size would run out
        attack_memory.check(subset.model, subset.x, config, device)
        found = estimate(subset.model, subset.x, subset.y, config, subset.n_classes, device)
        bounds[run] = found.seconds
        _say("robustmix attack: " + found.line(run, config, subset.indices.numel()))
    return bounds


def _run_attack(args: argparse.Namespace) -> int:
    plan = attack_plan(args)
    config, n_examples = plan.config(), plan.n_examples or None   # 0: the whole test set
    place = distributed.current()
    device = distributed.device_for(resolve_device(args.device), place)
    run_dirs = _run_dirs(args, "attack")
    checks = DiagnosticSettings() if plan.diagnostics else None
    bounds = _plan(run_dirs, config, args, device, n_examples)
    for run in run_dirs:
        started = time.perf_counter()
        rows = attack_run(run, config, device=device, n_examples=n_examples,
                          data_dir=args.data_dir, progress=not args.quiet,
                          skip_bad_images=args.skip_bad_images, diagnostics=checks)
        _say(format_table(run, rows))
        sweep = sum(row.seconds for row in rows)
        _say(f"robustmix attack: wrote {run}/robustness.csv: the attacks took {clock(sweep)} "
             f"(estimated: at most {clock(bounds[run])}), everything "
             f"{clock(time.perf_counter() - started)}")
    if checks is not None and len(run_dirs) > 1 and not place.active:
        sources = _transfer_sources(run_dirs)
        for run in run_dirs:
            source = sources[run]
            found = transfer_run(run, source, config, device=device,
                                 n_examples=n_examples, data_dir=args.data_dir,
                                 settings=checks)
            failed = [c for c in found if not c.passed]
            _say(f"robustmix attack: transfer from {source} to {run}: "
                 + (f"{len(failed)} ε flagged" if failed else "passed"))
    return 0


def _transfer_sources(run_dirs: list[str]) -> dict[str, str]:
    """Per run, a run of another recipe to transfer from (vanilla for an MSDA, an MSDA for
    vanilla; the same seed first): study.transfer_sources on the runs' own configs."""
    from robustmix.app.study import transfer_sources

    described = []
    for run in run_dirs:
        train = runs.RunDir(run).read_config()["train"]   # checked there: present, a dict
        name = str(train.get("mix", {}).get("mix", "vanilla"))
        described.append((run, name == "vanilla", "", str(train.get("seed", ""))))
    return transfer_sources(described)


def _run_evaluate(args: argparse.Namespace) -> int:
    # here: pandas and scipy (about 1.5 s) load only for the commands that need them
    from robustmix.evaluations import evaluate_run

    run_dirs = _run_dirs(args, "evaluate")
    declare_methods(run_dirs)   # so every model's Q is measured on every method's masks
    for run in run_dirs:
        if args.corruptions:  # first: a damaged -C file stops before the longer measurements
            _evaluate_corruptions(run, args)
        result = evaluate_run(run, device=args.device, batch_size=args.batch_size,
                              n_examples=args.n_examples, q_draws=args.q_draws, seed=args.seed,
                              skip_bad_images=args.skip_bad_images, data_dir=args.data_dir)
        print(f"robustmix evaluate: {run}: train accuracy {result['train']['accuracy']:.2%}, "
              f"test {result['test']['accuracy']:.2%}, gap {result['gap']['accuracy']:+.2%}; "
              f"wrote {runs.RunDir(run).generalization_path}")
    return 0


def declare_methods(run_dirs: Sequence[str | Path]) -> None:
    """Register the methods that runs name by their factory's path, before any is used."""
    for run in run_dirs:
        mix = runs.read_config(run)["train"].get("mix", {})
        if isinstance(mix, dict) and isinstance(mix.get("factory"), str):
            methods.get(mix.get("mix"), mix["factory"])


def _evaluate_corruptions(run: str, args: argparse.Namespace) -> None:
    from robustmix.evaluations.corruption_eval import evaluate_corruptions

    result = evaluate_corruptions(run, device=args.device, batch_size=args.batch_size,
                                  n_examples=args.corruption_examples, seed=args.seed,
                                  data_dir=args.data_dir)
    if result["note"]:
        print(f"robustmix evaluate: {run}: {result['note']}")
    mce = result["mce_unnormalized"]
    mce = "" if mce is None else f", mCE (unnormalized) {mce:.1f}"
    print(f"robustmix evaluate: {run}: {result['source']}: mean corrupted accuracy "
          f"{result['mean_accuracy']:.1f}%{mce}; wrote {runs.RunDir(run).corruptions_path}")


def _run_report(args: argparse.Namespace) -> int:
    # here: pandas and scipy (about 1.5 s) load only for the commands that need them
    from robustmix.evaluations import write_report

    run_dirs = _run_dirs(args, "report")
    declaration = _study_declaration(run_dirs)
    if declaration is not None:
        print(f"robustmix report: primary comparisons as declared in {declaration.source}")
    path = write_report(run_dirs, args.out, declaration=declaration)
    print(f"robustmix report: wrote {path}")
    plot = next((path.parent / name for name in MAIN_PLOTS if (path.parent / name).exists()),
                None)
    if plot is not None:
        print(f"robustmix report: main plot {plot}")
    if args.open:
        print(f"robustmix report: {_open(path)}")
    return 0


def _study_declaration(run_dirs: list[str]):
    """The [verdicts] a study declared before its data (OUT/study.toml) when every run
    directory is one of that study's (OUT/runs/NAME); else None."""
    from robustmix.app.study import STUDY_FILE, load_config

    parents = {Path(d).resolve().parent for d in run_dirs}
    if len(parents) != 1 or next(iter(parents)).name != "runs":
        return None
    path = next(iter(parents)).parent / STUDY_FILE
    if not path.is_file():
        return None
    return load_config(None, str(path)).declaration(str(path))


MAIN_PLOTS = ("robust_given_clean_linf.png", "robust_accuracy_linf.png", "generalization.png")


def _open(path: Path) -> str:
    """Open ``path`` in the system's viewer; say where it is when there is none."""
    import shutil
    import subprocess
    import sys

    opener = {"darwin": "open", "win32": "start"}.get(sys.platform, "xdg-open")
    if sys.platform == "win32":
        os.startfile(path)  # type: ignore[attr-defined]  # noqa: S606 - the user's viewer
        return f"opened {path}"
    if shutil.which(opener) is None:
        return f"no viewer found ({opener} is not installed); open {path.resolve()} yourself"
    subprocess.Popen([opener, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return f"opened {path} with {opener}"


def _run_dirs(args: argparse.Namespace, command: str) -> list[str]:
    """The runs named (a folder of runs: its finished runs), or every finished run under
    ./runs/; which a folder gave is said in one line. Report reads an unfinished run too."""
    named = [*args.runs, *(getattr(args, "old_runs", None) or ())]   # old: --run/--runs
    found, lines = listing.chosen_runs(named, command, check=command != "report")
    for line in lines:
        _say(line)
    return found


def _run_runs(args: argparse.Namespace) -> int:
    print(listing.table(listing.every_run(args.runs)))
    return 0


def _run_study(args: argparse.Namespace) -> int:
    # here: the study imports the evaluations (pandas, scipy: about 1.5 s)
    from robustmix.app import study

    if args.preset is not None and args.config is not None:
        raise UsageError("give --preset or --config, not both (a TOML config may set "
                         "preset = NAME to start from one)")
    config = _study_config(args)
    if args.print_config:
        study.print_config(config)
        return 0
    if not args.dry_run:
        from robustmix.app import fan_out   # --jobs, --devices, --executor

        if (code := fan_out.run(config, args)) is not None:
            return code
    study.run_study(config, dry_run=args.dry_run, progress=not args.quiet)
    return 0


def _study_config(args: argparse.Namespace):
    """The study the command line names: a preset or TOML, or (neither given) the study
    declared in OUT/study.toml where there is one; as a pilot or a confirmation."""
    from robustmix.app import protocol, study

    methods = None if args.methods is None else \
        tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.confirm:
        if methods or args.seeds or args.preset or args.config:
            raise UsageError("--confirm reruns the declared study as it is: give only --out "
                             "(and --device, --threads)")
        out = Path(args.out or study.load_config(None, None).out)
        return protocol.confirmation_config(out).with_overrides(device=_study_device(args))
    declared = Path(args.out or study.load_config(args.preset, args.config).out) \
        / protocol.STUDY_FILE
    if args.preset is None and args.config is None and not args.pilot and declared.is_file():
        base = protocol.read_declared(declared)[0]
    else:
        base = study.load_config(args.preset, args.config)
    config = base.with_overrides(methods=methods, out=args.out, device=_study_device(args))
    if args.pilot:
        pilot = args.seeds or config.pilot_seeds
        return protocol.pilot_config(dataclasses.replace(config, pilot_seeds=pilot))
    return config.with_overrides(seeds=args.seeds)


def _study_device(args: argparse.Namespace) -> str | None:
    """--device for a study: auto (the default) keeps the study's own device setting."""
    return None if args.device == "auto" else args.device


def _run_power(args: argparse.Namespace) -> int:
    from robustmix.app import protocol
    from robustmix.evaluations import power

    folder = Path(args.study)
    source = folder / protocol.PILOT if (folder / protocol.PILOT / "runs").is_dir() else folder
    pilot = power.read_pilot(source, strong=not args.no_strong)
    if "vanilla" not in pilot.stats or len(pilot.stats) < 2:
        raise UsageError(f"{source} needs vanilla and an MSDA with the primary statistic "
                         "(try --no-strong for a pilot without APGD)")
    print("\n".join(power.report(pilot, [], studies=0, scale=1.0)[:len(pilot.stats) + 2]))
    plan = power.planning_sd(pilot)
    print(f"planned on every method's sd = {100 * next(iter(plan.stats.values()))[1]:.2f} "
          "points: the pilot's pooled seed sd at its upper 80% confidence limit")
    choice = power.choose(plan, args.budget, args.power, studies=args.studies)
    print("\n".join(power.report(plan, [(choice.n0, choice.n1)], studies=args.studies,
                                 scale=1.0)[len(plan.stats) + 2:]))
    print("\n".join(power.choice_lines(choice)))
    if args.declare:
        if source == folder:
            raise UsageError(f"--declare writes {folder}/study.toml from the pilot in "
                             f"{folder}/{protocol.PILOT}, and there is none there")
        path = protocol.declare_from_pilot(folder, choice)
        print(f"robustmix power: declared {path}; next: robustmix study --out {folder}")
    return 0


def _run_import(args: argparse.Namespace) -> int:
    from robustmix.app.importing import import_run

    out = import_run(args.weights, args.out, arch=args.arch, dataset=args.dataset,
                     data_dir=args.data_dir or TrainConfig.data_dir,
                     image_size=args.image_size, mean=args.mean,
                     std=args.std, mix=args.mix, alpha=args.alpha)
    print(f"robustmix import: wrote {out} ({args.arch} on {args.dataset}); next: "
          f"robustmix attack {out}")
    return 0


HANDLERS = {
    "train": _distributed(_run_train),
    "attack": _distributed(_run_attack),
    "evaluate": _one_process(_run_evaluate),
    "report": _one_process(_run_report),
    "study": _one_process(_run_study),
    "power": _one_process(_run_power),
    "masks": _one_process(_run_masks),
    "runs": _one_process(_run_runs),
    "import": _one_process(_run_import),
}
