"""The MSDA record (robustmix.core.methods): a built-in's facts (options with defaults, help
and ranges, colour) on its one record, and a plugin's options declared the same way."""

from __future__ import annotations

import inspect
import math

import pytest

import robustmix
from robustmix.core import methods
from robustmix.core.errors import ConfigError
from robustmix.core.methods import Option
from robustmix.mixing.registry import load_method


@pytest.mark.parametrize("name", methods.MIX_NAMES)
def test_a_builtins_record_matches_its_factory_and_describes_each_option(name):
    method = load_method(name)
    parameters = inspect.signature(method.factory).parameters
    assert list(parameters) == list(method.options) == list(method.specs)
    for key, spec in method.specs.items():
        assert method.options[key] == spec.default and spec.help, key
    assert method.colour.startswith("#") and len(method.colour) == 7


@pytest.mark.parametrize("key, bad, message", [
    ("switch_prob", 1.5, r"^switch_prob must lie in \[0, 1\], got 1.5$"),
    ("hmix_r", -0.1, r"^hmix_r must lie in \[0, 1\], got -0.1$"),
    ("puzzle_beta", -1.0, r"^puzzle_beta must be a finite number >= 0, got -1.0$"),
    ("puzzle_gamma", math.inf, r"^puzzle_gamma must be a finite number >= 0, got inf$"),
    ("puzzle_eta", math.nan, r"^puzzle_eta must be a finite number >= 0, got nan$"),
])
def test_a_builtin_option_outside_its_records_range_is_refused(key, bad, message):
    owner, spec = methods.BUILTIN_OPTIONS[key]
    methods.check_options(owner, {key: spec.default})
    with pytest.raises(ConfigError, match=message):
        methods.check_options(owner, {key: bad})


def test_a_plugin_declares_its_options_help_and_range_as_the_builtins_do():
    method = robustmix.register_method(
        "ranged", lambda *, weight: None,
        options={"weight": Option(0.5, "the mask's value", low=0.0, high=1.0), "on": True})
    assert method.options == {"weight": 0.5, "on": True}
    assert method.specs["weight"].range_text() == "in [0, 1]"
    methods.check_options("ranged", {"weight": 1.0, "on": False})
    with pytest.raises(ConfigError, match=r"^weight must lie in \[0, 1\], got 2.0$"):
        methods.check_options("ranged", {"weight": 2.0})
    with pytest.raises(ConfigError, match="weight's range must be numbers"):
        robustmix.register_method("badrange", lambda *, weight: None,
                                  options={"weight": Option("x", low=0.0)})


def test_range_text_says_each_kind_of_bound():
    assert Option(1.0, low=0, high=2).range_text() == "in [0, 2]"
    assert Option(1.0, low=0.5).range_text() == "finite, >= 0.5"
    assert Option(1.0, high=3).range_text() == "finite, <= 3"
    assert Option(True).range_text() == ""
    with pytest.raises(ConfigError, match=r"^k must be a finite number <= 3, got 4$"):
        Option(1, high=3).check("k", 4)
