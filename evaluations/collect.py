"""What the report reads from each run: its generalization.json and robustness.csv, as
per-run numbers in pandas frames.

Per-run metrics (one row per run, NaN where a file is missing): the clean accuracies and
losses, the clean test set's ``ece``, ``nll`` and ``brier``, gaps, first-layer norms,
input-gradient norms, the profile decay D, ``q.A`` and ``q_relative.A`` per mask
distribution A, ``corrupted_acc`` (the mean accuracy over the corrupted cells of
corruptions.csv), ``final_test_acc`` from metrics.csv, and whether the run converged
(:mod:`robustmix.evaluations.convergence`, on its held-out training images; None: not judged).

Robustness rows: one per (run, attack, norm, ε), with ``conditional`` = robust / clean
accuracy on the same examples: the share of the correctly classified examples that the
attack leaves standing (1 − the attack's success rate). When a run lists an attack at one
ε several times, the row on the most examples is kept, and among those the lowest robust
accuracy (the strongest setting). ``evaluation`` (the attacks behind a number) and
``diagnostics`` ("passed", "failed: CHECK,...") are "" in files written before them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from robustmix.attacks.eps import Eps
from robustmix.attacks.table import CSV_FIELDS, read_rows
from robustmix.evaluations import convergence
from robustmix.core import runs
from robustmix.core.runs import FinishedRun


CORRUPTED_SETS = ("suite", "standard")           # corruptions.csv's corrupted cells


@dataclass
class RunRecord:
    info: FinishedRun
    name: str
    generalization: dict[str, Any] | None
    robustness: pd.DataFrame | None


def unique_names(paths: list[Path]) -> list[str]:
    """The directory name of each run, prefixed by its parent where two names collide."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name
            for p in paths]


def load_record(info: FinishedRun, name: str) -> RunRecord:
    return RunRecord(info, name, info.read_generalization(),
                     read_robustness(info.robustness_path))


def read_robustness(path: Path) -> pd.DataFrame | None:
    """A run's robustness.csv as a frame, checked first (:func:`robustmix.attacks.table.read_rows`):
    a file edited by hand into something robustmix attack never writes is a UsageError."""
    if not path.is_file():
        return None
    rows = read_rows(path)
    frame = pd.DataFrame(rows, columns=CSV_FIELDS)
    for column in ("eps_value", "clean_acc", "robust_acc", "n_examples"):
        frame[column] = pd.to_numeric(frame[column])
    return frame


def run_metrics(record: RunRecord) -> dict[str, Any]:
    """The per-run numbers the report compares (NaN when not measured), with whether the
    run converged (:mod:`robustmix.evaluations.convergence`) and why not."""
    metrics = _metrics(record.info)
    curve = [float(row["test_acc"]) for row in metrics]
    held = [float(row["holdout_acc"]) for row in metrics if row.get("holdout_acc")]
    loss = [float(row["holdout_loss"]) for row in metrics if row.get("holdout_loss")]
    state = convergence.check(held, loss, int(record.info.train.get("epochs", len(curve))),
                              int(record.info.dataset.get("num_classes") or 10))
    values: dict[str, Any] = {"final_test_acc": curve[-1] if curve else math.nan,
                              "converged": state.converged, "convergence": state.reason,
                              "holdout_gain": state.gain,
                              "corrupted_acc": corrupted_accuracy(record.info)}
    g = record.generalization
    if not g:
        return values
    get = _getter(g)
    values.update({
        "test_acc": get("test", "accuracy"), "train_acc": get("train", "accuracy"),
        "test_loss": get("test", "loss"), "train_loss": get("train", "loss"),
        "gap_acc": get("gap", "accuracy"), "gap_loss": get("gap", "loss"),
        "first_layer_frobenius": get("first_layer", "frobenius"),
        "first_layer_frobenius_input_units": get("first_layer", "frobenius_input_units"),
        "grad_loss_l2": get("input_gradient", "loss_l2_mean"),
        "grad_logit_l2": get("input_gradient", "logit_l2_mean"),
        "profile_decay": get("gradient_profile", "decay", "value"),
        # calibration of the clean test set: NaN in files written before it was measured
        "ece": get("calibration", "ece"), "nll": get("calibration", "nll"),
        "brier": get("calibration", "brier"),
    })
    for mask, q in (g.get("regularizer", {}).get("q") or {}).items():
        values[f"q.{mask}"] = _number(q.get("q"))
        values[f"q_relative.{mask}"] = _number(q.get("relative"))
    return values


def robustness_rows(record: RunRecord) -> pd.DataFrame | None:
    """The run's robustness rows, one per (attack, norm, ε), the strongest setting kept."""
    frame = record.robustness
    if frame is None or frame.empty:
        return None
    # ε's key: the float of its exact value (robustmix.attacks.eps), equal for equal budgets however
    # they were written, and the same float the declaration's grid uses
    frame = frame.assign(run=record.name, eps_key=frame["eps"].map(lambda t: Eps(t).value),
                         conditional=frame["robust_acc"] / frame["clean_acc"].where(
                             frame["clean_acc"] > 0))
    frame = frame.sort_values(["n_examples", "robust_acc"], ascending=[False, True],
                              kind="stable")
    return frame.groupby(["attack", "norm", "eps_key"], as_index=False, sort=True).first()


def _metrics(run: runs.RunDir) -> list[dict[str, str]]:
    """metrics.csv's rows (checked); [] when there is none."""
    return run.read_metrics() if run.metrics_path.is_file() else []


def corrupted_accuracy(run: runs.RunDir) -> float:
    """The mean accuracy over the corrupted cells (severities 1-5) of corruptions.csv; NaN
    without the file. A damaged file is reported by the corruptions section."""
    path = runs.RunDir(run.path).corruptions_path
    if not path.is_file():
        return math.nan
    try:
        cells = [float(r["accuracy"]) for r in runs.read_csv(path)
                 if r.get("set") in CORRUPTED_SETS]
    except (KeyError, TypeError, ValueError):
        return math.nan
    return sum(cells) / len(cells) if cells else math.nan


def _getter(tree: dict[str, Any]):
    def get(*keys: str) -> float:
        node: Any = tree
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return _number(node)
    return get


def _number(value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan
