"""Per-example outcomes of every attack on a run, and the true worst case over them.

``robustness_examples.csv`` keeps, for every attack, norm, ε and example subset that
``robustmix attack`` ran, which examples the model classified correctly (``clean``) and
which still stood after the attack (``standing``): one character per example, in the order
of the subset's test-set indices. Attacks run in separate commands (FGSM and PGD in one,
AutoAttack in another) land in the same file, so the ``worst-case`` rows of
``robustness.csv`` are the per-example minimum over every attack run at that ε on the same
examples, whichever command ran it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from robustmix.attacks.eps import NORMS, Eps
from robustmix.core import runs

WORST = "worst-case"     # the attack column of the per-ε worst-case rows, everywhere
FIELDS = ["attack", "settings", "norm", "eps", "eps_value", "n_examples", "clean", "standing"]


def _bits(text: str) -> str:
    if any(c not in "01" for c in text):
        raise ValueError("must be a string of 0 and 1, one per example")
    return text


def _check(row: dict[str, str]) -> None:
    n = int(row["n_examples"])
    if len(row["clean"]) != n or len(row["standing"]) != n:
        raise ValueError(f"clean and standing must hold {n} characters, one per example")
    if any(s == "1" and c == "0" for s, c in zip(row["standing"], row["clean"])):
        raise ValueError("an example stands after the attack but was misclassified clean")


COLUMNS = {"attack": runs.text, "settings": runs.text, "norm": runs.choice(NORMS),
           "eps": runs.text, "eps_value": runs.number(0, above=True),
           "n_examples": runs.number(1, integer=True), "clean": _bits, "standing": _bits}


def encode(flags: Tensor) -> str:
    return "".join("1" if bool(v) else "0" for v in flags.tolist())


def decode(text: str) -> Tensor:
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


def read(path: Path) -> list[dict[str, str]]:
    """The per-example file, checked (:func:`robustmix.core.runs.read_table`); [] when absent."""
    return runs.read_table(path, COLUMNS, row_check=_check) if path.exists() else []


def _key(row: dict) -> tuple:
    return (row["attack"], row["settings"], row["norm"], Eps(row["eps"]),
            str(row["n_examples"]))


def record(path: Path, norm: str, clean: Tensor,
           outcomes: Iterable[tuple[str, str, Eps, Tensor]]) -> list[dict[str, str]]:
    """Merge this call's outcomes (attack, settings, ε, standing) into the file (read
    once, written once); returns every row of the file. A row with the same attack,
    settings, norm, ε and subset is replaced."""
    n = clean.numel()
    new = [{"attack": attack, "settings": settings, "norm": norm, "eps": eps.text,
            "eps_value": eps.csv_value(), "n_examples": str(n), "clean": encode(clean),
            "standing": encode(standing)}
           for attack, settings, eps, standing in outcomes if attack != WORST]
    replaced = {_key(row) for row in new}
    rows = [row for row in read(path) if _key(row) not in replaced] + new
    runs.write_csv(path, rows, FIELDS)
    return rows


def worst_cases(rows: list[dict[str, str]], norm: str, n_examples: int
                ) -> list[tuple[Eps, list[str], Tensor, Tensor]]:
    """Per ε (ascending) of the given norm and subset: the attacks that ran there, the
    clean flags and the examples that every one of them left standing."""
    by_eps: dict[Eps, list[dict[str, str]]] = {}
    for row in rows:
        if row["norm"] == norm and int(row["n_examples"]) == n_examples:
            by_eps.setdefault(Eps(row["eps"]), []).append(row)
    result = []
    for eps in sorted(by_eps):
        group = by_eps[eps]
        clean = decode(group[0]["clean"])
        standing = clean.clone()
        for row in group:
            clean &= decode(row["clean"])
            standing &= decode(row["standing"])
        attacks = sorted({row["attack"] for row in group})
        result.append((eps, attacks, clean, standing & clean))
    return result


WORST_OF = "per-example worst of "


def describe(attacks: list[str]) -> str:
    """A worst-case row's ``settings`` text: the attacks it is the worst of."""
    return WORST_OF + ",".join(attacks)


def attacks_of(settings: str) -> list[str]:
    """The attacks a worst-case row's ``settings`` text names (:func:`describe`'s inverse)."""
    return settings[len(WORST_OF):].split(",") if settings.startswith(WORST_OF) else []


