"""Parsing ε as users write it: ``8/255``, ``0.031``, or a comma list of those."""

from __future__ import annotations

import math
from dataclasses import dataclass

from robustmix.core.errors import UsageError

NORMS = ("linf", "l2")


@dataclass(frozen=True, order=True)
class Eps:
    """One perturbation budget: its value and the text it was written as."""

    value: float
    text: str


def parse_eps(text: str) -> list[Eps]:
    """Parse ``"1/255,2/255,0.031"`` into budgets sorted ascending, duplicates dropped.

    Each item is a positive finite decimal or a fraction ``A/B`` with B > 0.
    """
    items = [item.strip() for item in str(text).split(",")]
    if not items or any(not item for item in items):
        raise UsageError(f"--eps: expected a budget like 8/255 or 0.031, or a comma list of "
                         f"them, got {text!r}")
    parsed = {}
    for item in items:
        value = _parse_one(item)
        parsed.setdefault(value, Eps(value, item))
    return sorted(parsed.values())


def _parse_one(item: str) -> float:
    accepted = "a positive number like 0.031 or a fraction like 8/255"
    try:
        if "/" in item:
            numerator, denominator = item.split("/")
            num, den = float(numerator), float(denominator)
            if den == 0:
                raise UsageError(f"--eps: {item!r} has a zero denominator; expected {accepted}")
            value = num / den
        else:
            value = float(item)
    except ValueError:
        raise UsageError(f"--eps: {item!r} is not a number; expected {accepted}") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--eps: {item!r} must be positive and finite; expected {accepted}")
    return value


def check_norm(norm: str) -> str:
    norm = norm.lower()
    if norm not in NORMS:
        raise UsageError(f"--norm must be one of {', '.join(NORMS)}, got {norm!r}")
    return norm
