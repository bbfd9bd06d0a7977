"""Settings and tables read back from files, checked before use.

:func:`check_fields` checks JSON or TOML values against a dataclass's typed fields (a
run's config.json, a study's TOML); :func:`read_table` reads a CSV this program wrote,
with a check per column (:func:`number`, :func:`choice`, :func:`text`). Anything
malformed becomes a one-line :class:`UsageError` naming the file and the problem.
Plain Python, no torch.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from robustmix.core.errors import UsageError


def kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {dict: "an object", str: "a string", type(None): "null", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def short_value(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) \
        else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."



def check_fields(values: Mapping[str, Any], cls: type, source: str, *,
                 what: str = "settings", prefix: str = "") -> None:
    """Check JSON ``values`` against the typed fields of dataclass ``cls``.

    Unknown keys and values of the wrong type (``"3"`` or ``3.5`` for an int, ``true``
    for a number, a list of the wrong length for a pair) raise a one-line
    :class:`UsageError` naming ``source`` and the key (``what`` names the kind of
    settings). Nested dataclasses are checked recursively; missing keys are allowed
    (the defaults apply).
    """
    if not isinstance(values, Mapping):
        raise UsageError(f"{source}: malformed {what}: {prefix.rstrip('.') or 'they'} must be "
                         f"an object, got {short_value(values)}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known), key=str)
    if unknown:
        raise UsageError(f"{source}: unknown {what} "
                         f"{', '.join(prefix + str(k) for k in unknown)}")
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            check_fields(value, hint, source, what=what, prefix=f"{prefix}{key}.")
        elif not _matches(value, hint):
            raise UsageError(f"{source}: malformed {what}: {prefix}{key} must be "
                             f"{_describe(hint)}, got {short_value(value)}")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is dict:
        return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(item, args[0]) for item in value)
        return len(value) == len(args) and all(map(_matches, value, args))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # a type this checker does not know: the constructor checks it


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is dict:
        return "a table of names and values"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} numbers" if all(a in (int, float) for a in args) \
            else f"a list of {len(args)} values"
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


# ---------------------------------------------------------------------------- checked CSVs


def number(lo: float = -math.inf, hi: float = math.inf, *, integer: bool = False,
           above: bool = False) -> Callable[[str], float]:
    """A column check: a finite number (an integer with ``integer``) in [lo, hi].

    With ``above`` the value must be strictly greater than ``lo``.
    """
    def check(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except (TypeError, ValueError):
            raise ValueError(f"is {text!r}, not {'an integer' if integer else 'a number'}") \
                from None
        if not math.isfinite(value):
            raise ValueError(f"is {text!r}, not a finite number")
        if value < lo or value > hi or (above and value == lo):
            left = "(" if above else "["
            raise ValueError(f"is {text}, outside {left}{lo:g}, {hi:g}]")
        return value
    return check


def choice(options: Iterable[str]) -> Callable[[str], str]:
    """A column check: one of ``options``."""
    options = tuple(options)

    def check(text: str) -> str:
        if text not in options:
            raise ValueError(f"is {text!r}, not one of {', '.join(options)}")
        return text
    return check


def text(value: str) -> str:
    """A column check that accepts any text."""
    return value


def _header_columns(path: Path, header, columns: Mapping[str, Callable[[str], Any]],
                    optional: tuple[str, ...]) -> Mapping[str, Callable[[str], Any]]:
    """The columns a file's header must hold (without ``optional`` ones, when it has none
    of them), or the UsageError that names what is repeated, lacking or unknown."""
    if not header:
        raise UsageError(f"{path} is empty: it has no header line")
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if optional and not set(optional) & set(header):
        columns = {k: v for k, v in columns.items() if k not in optional}
    missing = [c for c in columns if c not in header]
    unknown = [c for c in header if c not in columns]
    for problem, names in (("repeats the", duplicated), ("lacks the", missing),
                           ("has the unknown", unknown)):
        if names:
            raise UsageError(f"{path} {problem} column{'s' if len(names) > 1 else ''} "
                             f"{', '.join(map(repr, names))}; expected {','.join(columns)}")
    return columns


def read_table(path: str | os.PathLike, columns: Mapping[str, Callable[[str], Any]], *,
               row_check: Callable[[dict[str, str]], None] | None = None,
               optional: Iterable[str] = ()) -> list[dict[str, str]]:
    """Read a CSV that this program wrote, checking it before use.

    The header must hold exactly ``columns`` (in any order), every line as many values,
    each value must pass its column's check, and each row ``row_check`` (checks raise
    ``ValueError`` naming the problem). Anything else is a one-line :class:`UsageError`
    naming the file, the line and the problem. Columns named in ``optional`` may be absent
    (all of them together: the metrics.csv of a run without a held-out slice). Returns the
    rows as strings, so rewriting them changes nothing.
    """
    path = Path(path)
    optional = tuple(optional)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames
            columns = _header_columns(path, header, columns, optional)
            rows = []
            for row in reader:
                extra = row.pop(None, None) or []
                short = sum(value is None for value in row.values())
                if extra or short:
                    raise UsageError(f"{path}, line {reader.line_num}: "
                                     f"{len(header) + len(extra) - short} values, but the "
                                     f"header has {len(header)} columns")
                for column, check in columns.items():
                    try:
                        check(row[column])
                    except ValueError as err:
                        raise UsageError(f"{path}, line {reader.line_num}: {column} "
                                         f"{err}") from None
                if row_check is not None:
                    try:
                        row_check(row)
                    except ValueError as err:
                        raise UsageError(f"{path}, line {reader.line_num}: {err}") from None
                rows.append(row)
            return rows
    except FileNotFoundError:
        raise UsageError(f"{path} not found") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None
    except csv.Error as err:
        raise UsageError(f"{path} is not a readable CSV ({err})") from None
    except OSError as err:
        raise UsageError(f"{path} could not be read ({err.strerror or err})") from None

