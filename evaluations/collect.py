"""What the report reads from each run: its generalization.json and robustness.csv, as
per-run numbers in pandas frames.

Per-run metrics (one row per run, NaN where a file is missing): the clean accuracies and
losses, gaps, first-layer norms, input-gradient norms, the profile decay D, ``q.A`` and
``q_relative.A`` per mask distribution A, and ``final_test_acc`` from metrics.csv.

Robustness rows: one per (run, attack, norm, ε). When a run lists an attack at one ε
several times, the row on the most examples is kept, and among those the lowest robust
accuracy (the strongest setting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from evaluations.runinfo import GENERALIZATION, ROBUSTNESS, RunInfo
from robustmix import runs


@dataclass
class RunRecord:
    info: RunInfo
    name: str
    generalization: dict[str, Any] | None
    robustness: pd.DataFrame | None


def unique_names(paths: list[Path]) -> list[str]:
    """The directory name of each run, prefixed by its parent where two names collide."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name
            for p in paths]


def load_record(info: RunInfo, name: str) -> RunRecord:
    path = info.path / GENERALIZATION
    generalization = runs.read_json(path) if path.is_file() else None
    return RunRecord(info, name, generalization, read_robustness(info.path / ROBUSTNESS))


def read_robustness(path: Path) -> pd.DataFrame | None:
    """A run's robustness.csv as a frame, checked first (:func:`attacks.runner.read_rows`):
    a file edited by hand into something robustmix attack never writes is a UsageError."""
    from attacks.runner import CSV_FIELDS, read_rows

    if not path.is_file():
        return None
    frame = pd.DataFrame(read_rows(path), columns=CSV_FIELDS)
    for column in ("eps_value", "clean_acc", "robust_acc", "n_examples"):
        frame[column] = pd.to_numeric(frame[column])
    return frame


def run_metrics(record: RunRecord) -> dict[str, float]:
    """The per-run numbers the report compares (NaN when not measured)."""
    values: dict[str, float] = {"final_test_acc": _final_test_acc(record.info.path)}
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
    frame = frame.assign(run=record.name, eps_key=frame["eps_value"].round(9))
    frame = frame.sort_values(["n_examples", "robust_acc"], ascending=[False, True],
                              kind="stable")
    return frame.groupby(["attack", "norm", "eps_key"], as_index=False, sort=True).first()


def _final_test_acc(run_dir: Path) -> float:
    """The last epoch's test accuracy from metrics.csv (checked); NaN when there is none."""
    path = run_dir / runs.METRICS
    if not path.is_file():
        return math.nan
    rows = runs.read_metrics(path)
    return float(rows[-1]["test_acc"]) if rows else math.nan


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
