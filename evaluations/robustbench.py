"""A run in RobustBench's form: the fields of its model_info JSON files, one file per run.

RobustBench keeps one JSON per model (``model_info/<dataset>/<threat model>/<name>.json``)
with ``link``, ``name``, ``authors``, ``additional_data``, ``number_forward_passes``,
``dataset``, ``venue``, ``architecture``, ``eps``, ``clean_acc``, ``reported``,
``autoattack_acc`` and ``footnote``: accuracies are percentages written as strings with two
decimals (``"94.78"``), ε a string as the leaderboard writes it (``"8/255"``; ``"0.5"`` for
L2), ``additional_data`` a boolean. The threat model (``Linf``, ``L2``) is the folder there;
here it is a field, ``threat_model``, beside robustmix's own: ``n_examples``, ``evaluation``,
``leaderboard`` and ``leaderboard_note``.

``autoattack_acc`` is filled only from full standard AutoAttack (robustness.csv rows with
attack ``autoattack``: APGD-CE, APGD-T, FAB-T and Square); anything else leaves it empty.
``leaderboard`` is true only where the run is what RobustBench's leaderboard compares:
standard AutoAttack at the leaderboard's ε, on its data set's full test set, without
extra data; otherwise ``leaderboard_note`` says every reason it is not.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from robustmix.attacks.eps import Eps
from robustmix.attacks.table import read_rows
from robustmix.attacks.worst_case import WORST
from robustmix.core import runs

FOLDER = "robustbench"     # in the report's folder: one <run>.json per run
STANDARD = "autoattack"    # the attack name of full standard AutoAttack in robustness.csv
THREAT_MODELS = {"linf": "Linf", "l2": "L2"}
# RobustBench's leaderboards: data set -> threat model -> (ε, test examples evaluated)
LEADERBOARDS = {"cifar10": {"Linf": ("8/255", 10_000), "L2": ("0.5", 10_000)},
                "cifar100": {"Linf": ("8/255", 10_000)},
                "imagenet": {"Linf": ("4/255", 5_000)}}


def percent(fraction: float) -> str:
    """An accuracy as RobustBench writes it: a percentage string with two decimals."""
    return f"{100 * fraction:.2f}"


def architecture(arch: str) -> str:
    """robustmix's architecture name as RobustBench spells architectures
    (``wrn28-10`` -> ``WideResNet-28-10``, ``preactresnet18`` -> ``PreActResNet-18``)."""
    if arch.startswith("timm:"):
        return f"{arch[5:]} (timm)"
    for pattern, form in ((r"wrn(\d+)-(\d+)", "WideResNet-{}-{}"),
                          (r"preactresnet(\d+)", "PreActResNet-{}"), (r"resnet(\d+)", "ResNet-{}")):
        if (match := re.fullmatch(pattern, arch)):
            return form.format(*match.groups())
    return {"smallcnn": "SmallCNN"}.get(arch, arch)


def _same_eps(a: str, b: str) -> bool:
    return Eps(a) == Eps(b)   # the one rule: equal exact values (robustmix.attacks.eps)


def _pick(rows: Sequence[Mapping[str, str]], dataset: str) -> Mapping[str, str] | None:
    """The row the file reports: standard AutoAttack if it ran, preferring the leaderboard's
    threat model and ε, then the most examples; else the same order over every attack."""
    board = LEADERBOARDS.get(dataset, {})

    def key(row: Mapping[str, str]) -> tuple:
        threat = THREAT_MODELS[row["norm"]]
        on_board = threat in board and _same_eps(row["eps"], board[threat][0])
        return (row["attack"] != STANDARD, not on_board, -int(row["n_examples"]),
                row["norm"], float(row["eps_value"]))

    candidates = [row for row in rows if row["attack"] != WORST]
    return min(candidates, key=key) if candidates else None


def _not_on_leaderboard(row: Mapping[str, str] | None, dataset: str,
                        attacks: Sequence[str]) -> list[str]:
    """Every reason the row is not a RobustBench leaderboard entry ([] when it is one)."""
    reasons = []
    if row is None or row["attack"] != STANDARD:
        reasons.append(f"no full standard AutoAttack ran (attacks: {', '.join(attacks) or 'none'})")
    board = LEADERBOARDS.get(dataset)
    if board is None:
        reasons.append(f"RobustBench has no leaderboard for {dataset}")
    elif row is not None:
        threat = THREAT_MODELS[row["norm"]]
        if threat not in board:
            reasons.append(f"RobustBench has no {threat} leaderboard for {dataset}")
        else:
            eps, examples = board[threat]
            if not _same_eps(row["eps"], eps):
                reasons.append(f"its {dataset} {threat} leaderboard is at ε = {eps}, "
                               f"not {row['eps']}")
            if int(row["n_examples"]) < examples:
                reasons.append(f"{row['n_examples']} test examples, not the {examples:,} "
                               "RobustBench evaluates")
    return reasons


def model_info(name: str, config: Mapping[str, Any], rows: Sequence[Mapping[str, str]],
               test_acc: float | None = None) -> dict[str, Any]:
    """RobustBench's model_info fields for run ``name`` (its config.json as ``config``, its
    robustness.csv rows as ``rows``). Without robustness rows, ``clean_acc`` is
    ``test_acc`` (the full test set's, from generalization.json) where given."""
    dataset = str(config["dataset"]["name"]).lower()
    train = config.get("train", {})
    arch = str(train.get("arch") or config.get("model", {}).get("arch", ""))
    method = str(train.get("mix", {}).get("mix", "vanilla"))
    row = _pick(rows, dataset)
    standard = row is not None and row["attack"] == STANDARD
    attacks = sorted({r["attack"] for r in rows} - {WORST})
    reasons = _not_on_leaderboard(row, dataset, attacks)
    clean = float(row["clean_acc"]) if row is not None else test_acc
    robust = percent(float(row["robust_acc"])) if standard else ""
    evaluation = f"standard AutoAttack ({row['settings']})" if standard else ""
    checks = f"; checks: {row['checks']}" if standard and row.get("checks") else ""
    footnote = (f"robustmix run {name}: {evaluation} on {row['n_examples']} test examples"
                f"{checks}." if standard else f"robustmix run {name}: no standard "
                f"AutoAttack, so no autoattack_acc (attacks run: {', '.join(attacks) or 'none'}"
                f"; see its {runs.ROBUSTNESS}).")
    return {
        "link": "", "name": f"{name}: {architecture(arch)} trained with {method} (robustmix)",
        "authors": "", "additional_data": False, "number_forward_passes": 1,
        "dataset": dataset, "venue": "N/A", "architecture": architecture(arch),
        "eps": "" if row is None else row["eps"],
        "clean_acc": "" if clean is None else percent(clean),
        "reported": robust, "autoattack_acc": robust,
        "footnote": footnote,
        "threat_model": "" if row is None else THREAT_MODELS[row["norm"]],
        "n_examples": 0 if row is None else int(row["n_examples"]),
        "evaluation": evaluation,
        "leaderboard": not reasons,
        "leaderboard_note": "; ".join(reasons) if reasons else
        "full standard AutoAttack at the leaderboard's ε on the full test set",
    }


def file_name(name: str) -> str:
    """``robustbench/<run>.json`` for a run named ``name`` (a ``parent/run`` name flattened)."""
    return f"{FOLDER}/{name.replace('/', '__')}.json"


def write_model_infos(records: Sequence[Any], out: Path) -> list[str]:
    """One model_info JSON per run record (:class:`robustmix.evaluations.collect.RunRecord`) in
    ``out/robustbench/``, each written atomically; JSONs there of runs not in this report
    are removed. Returns the files written, relative to ``out``."""
    (out / FOLDER).mkdir(parents=True, exist_ok=True)
    written = []
    for record in records:
        path = record.info.robustness_path
        rows = read_rows(path) if path.is_file() else []
        test = (record.generalization or {}).get("test", {}).get("accuracy")
        info = model_info(record.name, record.info.config, rows, test)
        runs.atomic_write_text(out / file_name(record.name), json.dumps(info, indent=2) + "\n")
        written.append(file_name(record.name))
    for stale in (out / FOLDER).glob("*.json"):
        if f"{FOLDER}/{stale.name}" not in written:
            stale.unlink()
    return written


def robustbench_section(ctx) -> None:
    """The report's paragraph on the files (``ctx``: the report's ReportContext)."""
    written = write_model_infos(ctx.records, ctx.out)
    ctx.written += written
    entries = sum(json.loads((ctx.out / name).read_text())["leaderboard"] for name in written)
    ctx.section("In RobustBench's form", f"Each run's clean and AutoAttack accuracy with the "
                f"fields of RobustBench's model_info files: [{FOLDER}/]({FOLDER}/), one JSON "
                f"per run. {entries} of {len(written)} would be leaderboard entries (full "
                "standard AutoAttack at the leaderboard's ε on the full test set); each "
                "file's leaderboard_note says why the others are not.")
