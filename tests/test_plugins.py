"""Bring your own MSDA: the method registry (robustmix.core.methods, robustmix.mixing.registry)
takes a user's factory by register_method, an entry point or a module:factory path, gives it
what a built-in gets, and refuses a broken one in one line."""

from __future__ import annotations

import itertools
import sys
import textwrap
import zlib
from importlib.metadata import EntryPoint

import numpy as np
import pytest
import torch

import robustmix
from robustmix.app import study
from robustmix.core import methods
from robustmix.core.config import MixConfig, TrainConfig
from robustmix.core.errors import ConfigError
from robustmix.mixing import Mixer, is_data_dependent, make_sampler, mixup_mask

from helpers import assert_one_line_error, run_cli

_count = itertools.count()

# a mask sampler with one option: M = w everywhere (Mixup's mask scaled by a constant)
CONSTANT = '''
import torch

def constant(*, weight: float = 0.25):
    def sample(lam, height, width, rng, device):
        return torch.full((lam.shape[0], 1, height, width), weight, device=device)
    return sample
'''


def plugin(tmp_path, monkeypatch, source: str) -> str:
    """A module holding ``source``, importable under a name no other test uses."""
    name = f"robustmix_test_plugin_{next(_count)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_registered_callable_gets_a_sampler_options_and_a_colour():
    calls = []

    def factory(*, weight: float = 0.5):
        calls.append(weight)
        return lambda lam, h, w, rng, device: torch.full((lam.shape[0], 1, h, w), weight)

    method = robustmix.register_method("const-test", factory, summary="a constant mask")
    assert methods.names()[:len(methods.MIX_NAMES)] == methods.MIX_NAMES
    assert methods.names()[-1] == "const-test"
    assert method.options == {"weight": 0.5}   # read from the keyword parameters
    mask = make_sampler("const-test", weight=0.75)(torch.tensor([0.2]), 3, 4,
                                                   np.random.default_rng(0), "cpu")
    assert torch.equal(mask, torch.full((1, 1, 3, 4), 0.75)) and calls[-1] == 0.75
    assert methods.get("const-test").options == {"weight": 0.5}
    assert MixConfig(mix="const-test").options == {"weight": 0.5}
    # no colour given: the palette's, fixed by the name (CRC-32), never by position
    expected = methods.PALETTE[zlib.crc32(b"const-test") % len(methods.PALETTE)]
    assert method.colour == methods.colour("const-test") == expected
    assert methods.colour("never-registered") == methods.palette_colour("never-registered")
    with pytest.raises(ConfigError, match="'size' is not an option of const-test"):
        MixConfig(mix="const-test", options={"size": 3}).validate()
    with pytest.raises(ConfigError, match="^weight must be a number, got 'x'"):
        make_sampler("const-test", weight="x")


@pytest.mark.parametrize("name, kwargs, fragment", [
    ("cutmix", {}, "already the name of a built-in method"),
    ("a/b", {}, "must be letters, digits"),
    ("", {}, "must be letters, digits"),
    ("ok", {"colour": "red"}, "colour must be '#rrggbb'"),
    ("ok", {"options": {"alpha": 1.0}}, "'alpha' cannot name an option"),
    ("ok", {"options": {"size": [1, 2]}}, "must be a bool, number, string or None"),
])
def test_register_method_refuses_what_it_cannot_keep_apart(name, kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        robustmix.register_method(name, lambda: mixup_mask, **kwargs)


def test_a_name_keeps_its_factory():
    def first():
        return mixup_mask

    def second():
        return mixup_mask

    robustmix.register_method("kept", first)
    robustmix.register_method("kept", first, colour="#123456")   # the same factory: updated
    assert methods.colour("kept") == "#123456"
    with pytest.raises(ConfigError, match="already the name of .*first"):
        robustmix.register_method("kept", second)


def test_an_options_table_is_checked_and_passed_to_the_factory():
    robustmix.register_method("typed", lambda *, k=2, on=True, label="x": mixup_mask,
                              options={"k": 2, "on": True, "label": "x"})
    assert MixConfig(mix="typed", options={"k": 5}).options == {"k": 5, "on": True,
                                                                "label": "x"}
    for bad, message in (({"k": 2.5}, "^k must be an integer"), ({"on": 1}, "^on must be true"),
                         ({"label": 3}, "^label must be a string")):
        with pytest.raises(ConfigError, match=message):
            MixConfig(mix="typed", options=bad).validate()


def test_a_path_names_the_method_after_its_factory_and_the_config_keeps_the_path(
        tmp_path, monkeypatch):
    module = plugin(tmp_path, monkeypatch, CONSTANT)
    spec = f"{module}:constant"
    assert methods.split_spec(spec) == ("constant", spec)
    assert methods.split_spec("cutmix") == ("cutmix", None)
    sampler = make_sampler(spec, weight=0.5)
    assert torch.equal(sampler(torch.tensor([0.9]), 2, 2, None, "cpu"), torch.full((1, 1, 2, 2), 0.5))
    config = TrainConfig(mix=MixConfig(mix="constant", factory=spec, options={"weight": 0.5}))
    saved = TrainConfig.from_dict(config.to_dict())
    assert saved == config and saved.to_dict()["mix"]["factory"] == spec
    assert config.default_out() == "runs/digits-smallcnn-constant-s0"
    mixer = Mixer(config.mix)
    mask, partner = mixer.draw(4, 3, 3, np.random.default_rng(0), "cpu")
    assert torch.equal(mask, torch.full((1, 1, 3, 3), 0.5)) and partner.tolist() == [3, 2, 1, 0]


def test_an_entry_point_registers_without_importing_until_a_sampler_is_needed(
        tmp_path, monkeypatch):
    module = plugin(tmp_path, monkeypatch, CONSTANT)
    points = [EntryPoint("constant", f"{module}:constant", methods.ENTRY_POINT_GROUP),
              EntryPoint("mixup", f"{module}:constant", methods.ENTRY_POINT_GROUP)]
    monkeypatch.setattr("importlib.metadata.entry_points",
                        lambda group: [p for p in points if p.group == group])
    monkeypatch.setattr(methods, "_entry_points_read", False)
    with pytest.warns(UserWarning, match="entry point mixup .* left out: .*built-in"):
        assert "constant" in methods.names()
    assert module not in sys.modules
    MixConfig(mix="constant").validate()
    assert MixConfig(mix="constant").factory == f"{module}:constant"   # the run names its code
    assert module not in sys.modules
    assert make_sampler("constant", weight=0.1)(torch.tensor([0.5]), 1, 1, None, "cpu") == 0.1
    assert module in sys.modules and methods.get("mixup").builtin


BROKEN = {
    "no module": ("robustmix_no_such_module:f", None,
                  "cannot import module 'robustmix_no_such_module' (no module named"),
    "no attribute": ("{module}:missing", CONSTANT,
                     "module '{module}' has no attribute 'missing'"),
    "import fails": ("{module}:f", "raise ImportError('needs a newer scipy')",
                     "cannot import module '{module}' (ImportError: needs a newer scipy)"),
    "factory raises": ("{module}:f", "def f():\n    raise RuntimeError('boom')",
                       "its factory raised RuntimeError: boom"),
    "not a sampler": ("{module}:f", "def f():\n    return 42",
                      "its factory returned a int, not a sampler"),
    "wrong shape": ("{module}:f", "import torch\ndef f():\n    return lambda l, h, w, r, d: "
                                  "torch.zeros(h, w)",
                    "its sampler returned (4, 5) for λ of shape (2,)"),
    "no default": ("{module}:f", "def f(size):\n    return None",
                   "its parameter 'size' has no default"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_plugin_is_one_line_naming_module_and_name_from_cli_and_study(
        case, capsys, tmp_path, monkeypatch):
    spec, source, fragment = BROKEN[case]
    module = plugin(tmp_path, monkeypatch, source) if source else ""
    spec, fragment = spec.format(module=module), fragment.format(module=module)
    name = spec.rsplit(":", 1)[1]
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "train", "--quiet", "--mix", spec, "--epochs", "1")
    line = assert_one_line_error(code, err, f"--mix {spec} (method '{name}'): ", fragment)
    assert line.startswith("robustmix train: error:") and not (tmp_path / "runs").exists()

    toml = tmp_path / "study.toml"
    toml.write_text(f'methods = ["vanilla", "{spec}"]\nout = "s"\n')
    code, _, err = run_cli(capsys, "study", "--config", toml)
    assert_one_line_error(code, err, str(toml), f"methods {spec} (method '{name}')", fragment)
    assert not (tmp_path / "s").exists()


def test_a_plugins_option_on_the_command_line_is_named_as_given(capsys, tmp_path,
                                                                monkeypatch):
    module = plugin(tmp_path, monkeypatch, CONSTANT + """
from robustmix.core.errors import ConfigError

def checked(*, weight: float = 0.25):
    if not 0 <= weight <= 1:
        raise ConfigError("weight", f"must lie in [0, 1], got {weight}")
    return constant(weight=weight)
""")
    monkeypatch.chdir(tmp_path)
    for option, line in (("weight=2", "--mix-option weight must lie in [0, 1], got 2.0"),
                         ("weight=x", "--mix-option weight must be a number, got 'x'"),
                         ("size=2", "--mix-option 'size' is not an option of checked "
                                    "(its options: weight)")):
        code, _, err = run_cli(capsys, "train", "--quiet", "--mix", f"{module}:checked",
                               "--mix-option", option)
        assert_one_line_error(code, err, line)
    assert not (tmp_path / "runs").exists()


def test_a_study_runs_a_plugin_with_its_options_and_prints_them_back(tmp_path, monkeypatch):
    module = plugin(tmp_path, monkeypatch, CONSTANT)
    path = tmp_path / "study.toml"
    path.write_text(f'methods = ["vanilla", "hmix", "{module}:constant"]\n'
                    "[train.options.hmix]\nhmix_r = 0.25\n[train.options.constant]\nweight = 0.75\n")
    config = study.load_config(None, str(path))
    assert config.options == {"hmix": {"hmix_r": 0.25}, "constant": {"weight": 0.75}}
    run = config.run_config("", f"{module}:constant", 0)
    assert (run.mix.mix, run.mix.factory, run.mix.options) == \
        ("constant", f"{module}:constant", {"weight": 0.75})
    assert config.run_config("", "hmix", 0).mix.options == {"hmix_r": 0.25}
    assert config.run_config("", "vanilla", 0).mix.options == {}
    steps = study.plan(config, progress=False)
    first = config.seeds[0]     # the preset's, which the file does not override
    assert {s.label for s in steps} >= {f"{m}-s{first}" for m in ("vanilla", "hmix",
                                                                  "constant")}
    printed = tmp_path / "printed.toml"
    printed.write_text(study.to_toml(config))
    assert "[train.options.constant]\nweight = 0.75" in printed.read_text()
    assert study.load_config(None, str(printed)) == config


@pytest.mark.parametrize("text, fragment", [
    ('[train.options.hmix]\nradius = 0.3', "train.options.hmix 'radius' is not an option"),
    ('[train.options.hmix]\nhmix_r = 2.0', "train.options.hmix.hmix_r must lie in [0, 1]"),
    ('[train.options.nosuch]\nx = 1', "train.options.nosuch must be a table of the options"),
    ('[train]\nhmix_r = 0.3', "hmix_r is an option of hmix: give it in [train.options.hmix]"),
    ('[train]\noptions = 3', "options must be a table of tables"),
    ('[train]\nfactory = "a:b"', "[train] cannot set factory"),
    ('methods = ["hmix", "x.y:hmix"]', "methods name hmix twice"),
])
def test_bad_options_in_a_study_are_one_line(capsys, tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text('methods = ["vanilla", "hmix"]\n' * ("methods" not in text) + text + "\n")
    code, _, err = run_cli(capsys, "study", "--config", path, "--out", tmp_path / "s")
    assert_one_line_error(code, err, fragment)


def test_q_draws_each_methods_masks_from_its_name_whoever_else_is_registered():
    from robustmix.evaluations.regularizer import draw_pairs, pair_energies, regularizer_table

    torch.manual_seed(0)
    layer, std = torch.nn.Conv2d(1, 2, 3, padding=1), torch.tensor([0.5])
    images = torch.randint(0, 256, (12, 1, 6, 6), dtype=torch.uint8)
    alone = regularizer_table(layer, std, images, draws=40, seed=3, masks=["cutmix"])
    robustmix.register_method("zz-first", lambda: mixup_mask)
    crowd = regularizer_table(layer, std, images, draws=40, seed=3)
    assert "zz-first" in crowd["q"] and "puzzlemix" not in crowd["q"]   # no model given
    assert crowd["q"]["cutmix"] == alone["q"]["cutmix"]
    rng = np.random.default_rng([3, 1, zlib.crc32(b"cutmix")])
    direct = pair_energies(layer, std, images, draw_pairs(12, 40, 3), make_sampler("cutmix"),
                           rng=rng)
    assert alone["q"]["cutmix"]["q"] == float(direct.mean())


def test_groups_and_plots_order_and_colour_a_plugin_like_a_builtin():
    from robustmix.evaluations.grouping import group_runs
    from robustmix.evaluations.plots import gallery_masks, style

    robustmix.register_method("aaa", lambda: mixup_mask, colour="#010203")
    trains = [(f"{m}-s0", TrainConfig(mix=MixConfig(mix=m)).to_dict())
              for m in ("aaa", "cutmix", "vanilla")]
    trains.append(("zzz-s0", {**trains[0][1], "mix": {"mix": "unregistered"}}))
    groups = group_runs(trains)
    assert [g.method for g in groups] == ["vanilla", "cutmix", "aaa", "unregistered"]
    assert style(groups[2])["color"] == "#010203"
    assert style(groups[3])["color"] == methods.palette_colour("unregistered")
    masks = gallery_masks(6, 0.5)
    assert list(masks) == [*methods.DATA_FREE_MIX_NAMES, "aaa"]
    assert torch.equal(masks["aaa"], masks["mixup"])   # Mixup's sampler, the same draws
    assert not is_data_dependent(make_sampler("aaa"))
