"""The MSDA registry: every method's name, colour, options and where its sampler comes from.

A method's record holds all of its facts: each option's default, help and range
(:class:`Option`; the command line's flags and every check of a value are made from them)
and its colour. Nothing else lists a built-in's option names.

The library finds its own methods here, and a user's the same way: a method is a name and
a *factory*, a callable ``factory(**options)`` that returns the mask sampler
(:class:`robustmix.mixing.MaskSampler`, or a :class:`robustmix.mixing.DataDependentSampler`).
Three roads lead in, and all end in this one table:

- :func:`register_method` from Python (the built-ins below are registered the same way);
- a plugin package's entry point in the group ``robustmix.methods``
  (``fmix = "mypackage.fmix:fmix"``), read the first time a name is looked up;
- a path ``package.module:factory`` given as ``--mix`` or in a study's ``methods``: the
  method is named after the factory (``fmix``) and the run's config.json keeps the path
  (``MixConfig.factory``), so every later command finds the same code.

A factory given as a ``"module:attr"`` path is imported only when a sampler is first needed
(:func:`robustmix.mixing.make_sampler`); this module is plain Python and never imports
torch or a plugin, so ``robustmix --help`` answers at once. Identity is by name, never by
position: colours, seeds and file columns are derived from the name.
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from robustmix.core import plugins
from robustmix.core.errors import ConfigError

ENTRY_POINT_GROUP = "robustmix.methods"
# MixConfig's own fields: an option of that name would be ambiguous in a study's [train]
RESERVED_OPTIONS = ("mix", "alpha", "lam_per", "pairing", "mix_prob", "options", "factory")
# colours of methods registered without one, picked by a hash of the name (never its
# position): matplotlib's tab10/tab20 colours that no built-in uses
PALETTE = ("#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a",
           "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")   # it names directories and CSV columns
_PATH = re.compile(r"(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)")
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
OptionValue = bool | int | float | str | None


@dataclass(frozen=True)
class Option:
    """One option of an MSDA: its default, what it does, and the numbers it accepts.

    ``low``/``high`` bound a number (either may be None: unbounded on that side, though
    never infinite or NaN once bounded); the command line's help and every check of the
    option's value come from here.
    """

    default: OptionValue
    help: str = ""
    low: float | None = None
    high: float | None = None

    def range_text(self) -> str:
        """The accepted values in words: ``in [0, 1]``, ``finite, >= 0``, or ``""``."""
        if self.low is not None and self.high is not None:
            return f"in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"finite, >= {self.low:g}"
        return f"finite, <= {self.high:g}" if self.high is not None else ""

    def check(self, key: str, value: Any) -> None:
        """Refuse a number outside the range (its type is checked by the caller)."""
        if self.low is not None and self.high is not None:
            if not self.low <= value <= self.high:
                raise ConfigError(key, f"must lie in [{self.low:g}, {self.high:g}], "
                                       f"got {value}")
        elif self.low is not None and not (math.isfinite(value) and value >= self.low):
            raise ConfigError(key, f"must be a finite number >= {self.low:g}, got {value}")
        elif self.high is not None and not (math.isfinite(value) and value <= self.high):
            raise ConfigError(key, f"must be a finite number <= {self.high:g}, got {value}")


@dataclass(frozen=True)
class Method:
    """One mixed-sample data augmentation as the rest of the project sees it."""

    name: str
    factory: Callable[..., Any] | str   # factory(**options) -> sampler, or "module:attr"
    colour: str            # its colour in every figure
    summary: str = ""      # what its mask is, in a few words
    data_dependent: bool = False   # masks drawn from the images (PuzzleMix): as its sampler says
    # option name -> default, checked and passed to the factory; None while a factory
    # given as a path is not imported yet (then: its keyword parameters and their defaults)
    options: Mapping[str, OptionValue] | None = field(default=None, compare=False)
    builtin: bool = False
    # option name -> its Option (help and range) where the method declared them
    specs: Mapping[str, Option] = field(default_factory=dict, compare=False)

    @property
    def path(self) -> str:
        """Where the factory lives, as ``module:attr``."""
        if isinstance(self.factory, str):
            return self.factory
        return f"{self.factory.__module__}:{self.factory.__qualname__}"

    @property
    def loaded(self) -> bool:
        """Whether the factory is a callable and its options are known."""
        return not isinstance(self.factory, str) and self.options is not None


def palette_colour(name: str) -> str:
    """The colour of a method registered without one: fixed by its name (CRC-32)."""
    return PALETTE[zlib.crc32(name.encode("utf-8")) % len(PALETTE)]


_B = "robustmix.mixing.registry:"   # the built-ins' factories, imported with the samplers
_UNIT = {"low": 0.0, "high": 1.0}
_NON_NEGATIVE = {"low": 0.0}
# The built-ins: name, colour, summary, whether the masks are drawn from the images, and
# the options (each one's default, help and range: train's flags are generated from them)
_BUILTINS = (
    ("vanilla", "#404040", "no mixing (the all-ones mask)", False, {}),
    ("mixup", "#1f77b4", "the constant mask λ", False, {}),
    ("cutmix", "#d62728", "one box of area 1 − λ from the partner", False, {}),
    ("stochastic", "#9467bd", "CutMix or Mixup, chosen at random per mask", False,
     {"switch_prob": Option(0.5, "probability of CutMix rather than Mixup", **_UNIT)}),
    ("hmix", "#2ca02c", "a box of area r(1 − λ) on a Mixup of the rest", False,
     {"hmix_r": Option(0.5, "box area fraction r of the partner's share", **_UNIT)}),
    ("gmix", "#ff7f0e", "a Gaussian bump centred at a random pixel", False, {}),
    # the official PuzzleMix defaults
    ("puzzlemix", "#8c564b", "graph-cut blocks chosen by saliency, then transported", True,
     {"puzzle_beta": Option(1.2, "label smoothness beta of the graph cut", **_NON_NEGATIVE),
      "puzzle_gamma": Option(0.5, "data smoothness gamma across block boundaries",
                             **_NON_NEGATIVE),
      "puzzle_eta": Option(0.2, "weight eta of the prior that keeps the mask mean near "
                                "lambda", **_NON_NEGATIVE),
      "puzzle_transport": Option(True, "move salient blocks out from under the partner")}),
)
_REGISTRY: dict[str, Method] = {
    name: Method(name, _B + name, colour, summary, data_dependent,
                 {key: spec.default for key, spec in specs.items()}, builtin=True,
                 specs=specs)
    for name, colour, summary, data_dependent, specs in _BUILTINS}
MIX_NAMES = tuple(_REGISTRY)                           # the built-ins, in their order
DATA_FREE_MIX_NAMES = tuple(n for n, m in _REGISTRY.items() if not m.data_dependent)
# every built-in option -> (its method, its Option), in the registry's order
BUILTIN_OPTIONS = {key: (m.name, spec) for m in _REGISTRY.values()
                   for key, spec in m.specs.items()}
_entry_points_read = False


def register_method(name: str, factory: Callable[..., Any] | str, *, colour: str | None = None,
                    summary: str = "", data_dependent: bool = False,
                    options: Mapping[str, OptionValue | Option] | None = None) -> Method:
    """Register an MSDA under ``name``; training, kernels, the study and the report use it.

    ``factory(**options)`` returns the method's mask sampler (or data-dependent sampler);
    it may be a callable or a ``"module:attr"`` path imported when first needed.
    ``options`` maps each option's name to its default (bool, int, float, str or None),
    or to an :class:`Option` (its default, help and range, as the built-ins declare theirs);
    a run's values are checked against the default's type (and range) and passed to the
    factory as keywords. ``None`` takes the factory's keyword parameters and their defaults (for a
    path, once it is imported).
    ``colour`` is ``"#rrggbb"``; without one the method gets one of :data:`PALETTE` by its
    name. Registering a name again with the same factory replaces its entry (a module may
    register itself when imported); a built-in's name, or a name that another factory
    holds, is refused with :class:`ConfigError`.
    """
    method = _checked_method(name, factory, colour, summary, data_dependent, options)
    known = _REGISTRY.get(name)
    if known is not None and known != method:
        if known.builtin or known.path != method.path:
            raise ConfigError("name", f"'{name}' is already the name of "
                              f"{'a built-in method' if known.builtin else known.path}; "
                              "register yours under another name")
        if isinstance(method.factory, str) and not isinstance(known.factory, str):
            return known   # a path declared again after its module registered itself
    _REGISTRY[name] = method
    return method


def _checked_method(name, factory, colour, summary, data_dependent, options) -> Method:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError("name", f"must be letters, digits and _ . + - (it names run "
                          f"directories and CSV columns), got {name!r}")
    if isinstance(factory, str):
        if not _PATH.fullmatch(factory):
            raise ConfigError("factory", f"must be a callable or 'package.module:attr', "
                              f"got {factory!r}")
    elif not callable(factory):
        raise ConfigError("factory", f"must be a callable or 'package.module:attr', "
                          f"got {type(factory).__name__}")
    if colour is not None and (not isinstance(colour, str) or not _COLOUR.fullmatch(colour)):
        raise ConfigError("colour", f"must be '#rrggbb' or None, got {colour!r}")
    if not isinstance(data_dependent, bool):
        raise ConfigError("data_dependent", f"must be true or false, got {data_dependent!r}")
    if options is None and callable(factory):
        options = keyword_defaults(name, factory)
    specs = _checked_specs(name, options)
    if options is not None:
        options = checked_defaults(name, {key: specs[key].default if key in specs else value
                                          for key, value in options.items()})
    return Method(name, factory, colour or palette_colour(name), str(summary), data_dependent,
                  options, specs=specs)


def _checked_specs(name: str, options: Any) -> dict[str, Option]:
    """The options given as :class:`Option`, their bounds checked (numbers or None)."""
    if not isinstance(options, Mapping):
        return {}
    specs = {key: spec for key, spec in options.items() if isinstance(spec, Option)}
    for key, spec in specs.items():
        for bound in (spec.low, spec.high):
            if bound is not None and (isinstance(bound, bool) or not isinstance(
                    bound, (int, float)) or not isinstance(spec.default, (int, float))):
                raise ConfigError("options", f"of {name}: {key}'s range must be numbers "
                                  f"around a numeric default, got {spec.low!r}, {spec.high!r}")
    return specs


def keyword_defaults(name: str, factory: Callable[..., Any]) -> dict[str, Any]:
    """A factory's options: its parameters, each with its default (``*args`` and
    ``**kwargs`` are no options); a parameter without a default is refused."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}
    options = {}
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.default is param.empty:
            raise ConfigError("factory", f"of {name}: its parameter '{param.name}' has no "
                              "default (every option needs one; or register it with "
                              "options=...)")
        options[param.name] = param.default
    return options


def checked_defaults(name: str, options: Mapping[str, Any]) -> dict[str, OptionValue]:
    """A method's option defaults, checked: identifiers, not reserved, plain values."""
    if not isinstance(options, Mapping):
        raise ConfigError("options", f"of {name} must map option names to defaults, "
                          f"got {type(options).__name__}")
    for key, value in options.items():
        if not isinstance(key, str) or not key.isidentifier() or key in RESERVED_OPTIONS:
            raise ConfigError("options", f"of {name}: {key!r} cannot name an option (an "
                              f"identifier other than {', '.join(RESERVED_OPTIONS)})")
        if not isinstance(value, (bool, int, float, str, type(None))):
            raise ConfigError("options", f"of {name}: the default of {key} must be a bool, "
                              f"number, string or None, got {type(value).__name__}")
    return dict(options)


def loaded(name: str, factory: Callable[..., Any], options: Mapping[str, OptionValue],
           data_dependent: bool) -> Method:
    """Complete a method whose factory was a path, once imported (by robustmix.mixing)."""
    method = replace(_REGISTRY[name], factory=factory,
                     options=checked_defaults(name, options), data_dependent=data_dependent)
    _REGISTRY[name] = method
    return method


def split_spec(spec: str) -> tuple[str, str | None]:
    """``--mix`` as given -> (method name, factory path or None).

    ``"cutmix"`` -> ("cutmix", None); ``"examples.fmix:fmix"`` -> ("fmix", the path): a
    method given by its factory's path is named after the factory.
    """
    if not isinstance(spec, str) or ":" not in spec:
        return spec, None
    if not _PATH.fullmatch(spec):
        raise ConfigError("mix", f"must be a method's name or 'package.module:factory', "
                          f"got {spec!r}")
    return spec.rsplit(":", 1)[1].rsplit(".", 1)[-1], spec


def get(name: str, factory: str | None = None) -> Method:
    """The method called ``name``; with ``factory`` (a path) it is registered if unknown.

    An unknown name, or a name registered with another factory, is a :class:`ConfigError`
    on ``mix`` that says what is accepted.
    """
    if factory is not None and (find(name) is None or _REGISTRY[name].path != factory):
        try:
            return register_method(name, factory)
        except ConfigError as err:
            raise ConfigError("mix", f"{factory}: {err.field} {err.problem}") from None
    method = find(name)
    if method is None:
        raise ConfigError("mix", f"must be one of {', '.join(names())} or a factory's path "
                          f"'package.module:factory', got {name!r}")
    return method


def find(name: str) -> Method | None:
    """The method called ``name`` (the installed entry points read first), or None."""
    if not isinstance(name, str):
        return None
    if name not in _REGISTRY:
        _read_entry_points()
    return _REGISTRY.get(name)


def names() -> tuple[str, ...]:
    """Every registered method: the built-ins, then the others in the order registered."""
    _read_entry_points()
    return tuple(_REGISTRY)


def colour(name: str) -> str:
    """The plot colour of a method; a name not registered gets one of the palette's."""
    method = _REGISTRY.get(name)
    return method.colour if method is not None else palette_colour(name)


def name_seed(name: str) -> int:
    """A method's part of a random seed: the CRC-32 of its name, stable across processes
    and Python versions (unlike ``hash``), whatever else is registered."""
    return zlib.crc32(name.encode("utf-8"))


def rank(name: str) -> tuple[int, str]:
    """Where a method sorts: in registry order, names not registered after, by name."""
    order = list(_REGISTRY)
    return (order.index(name), "") if name in _REGISTRY else (len(order), name)


def full_options(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The method's defaults updated by ``given`` (as given where its options are unknown)."""
    method = _REGISTRY.get(name) if isinstance(name, str) else None
    if method is None or method.options is None or not isinstance(given, Mapping):
        return dict(given) if isinstance(given, Mapping) else given
    return {**method.options, **given}


def check_options(name: str, given: Mapping[str, Any]) -> None:
    """Refuse an option the method does not have, or a value unlike its default's type.

    The ranges a method declared are checked too (``hmix_r`` in [0, 1], ...); a plugin's
    factory checks its own when called. Nothing is checked while the method's options are unknown.
    """
    if not isinstance(given, Mapping):
        raise ConfigError("options", f"must map option names to values, got {given!r}")
    method = _REGISTRY.get(name) if isinstance(name, str) else None
    if method is None or method.options is None:
        return
    for key, value in given.items():
        if key not in method.options:
            accepted = ", ".join(method.options) or "none"
            raise ConfigError("options", f"{key!r} is not an option of {name} (its options: "
                              f"{accepted})")
        _check_type(key, value, method.options[key])
        spec = method.specs.get(key)
        if spec is not None and not isinstance(value, (bool, str, type(None))):
            spec.check(key, value)


def _check_type(key: str, value: Any, default: Any) -> None:
    kinds = {bool: (bool, "true or false"), int: (int, "an integer"),
             float: ((int, float), "a number"), str: (str, "a string")}
    if default is None:
        if not isinstance(value, (bool, int, float, str, type(None))):
            raise ConfigError(key, f"must be a bool, number, string or null, got {value!r}")
        return
    kind, text = kinds[type(default)]
    if not isinstance(value, kind) or (isinstance(value, bool) and type(default) is not bool):
        raise ConfigError(key, f"must be {text}, got {value!r}")


def _read_entry_points() -> None:
    """Register the plugins installed under the entry-point group, once, without importing
    them; one whose name is taken is left out with a warning."""
    global _entry_points_read
    if _entry_points_read:
        return
    _entry_points_read = True
    for point in plugins.entry_points(ENTRY_POINT_GROUP).values():
        try:
            register_method(point.name, point.value)
        except ConfigError as err:
            warnings.warn(f"robustmix: entry point {point.name} = {point.value!r} of group "
                          f"{ENTRY_POINT_GROUP} left out: {err}", stacklevel=2)
