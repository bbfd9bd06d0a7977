"""Parsing ε as users write it: ``8/255``, ``0.031``, or a comma list of those."""

from __future__ import annotations

import math
from dataclasses import dataclass

from robustmix.core.errors import ConfigError

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
        raise ConfigError("eps", f"expects a budget like 8/255 or 0.031, or a comma list of "
                          f"them, got {text!r}")
    parsed = {}
    for item in items:
        value = _parse_one(item)
        parsed.setdefault(value, Eps(value, item))
    return sorted(parsed.values())


def _parse_one(item: str) -> float:
    accepted = "a positive number like 0.031 or a fraction like 8/255"
    try:
        parts = [float(part) for part in item.split("/")] if "/" in item else [float(item)]
    except ValueError:
        raise ConfigError("eps", f"{item!r} is not a number; expected {accepted}") from None
    if len(parts) > 2:
        raise ConfigError("eps", f"{item!r} is not a number; expected {accepted}")
    if len(parts) == 2 and parts[1] == 0:
        raise ConfigError("eps", f"{item!r} has a zero denominator; expected {accepted}")
    value = parts[0] / parts[1] if len(parts) == 2 else parts[0]
    if not math.isfinite(value) or value <= 0:
        raise ConfigError("eps", f"{item!r} must be positive and finite; expected {accepted}")
    return value


def check_norm(norm: str) -> str:
    norm = norm.lower()
    if norm not in NORMS:
        raise ConfigError("norm", f"must be one of {', '.join(NORMS)}, got {norm!r}")
    return norm
