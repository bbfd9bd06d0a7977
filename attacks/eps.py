"""ε, one type from the command line to the files and back.

An :class:`Eps` holds the budget as the user wrote it (``text``) and as an exact rational
(``exact``); its float ``value`` is derived from that. Two budgets are the same budget
exactly when their rationals are equal; that is the one rule, used for sorting, for
dictionary keys and for matching rows of robustness.csv:

- a fraction ``A/B`` is that rational exactly (``8/255``);
- a decimal is its exact decimal value (``0.031`` is 31/1000), except that a decimal within
  a relative ``SNAP_TOLERANCE`` (1e-9) of a fraction with a denominator up to
  ``SNAP_DENOMINATOR`` (1000) is that fraction: a float 8/255 from Python, printed as
  0.03137254901960784, is 8/255. Decimals a person types (``0.0314``) are far from any such
  fraction and stay as typed.

Files keep the text in the ``eps`` column (the float in ``eps_value`` is for people and
spreadsheets), so a budget read back is the budget written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

from robustmix.core.errors import ConfigError

NORMS = ("linf", "l2")
SNAP_DENOMINATOR = 1000
SNAP_TOLERANCE = 1e-9
ACCEPTED = "a positive number like 0.031 or a fraction like 8/255"


def exact_value(text: str) -> Fraction:
    """The rational a budget's text stands for (see the module's rule); ConfigError if none."""
    item = str(text).strip()
    parts = item.split("/")
    if len(parts) > 2 or not all(part.strip() for part in parts):
        raise ConfigError("eps", f"{item!r} is not a number; expected {ACCEPTED}")
    try:
        floats = [float(part) for part in parts]
    except ValueError:
        raise ConfigError("eps", f"{item!r} is not a number; expected {ACCEPTED}") from None
    if not all(math.isfinite(v) for v in floats):
        raise ConfigError("eps", f"{item!r} must be positive and finite; expected {ACCEPTED}")
    numbers = [Fraction(part.strip()) for part in parts]
    if len(numbers) == 2:
        if numbers[1] == 0:
            raise ConfigError("eps", f"{item!r} has a zero denominator; expected {ACCEPTED}")
        value = numbers[0] / numbers[1]
    else:
        value = _snapped(numbers[0])
    try:
        as_float = float(value)
    except OverflowError:
        as_float = math.inf
    if value <= 0 or not 0 < as_float < math.inf:  # a float of 0 or inf is no budget
        raise ConfigError("eps", f"{item!r} must be positive and finite; expected {ACCEPTED}")
    return value


def _snapped(value: Fraction) -> Fraction:
    near = value.limit_denominator(SNAP_DENOMINATOR)
    if value != 0 and abs(near - value) <= SNAP_TOLERANCE * abs(value):
        return near
    return value


@dataclass(frozen=True, order=True)
class Eps:
    """One perturbation budget: its exact value and the text it was written as.

    ``Eps("8/255")``, or ``Eps.of(0.031)`` from a float, a text or an Eps.
    """

    exact: Fraction = field(compare=True)
    text: str = field(compare=False, default="")

    def __init__(self, text):
        text = str(text).strip()
        object.__setattr__(self, "exact", exact_value(text))
        object.__setattr__(self, "text", text)

    @classmethod
    def of(cls, value) -> "Eps":
        """An Eps from a float, a string or an Eps (unchanged)."""
        if isinstance(value, Eps):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, str, Fraction)):
            raise ConfigError("eps", f"must be a number or a text like 8/255, got "
                              f"{type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError("eps", f"must be positive and finite, got {value!r}")
        return cls(repr(value) if isinstance(value, float) else str(value))

    @property
    def value(self) -> float:
        return float(self.exact)

    def csv_value(self) -> str:
        """The float as robustness.csv's ``eps_value`` column shows it."""
        return f"{self.value:.8g}"

    def __repr__(self) -> str:
        return f"Eps({self.text!r})"


def parse_eps(text: str) -> list[Eps]:
    """Parse ``"1/255,2/255,0.031"`` into budgets sorted ascending, duplicates dropped
    (the first spelling of a budget is kept).

    Each item is a positive finite decimal or a fraction ``A/B`` with B > 0.
    """
    items = [item.strip() for item in str(text).split(",")]
    if not items or any(not item for item in items):
        raise ConfigError("eps", f"expects a budget like 8/255 or 0.031, or a comma list of "
                          f"them, got {text!r}")
    parsed: dict[Fraction, Eps] = {}
    for item in items:
        eps = Eps(item)
        parsed.setdefault(eps.exact, eps)
    return sorted(parsed.values())


def check_norm(norm: str) -> str:
    norm = norm.lower()
    if norm not in NORMS:
        raise ConfigError("norm", f"must be one of {', '.join(NORMS)}, got {norm!r}")
    return norm
