"""One resolver for robustmix's four plug-in kinds: MSDA, attack, architecture, data set.

A user's code is found from the text they give (``--mix``, ``--attacks``, ``--arch``,
``--dataset``, or the same keys of a study) three ways, in this order:

1. a name in the kind's own registry (its built-ins, and what was registered from Python);
2. a path ``package.module:attr`` (found among the installed packages, then in the current
   directory, as ``python -m`` would);
3. the name of an entry point in the kind's group (:data:`KINDS`), which an installed
   package declares in its pyproject.toml, e.g.
   ``[project.entry-points."robustmix.architectures"] tiny = "mypackage.arch:tiny"``.

What each kind does with the object found, its contract, is the kind's registry's:
:mod:`robustmix.mixing.registry` (an MSDA's sampler factory), :mod:`robustmix.attacks.registry`
(a perturb function or an Attack), :mod:`robustmix.models` (an architecture factory) and
:mod:`robustmix.data.loading` (a data-set factory). Every failure is one
:class:`ConfigError` on the kind's setting that names the plug-in and what was wrong: an
unknown name (with what is accepted), no such module, a module that fails to import, no
such attribute, an object that breaks the contract, a factory that raises.

Importing a plug-in runs its module's code: that is what a plug-in is. Nothing here reads
weights. This module is plain Python; a plug-in is imported only when it is asked for.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Mapping, TypeVar

from robustmix.core.errors import ConfigError, UsageError

T = TypeVar("T")
PATH = re.compile(r"(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)")


@dataclass(frozen=True)
class Kind:
    """One kind of plug-in, as its errors name it."""

    name: str       # what it is: "architecture"
    field: str      # the setting that names it (the command line's flag): "arch"
    noun: str       # what an unknown one is called: "unknown arch 'x'"
    group: str      # its entry-point group
    path: str       # its path form, as the errors spell it


MSDA = Kind("MSDA", "mix", "method", "robustmix.methods", "package.module:factory")
ATTACK = Kind("attack", "attacks", "attack", "robustmix.attacks", "package.module:attr")
ARCHITECTURE = Kind("architecture", "arch", "arch", "robustmix.architectures",
                    "package.module:factory")
DATA_SET = Kind("data set", "dataset", "dataset", "robustmix.datasets",
                "package.module:factory")
KINDS = (MSDA, ATTACK, ARCHITECTURE, DATA_SET)


class PluginError(Exception):
    """What is wrong with a plug-in (one line, without its name): the resolver and the
    kinds' registries turn it into a :class:`ConfigError` naming the plug-in."""


def failure(kind: Kind, label: str, problem: str) -> ConfigError:
    """The one-line error of plug-in ``label`` (its path or entry point) of ``kind``."""
    return ConfigError(kind.field, f"{label}: {problem}")


def is_path(text: Any) -> bool:
    """Whether ``text`` has the form ``package.module:attr``."""
    return isinstance(text, str) and PATH.fullmatch(text) is not None


def resolve(kind: Kind, text: str, registry: Mapping[str, T],
            adopt: Callable[[Any, str], T], *, valid: str | None = None) -> T:
    """The plug-in ``text`` names: ``registry[text]``, else what ``adopt(target, text)``
    makes of the object that the path or the entry point ``text`` leads to.

    ``adopt`` checks the object against the kind's contract (a :class:`PluginError` says
    what is wrong) and may register it. ``valid`` lists the accepted names for an unknown
    one (default: the registry's).
    """
    if isinstance(text, str) and text in registry:
        return registry[text]
    if is_path(text):
        return _adopted(kind, text, load_path(kind, text), adopt, text)
    if isinstance(text, str) and text:
        point = entry_points(kind.group).get(text)
        if point is not None:
            label = f"{text} (entry point {point.value} of {kind.group})"
            return _adopted(kind, label, load_path(kind, point.value, label), adopt, text)
    if valid is None:
        valid = ", ".join(registry)
    raise ConfigError(kind.field, f"has unknown {kind.noun} {text!r}; valid: {valid}, an "
                                  f"installed plug-in's entry point in {kind.group}, or "
                                  f"{kind.path}")


def _adopted(kind: Kind, label: str, target: Any, adopt: Callable[[Any, str], T],
             text: str) -> T:
    try:
        return adopt(target, text)
    except PluginError as err:
        raise failure(kind, label, str(err)) from None


def load_path(kind: Kind, path: str, label: str | None = None) -> Any:
    """The object ``package.module:attr`` names (the module imported); a missing module,
    one that fails to import, or a missing attribute is one :func:`failure` line."""
    label = label or path
    match = PATH.fullmatch(path.split("[", 1)[0].strip())   # an entry point's [extras] aside
    if match is None:
        raise failure(kind, label, f"is not a path {kind.path}")
    try:
        module = import_module(match["module"])
        return attribute(module, match["attr"])
    except PluginError as err:
        raise failure(kind, label, str(err)) from None


def import_module(name: str, *, here: bool = True) -> ModuleType:
    """Import a plug-in's module: from the installed packages, else (``here``) the current
    directory. A missing module or one that fails while importing is a PluginError."""
    if here and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())   # as `python -m` would; last, so it shadows nothing
    try:
        return importlib.import_module(name)
    except Exception as err:   # a missing module, or one that fails while importing
        missing = isinstance(err, ModuleNotFoundError) and err.name is not None and \
            (name + ".").startswith(err.name + ".")
        reason = f"no module named '{err.name}'" if missing else first_line(err)
        raise PluginError(f"cannot import module '{name}' ({reason})") from None


def attribute(module: ModuleType, attr: str) -> Any:
    """``module``'s attribute ``attr`` (dotted: ``Class.method``), or a PluginError."""
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise PluginError(f"module '{module.__name__}' has no attribute '{attr}'")
        target = getattr(target, part)
    return target


def entry_points(group: str) -> dict[str, Any]:
    """The installed packages' entry points in ``group``, by name (read, not loaded)."""
    from importlib import metadata   # on first need: it scans the installed packages

    return {point.name: point for point in metadata.entry_points(group=group)}


def takes(target: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    """Whether ``target`` can be called with these arguments (by its signature; a callable
    without one is trusted)."""
    try:
        inspect.signature(target).bind(*args, **kwargs)
    except TypeError:
        return False
    except ValueError:   # a builtin without a signature
        return True
    return True


def call(kind: Kind, label: str, factory: Callable[..., T], **kwargs: Any) -> T:
    """``factory(**kwargs)``: a UsageError it raises (its own one-line check) passes as it
    is; any other exception is one :func:`failure` line."""
    try:
        return factory(**kwargs)
    except UsageError:
        raise
    except Exception as err:   # the user's code failed: say how, in one line
        raise failure(kind, label, f"its factory raised {first_line(err)}") from None


def first_line(err: BaseException) -> str:
    """``Type: the message's first line``."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
