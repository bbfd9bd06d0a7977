"""Runs that differ only in seed form a group; a group is named by its mix method.

The group key is the training config flattened (``mix.alpha`` for the mix settings)
without ``IGNORED_KEYS``: the seed, and settings that say where or how fast a run went
rather than what it learned. When several groups share a method, each name adds the
settings in which they differ, e.g. ``cutmix (arch=wrn28-2)``.

Summaries over a group's seeds: mean, sample std (ddof 1; undefined for one seed) and n.
Comparisons between groups are judged in :mod:`evaluations.statistics`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from robustmix.core.methods import MIX_NAMES

IGNORED_KEYS = ("seed", "device", "data_dir", "download", "log_interval", "amp", "channels_last")
METHOD_ORDER = MIX_NAMES   # the registry's order


def flat_settings(train: dict[str, Any]) -> dict[str, Any]:
    """The train config as one flat dict, mix settings as ``mix.NAME``; ignored keys dropped."""
    flat = {}
    for key, value in train.items():
        if key in IGNORED_KEYS:
            continue
        if key == "mix" and isinstance(value, dict):
            flat.update({f"mix.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _key(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def family_key(train: dict[str, Any]) -> str:
    """Everything but the mix settings: groups of one family differ only in their MSDA."""
    return _key({k: v for k, v in flat_settings(train).items() if not k.startswith("mix.")})


@dataclass
class Group:
    name: str
    method: str
    settings: dict[str, Any]
    family: str
    members: list[str] = field(default_factory=list)   # run names, in the order given
    style: int = 0                                     # index among groups of its method


def group_runs(named_trains: Sequence[tuple[str, dict[str, Any]]]) -> list[Group]:
    """Groups of runs with equal settings but the seed, ordered by method then name."""
    by_key: dict[str, Group] = {}
    for run_name, train in named_trains:
        settings = flat_settings(train)
        key = _key(settings)
        if key not in by_key:
            method = str(settings.get("mix.mix", "vanilla"))
            by_key[key] = Group(method, method, settings, family_key(train))
        by_key[key].members.append(run_name)
    groups = list(by_key.values())
    for method in {g.method for g in groups}:
        same = [g for g in groups if g.method == method]
        if len(same) > 1:
            differing = sorted(k for k in set().union(*(g.settings for g in same))
                               if len({_key({"v": g.settings.get(k)}) for g in same}) > 1)
            for index, g in enumerate(same):
                detail = ", ".join(f"{k}={_short(g.settings.get(k))}" for k in differing)
                g.name, g.style = f"{method} ({detail})", index
    return sorted(groups, key=lambda g: (method_rank(g.method), g.name))


def method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def summarize(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample std, n) of the finite values; NaN where undefined."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(finite) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else math.nan
    return mean, std, n
