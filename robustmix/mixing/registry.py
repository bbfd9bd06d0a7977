"""Samplers by name: the registry's factories imported, checked and called.

:mod:`robustmix.core.methods` holds the table (names, colours, options, factories). Here a
factory given as a ``module:attr`` path is imported the first time it is needed, its
options are read from its keyword parameters when it declared none, and every sampler a
plugin's factory returns is tried on a small mask before use. So a misspelt or broken
plugin (no such module, no such attribute, a factory that raises or returns something
that is not a sampler) is one :class:`ConfigError` on ``mix`` that names the path and the
method, before any work starts.

The built-ins' factories are the small functions below: the registry finds them by path
like any plugin's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np
import torch

from robustmix.core import methods, plugins
from robustmix.core.config import MixConfig
from robustmix.core.errors import ConfigError
from robustmix.core.methods import Method
from robustmix.mixing.puzzlemix import PuzzleMix
from robustmix.mixing.samplers import (DataDependentSampler, MaskSampler, cutmix_mask,
                                       gmix_mask, hmix_mask, is_data_dependent, mixup_mask,
                                       stochastic_mask, vanilla_mask)

Sampler = MaskSampler | DataDependentSampler


# ---------------------------------------------------------------- the built-ins' factories

def vanilla() -> MaskSampler:
    return vanilla_mask


def mixup() -> MaskSampler:
    return mixup_mask


def cutmix() -> MaskSampler:
    return cutmix_mask


def stochastic(*, switch_prob: float) -> MaskSampler:
    return stochastic_mask(switch_prob)


def hmix(*, hmix_r: float) -> MaskSampler:
    return hmix_mask(hmix_r)


def gmix() -> MaskSampler:
    return gmix_mask


def puzzlemix(*, puzzle_beta: float, puzzle_gamma: float, puzzle_eta: float,
              puzzle_transport: bool) -> DataDependentSampler:
    return PuzzleMix(beta=puzzle_beta, gamma=puzzle_gamma, eta=puzzle_eta,
                     transport=puzzle_transport)


# ---------------------------------------------------------------- loading and building

def make_sampler(mix: str, /, **options: Any) -> MaskSampler | DataDependentSampler:
    """The mask sampler of an MSDA: a registered name or a factory's ``module:attr`` path.

    ``options`` are the method's own (``hmix_r`` for hmix); the others keep their defaults.
    Gives a :class:`DataDependentSampler` for methods whose masks depend on the images
    (``puzzlemix``), a :class:`MaskSampler` otherwise.
    """
    name, path = methods.split_spec(mix)
    method = load_method(name, path)
    methods.check_options(name, options)
    return _build(method, methods.full_options(name, options))


def sampler_of(config: MixConfig) -> MaskSampler | DataDependentSampler:
    """The sampler a run's :class:`MixConfig` describes (its method, factory and options)."""
    return _build(*_loaded(config))


def resolved(config: MixConfig) -> MixConfig:
    """``config`` with its method loaded, its options complete and checked, and its
    sampler built once: a broken plugin is refused here, before any work starts."""
    method, options = _loaded(config)
    _build(method, options)
    return dataclasses.replace(config, options=options)


def _loaded(config: MixConfig) -> tuple[Method, dict[str, Any]]:
    config.validate()
    method = load_method(config.mix, config.factory)
    methods.check_options(method.name, config.options)
    return method, methods.full_options(method.name, config.options)


def load_method(name: str, factory: str | None = None) -> Method:
    """The registered method, its factory imported and its options known."""
    method = methods.get(name, factory)
    if method.loaded:
        return method
    if isinstance(method.factory, str):
        module_name, attr = method.factory.split(":")
        try:
            module = plugins.import_module(module_name, here=not method.builtin)
            method = methods.get(name)   # the module may have registered itself on import
            if method.loaded:
                return method
            target = method.factory if callable(method.factory) else \
                plugins.attribute(module, attr)
        except plugins.PluginError as err:
            raise _broken(method, str(err)) from None
        if not callable(target):
            raise _broken(method, f"'{attr}' is a {type(target).__name__}, not a factory "
                                  "(a callable that returns a sampler)")
    else:
        target = method.factory
    options = method.options if method.options is not None else _keyword_defaults(target,
                                                                                  method)
    try:
        return methods.loaded(name, target, options, method.data_dependent)
    except ConfigError as err:
        raise _broken(method, err.problem) from None


def _broken(method: Method, problem: str) -> ConfigError:
    return ConfigError("mix", f"{method.path} (method '{method.name}'): {problem}")


_first_line = plugins.first_line


def _keyword_defaults(factory: Callable[..., Any], method: Method) -> dict[str, Any]:
    try:
        return methods.keyword_defaults(method.name, factory)
    except ConfigError as err:
        raise _broken(method, err.problem.split(": ", 1)[1]) from None


def _build(method: Method, options: Mapping[str, Any]) -> Sampler:
    """Call the factory; a plugin's sampler is tried on a small mask before it is used."""
    if method.builtin:
        return method.factory(**options)
    try:
        sampler = method.factory(**options)
    except ConfigError:
        raise   # the factory names its option, as the built-ins do
    except Exception as err:
        raise _broken(method, f"its factory raised {_first_line(err)}") from None
    _check_sampler(sampler, method)
    if is_data_dependent(sampler) != method.data_dependent:   # the sampler says which
        methods.loaded(method.name, method.factory, method.options, is_data_dependent(sampler))
    return sampler


def _check_sampler(sampler: Any, method: Method) -> None:
    """A callable; a mask sampler's mask for λ = (0.3, 0.7) on 4×5 pixels has the shape
    (2, 1, 4, 5) and values in [0, 1]."""
    what = ("not a sampler (a callable (lam, height, width, rng, device) -> mask "
            "(B, 1, H, W), or a data-dependent sampler)")
    if not callable(sampler):
        raise _broken(method, f"its factory returned a {type(sampler).__name__}, {what}")
    if is_data_dependent(sampler):
        if not hasattr(sampler, "needs_saliency"):
            raise _broken(method, "its data-dependent sampler lacks needs_saliency")
        return
    try:
        mask = sampler(torch.tensor([0.3, 0.7]), 4, 5, np.random.default_rng(0), "cpu")
    except Exception as err:
        raise _broken(method, f"its sampler failed on λ = (0.3, 0.7), 4×5 pixels: "
                              f"{_first_line(err)}") from None
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (2, 1, 4, 5):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise _broken(method, f"its sampler returned {shape} for λ of shape (2,) on 4×5 "
                              "pixels; a mask sampler returns (B, 1, H, W)")
    values = mask.float()
    if not bool(((values >= 0) & (values <= 1)).all()):
        raise _broken(method, "its sampler returned mask values outside [0, 1]")
