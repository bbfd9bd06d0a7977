"""A study's three phases: a pilot, a declaration frozen before the confirmatory runs, and
a confirmation on fresh seeds.

- **pilot** (``robustmix study --pilot``): every method on a few seeds (``pilot_seeds``)
  in ``OUT/pilot``; exploratory only, its report carries no verdict word.
- **declaration** (``robustmix power OUT --declare``, or a preset that declares its
  seeds): ``OUT/study.toml`` holds everything that decides a verdict (the methods and
  seeds, the training recipe, the attack budget and grid, every diagnostic rule and
  threshold, the primaries and margins) and its SHA-256. It is written before the first
  confirmatory run trains; a study whose settings differ from it is refused, and so is a
  file edited afterwards (its hash no longer matches).
- **confirmation** (``robustmix study --confirm``): the declared study again, on seeds that
  no run in ``OUT`` has used, in ``OUT/confirmation``; ``OUT/confirmation.md`` says which
  primaries replicated, by the declared rule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from robustmix.app.study_config import StudyConfig, load_config, read_toml, to_dict, to_toml
from robustmix.core import methods, runs
from robustmix.core.errors import UsageError

STUDY_FILE = "study.toml"
PILOT, CONFIRMATION = "pilot", "confirmation"     # the subfolders of OUT
UNFROZEN = ("out", "device", "description")       # may change without changing the study
SEEDS = ("seeds", "seeds_by_method", "pilot_seeds", "phase")   # the rest are "the rules"


def frozen(config: StudyConfig) -> dict[str, Any]:
    """What the declaration freezes: the study as TOML holds it, but where it is written
    and on which device it runs."""
    return {k: v for k, v in to_dict(config).items() if k not in UNFROZEN}


def _digest(values: dict[str, Any]) -> str:
    text = json.dumps(values, sort_keys=True, ensure_ascii=False, default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def digests(config: StudyConfig) -> dict[str, str]:
    """``sha256``: of everything frozen; ``rules_sha256``: of all but the seeds and the
    phase (what a confirmation shares with the study it confirms)."""
    values = frozen(config)
    return {"sha256": _digest(values),
            "rules_sha256": _digest({k: v for k, v in values.items() if k not in SEEDS})}


def declared_text(config: StudyConfig, **extra: Any) -> str:
    """study.toml: the study, then its [declaration] table (hashes, and ``extra``: what
    chose it, e.g. the pilot and the power target)."""
    table = {**digests(config), **extra}
    lines = ["", "[declaration]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return to_toml(config) + "\n".join(lines) + "\n"


def read_declared(path: Path) -> tuple[StudyConfig, dict[str, Any]]:
    """A declared study.toml and its [declaration] table; refused when the file no longer
    matches its hash (edited after the declaration, or read by a robustmix whose defaults
    changed a rule it left out)."""
    config = load_config(None, str(path))
    table = read_toml(str(path)).get("declaration", {})
    if table:
        now = digests(config)["sha256"]
        if table.get("sha256") != now:
            raise UsageError(f"{path} no longer matches its declaration (sha256 "
                             f"{str(table.get('sha256'))[:12]}, now {now[:12]}): a rule was "
                             "changed after it was frozen; restore it, or declare a new "
                             "study in another folder")
    return config, table


def difference(before: StudyConfig, after: StudyConfig) -> str:
    """The first frozen setting that differs, as "KEY = OLD here, NEW now"; "" if none."""
    def flat(values: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, dict) and value:
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out
    old, new = flat(frozen(before)), flat(frozen(after))
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key} = {old.get(key)!r} there, {new.get(key)!r} here"
    return ""


def declare(config: StudyConfig, **extra: Any) -> None:
    """Write OUT/study.toml before the first run trains; when one is there, refuse a study
    that differs from it in anything it froze."""
    path = Path(config.out) / STUDY_FILE
    if path.is_file():
        before, _ = read_declared(path)
        changed = difference(before, config)
        if changed:
            raise UsageError(f"{path} froze this study before its runs ({changed}); a "
                             "declaration is made once: use another --out, or restore it")
        return
    _check_fresh(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(path, declared_text(config, **extra))


def _check_fresh(config: StudyConfig) -> None:
    """A confirmatory study may not reuse its pilot's seeds: the pilot chose its design."""
    pilot_file = Path(config.out) / PILOT / STUDY_FILE
    if config.phase != "confirmatory" or not pilot_file.is_file():
        return
    reused = set(read_declared(pilot_file)[0].pilot_seeds) & {
        s for m in config.methods for s in config.seeds_of(m)}
    if reused:
        raise UsageError(f"seeds {', '.join(map(str, sorted(reused)))} trained the pilot in "
                         f"{pilot_file.parent}; a confirmatory study takes seeds the pilot "
                         "did not use (robustmix power --declare chooses them)")


# ------------------------------------------------------------------------------ seeds


def used_seeds(out: Path) -> set[int]:
    """Every seed a run under ``out`` trained with, or a study.toml there declared."""
    used: set[int] = set()
    for config in Path(out).glob("**/runs/*/" + runs.CONFIG):
        seed = runs.read_json(config).get("train", {}).get("seed")
        if isinstance(seed, int):
            used.add(seed)
    for path in Path(out).glob("**/" + STUDY_FILE):
        study = load_config(None, str(path))
        used.update(study.pilot_seeds if study.phase == PILOT else ())
        used.update(s for m in study.methods for s in study.seeds_of(m))
    return used


def with_counts(config: StudyConfig, counts: dict[str, int], used: set[int]) -> StudyConfig:
    """The study with ``counts[method]`` runs per method on seeds none of ``used``: one
    run of each seed per method up to its count (so runs of one seed pair up)."""
    start = max(used) + 1 if used else 0
    names = [methods.split_spec(m)[0] for m in config.methods]
    common = max(counts[n] for n in names if n != "vanilla") if len(names) > 1 else counts[names[0]]
    seeds = tuple(range(start, start + common))
    own = {n: tuple(range(start, start + counts[n])) for n in names if counts[n] != common}
    return dataclasses.replace(config, seeds=seeds, seeds_by_method=own)


def counts_of(config: StudyConfig) -> dict[str, int]:
    return {methods.split_spec(m)[0]: len(config.seeds_of(m)) for m in config.methods}


def pilot_config(config: StudyConfig) -> StudyConfig:
    """The pilot of ``config``: every method on its ``pilot_seeds``, in OUT/pilot."""
    return dataclasses.replace(config, out=str(Path(config.out) / PILOT), phase=PILOT,
                               seeds=config.pilot_seeds, seeds_by_method={})


def confirmation_config(out: Path) -> StudyConfig:
    """The declared study of ``out`` again on fresh seeds, in OUT/confirmation (the same
    seeds when that folder was started already)."""
    path = out / STUDY_FILE
    if not path.is_file():
        raise UsageError(f"{path}: no declared study to confirm (run robustmix study, or "
                         "robustmix power --declare after a pilot, first)")
    declared, _ = read_declared(path)
    if declared.phase != "confirmatory":
        raise UsageError(f"{path} is a {declared.phase} study; --confirm reruns a "
                         "confirmatory one")
    target = out / CONFIRMATION
    if (target / STUDY_FILE).is_file():
        again, _ = read_declared(target / STUDY_FILE)
        if digests(again)["rules_sha256"] != digests(declared)["rules_sha256"]:
            raise UsageError(f"{target / STUDY_FILE} confirms another declaration than "
                             f"{path}; move it away to confirm this one")
        return dataclasses.replace(again, device=declared.device)
    fresh = with_counts(declared, counts_of(declared), used_seeds(out))
    return dataclasses.replace(fresh, out=str(target), phase=CONFIRMATION)


def declare_from_pilot(out: Path, choice) -> Path:
    """OUT/study.toml: the pilot's study (OUT/pilot) with ``choice``'s runs per method
    (:class:`robustmix.evaluations.power.Choice`) on fresh seeds, frozen, with what chose
    it. Refused when OUT/study.toml is there: a declaration is made once."""
    path, pilot_file = out / STUDY_FILE, out / PILOT / STUDY_FILE
    if path.is_file():
        raise UsageError(f"{path} is declared already (a declaration is made once); move it "
                         "away to declare another study")
    if not pilot_file.is_file():
        raise UsageError(f"{pilot_file}: no pilot study here (robustmix study --pilot)")
    pilot, table = read_declared(pilot_file)
    counts = {m: choice.n0 if m == "vanilla" else choice.n1 for m in counts_of(pilot)}
    config = with_counts(dataclasses.replace(pilot, out=str(out), phase="confirmatory"),
                         counts, used_seeds(out))
    power = ",".join(f"{m}={p:.3f}" for m, p in choice.power.items())
    declare(config, pilot=f"{PILOT}/{STUDY_FILE}", pilot_sha256=table.get("sha256", ""),
            power_target=choice.target, budget_runs=choice.budget, predicted_power=power)
    return path
