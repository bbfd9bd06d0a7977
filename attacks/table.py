"""robustness.csv: its columns, the checked reader, and the merge of a command's rows.

One row per attack, settings, norm, ε and example subset (``n_examples``): clean and
robust accuracy, the work spent, the model and attack checks, the evaluation behind the
number (``evaluation``: FGSM, PGD, APGD, standard AutoAttack, or for a ``worst-case`` row
the attacks it is the worst of) and the attack-failure diagnostics
(``diagnostics``: "passed", "failed: CHECK,..." or "" where none ran).

A command reads the file once (:func:`read_rows`), merges its rows into what it read
(:func:`merge`) and writes it once, atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from robustmix.attacks.eps import NORMS, Eps
from robustmix.attacks.registry import registered
from robustmix.attacks.worst_case import WORST
from robustmix.core import runs
from robustmix.core.errors import ConfigError


def _attack_name(text: str) -> str:
    """A registered name, a plugin path ``module:attr`` / ``torchattacks:NAME`` (not
    imported to read a file), or worst-case."""
    if text == WORST or text in registered() or _is_path(text):
        return text
    raise ValueError(f"is {text!r}, not a registered attack (robustmix attack --help "
                     "lists them)")


def _is_path(text: str) -> bool:
    module, _, attr = text.partition(":")
    return bool(module) and bool(attr) and all(part.isidentifier() for part in
                                               module.split(".")) and attr.isidentifier()


def _eps_text(text: str) -> str:
    try:
        Eps(text)
    except ConfigError:
        raise ValueError(f"is {text!r}, not a budget like 8/255 or 0.031") from None
    return text


COLUMNS: dict[str, Callable[[str], Any]] = {
    "run": runs.text, "attack": _attack_name, "settings": runs.text,
    "norm": runs.choice(NORMS), "eps": _eps_text, "eps_value": runs.number(0, above=True),
    "n_examples": runs.number(0, integer=True), "n_attacked": runs.number(0, integer=True),
    "clean_acc": runs.number(0, 1), "robust_acc": runs.number(0, 1), "seconds": runs.number(0),
    "forward_passes": runs.number(0, integer=True),
    "backward_passes": runs.number(0, integer=True), "checks": runs.text,
    "evaluation": runs.text, "diagnostics": runs.text}
CSV_FIELDS = list(COLUMNS)


def _check_row(row: dict[str, str]) -> None:
    """What one row must satisfy beyond its columns' ranges."""
    eps = Eps(row["eps"])
    if abs(eps.value - float(row["eps_value"])) > 1e-7 * eps.value:
        raise ValueError(f"eps {row['eps']} is {eps.value:.8g}, but eps_value is "
                         f"{row['eps_value']}")
    if float(row["robust_acc"]) > float(row["clean_acc"]) + 1e-6:
        raise ValueError(f"robust_acc {row['robust_acc']} is above clean_acc "
                         f"{row['clean_acc']}")


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """A ``robustness.csv``, checked: its columns, names, ranges, and robust <= clean.

    A file edited by hand into something this program never writes (a missing column, a
    non-numeric or out-of-range accuracy, robust above clean) is a one-line UsageError
    naming the file, the line and the problem.
    """
    return runs.read_table(path, COLUMNS, row_check=_check_row)


def row_key(row: dict) -> tuple:
    """What identifies a row: attack, settings, norm, ε (exact) and the subset's size."""
    return (row["attack"], row["settings"], row["norm"], Eps(row["eps"]),
            str(row["n_examples"]))


def merge(old: Iterable[dict], new: list[dict],
          drop: Callable[[dict], bool] = lambda row: False) -> list[dict]:
    """The rows of a file after a command: ``old`` without those ``new`` replaces (same
    key) or ``drop`` removes, then ``new``."""
    replaced = {row_key(row) for row in new}
    return [row for row in old if row_key(row) not in replaced and not drop(row)] + new


def write(path: str | Path, rows: list[dict]) -> None:
    runs.write_csv(path, rows, CSV_FIELDS)


def as_csv(row, run: str, norm: str) -> dict:
    """A :class:`robustmix.attacks.sweep.Row` as a CSV row (every value a string, as read back)."""
    return {"run": run, "attack": row.attack, "settings": row.settings, "norm": norm,
            "eps": row.eps.text, "eps_value": row.eps.csv_value(),
            "n_examples": str(row.n_examples), "n_attacked": str(row.n_attacked),
            "clean_acc": f"{row.clean_acc:.6f}", "robust_acc": f"{row.robust_acc:.6f}",
            "seconds": f"{row.seconds:.3f}", "forward_passes": str(row.forward_passes),
            "backward_passes": str(row.backward_passes), "checks": ";".join(row.checks),
            "evaluation": row.evaluation, "diagnostics": row.diagnostics}
