"""Runs that differ only in seed form a group; a group is named by its mix method.

The group key is the training config flattened (``mix.alpha`` for the mix settings, and
``mix.hmix_r`` for a method's options) without ``IGNORED_KEYS``: the seed, and settings that say where or how fast a run went
rather than what it learned. When several groups share a method, each name adds the
settings in which they differ, e.g. ``cutmix (arch=wrn28-2)``.

Summaries over a group's seeds: mean, sample std (ddof 1; undefined for one seed) and n.
Comparisons between groups are judged in :mod:`robustmix.evaluations.statistics`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from robustmix.core import methods

IGNORED_KEYS = ("seed", "device", "data_dir", "download", "log_interval", "amp", "channels_last")


def flat_settings(train: dict[str, Any]) -> dict[str, Any]:
    """The train config as one flat dict, mix settings and the method's options as
    ``mix.NAME`` (:func:`mix_settings`); ignored keys dropped."""
    flat = {}
    for key, value in train.items():
        if key in IGNORED_KEYS:
            continue
        if key == "mix" and isinstance(value, dict):
            flat.update({f"mix.{k}": v for k, v in mix_settings(value).items()})
        else:
            flat[key] = value
    return flat


def mix_settings(mix: dict[str, Any]) -> dict[str, Any]:
    """A run's ``mix`` section as one flat dict: the options beside the other settings (an
    option never takes a MixConfig field's name), and no ``factory`` for a built-in."""
    values = dict(mix)
    options = values.pop("options", None) or {}
    if values.get("factory") is None:
        values.pop("factory", None)
    return {**values, **options} if isinstance(options, dict) else values


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
        _register(settings)
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


def _register(settings: dict[str, Any]) -> None:
    """A method given by its factory's path is registered from the run's config, so the
    report draws its masks and kernel like a built-in's."""
    name, factory = settings.get("mix.mix"), settings.get("mix.factory")
    if isinstance(name, str) and isinstance(factory, str):
        methods.get(name, factory)


def method_rank(method: str) -> tuple[int, str]:
    """The registry's order; methods not registered after, by name."""
    return methods.rank(method)


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
