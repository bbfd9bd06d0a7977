"""Bring your own MSDA, attack, architecture or data set: the one plug-in resolver
(robustmix.core.plugins) finds each kind by name, by entry point or by a module:attr path;
the method registry (robustmix.core.methods, robustmix.mixing.registry) gives a user's MSDA
what a built-in gets; the examples (examples/tiny_arch.py, examples/npy_folder.py) train;
and a broken plug-in of any kind is refused in one line."""

from __future__ import annotations

import itertools
import sys
import textwrap
import zlib
from importlib.metadata import EntryPoint
from pathlib import Path

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
    # an MSDA's own option reaches its sampler alone: HMix's r, the others' masks unchanged
    given = gallery_masks(6, 0.5, options={"hmix": {"hmix_r": 0.2}})
    assert torch.equal(given["hmix"], make_sampler("hmix", hmix_r=0.2)(
        torch.tensor([0.5]), 6, 6, np.random.default_rng(0), "cpu"))
    assert not torch.equal(given["hmix"], masks["hmix"])
    assert all(torch.equal(given[m], masks[m]) for m in masks if m != "hmix")


# ------------------------------------------------------------------ the four kinds on one
# resolver (robustmix.core.plugins): architecture, data set and attack as the MSDA above

ARCH = '''
from torch import nn

def net(*, num_classes, in_channels):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, num_classes))

def raises(*, num_classes, in_channels):
    raise RuntimeError("boom")

def no_module(*, num_classes, in_channels):
    return 42

def no_conv(*, num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

def positional(size):
    return None

NOT_CALLABLE = 3
'''

DATA = '''
import torch
from robustmix.core.errors import UsageError
from robustmix.data import TensorSource

def data(*, data_dir, image_size, device):
    side = image_size or 8
    x = torch.arange(10 * side * side, dtype=torch.int64).remainder(251).to(torch.uint8)
    y = torch.arange(10) % 2
    x = x.view(10, 1, side, side)
    return TensorSource("two", x[:8], y[:8], x[8:], y[8:], num_classes=2, device=device)

def fixed(*, data_dir, image_size, device):
    return data(data_dir=data_dir, image_size=None, device=device)

def refuses(*, data_dir, image_size, device):
    raise UsageError(f"{data_dir}/labels.txt is missing; accepted: a folder with labels.txt")

def raises(*, data_dir, image_size, device):
    raise RuntimeError("boom")

def no_source(*, data_dir, image_size, device):
    return 42

def positional(size):
    return None

NOT_CALLABLE = 3
'''

ATTACK = '''
def perturb(model, x, y, eps, norm, settings, draws):
    return x

def positional(size):
    return None

NOT_CALLABLE = 3
'''


@pytest.fixture
def kinds_as_they_were(monkeypatch):
    """The architecture, data-set and attack registries as before the test."""
    from robustmix.attacks import registry
    from robustmix.data import loading
    import robustmix.models as models

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(loading, "_PLUGINS", {})
    monkeypatch.setattr(models, "_PLUGINS", {})


def entry_points(monkeypatch, *points):
    monkeypatch.setattr("importlib.metadata.entry_points",
                        lambda group: [p for p in points if p.group == group])


def test_an_architecture_by_name_path_and_entry_point(tmp_path, monkeypatch,
                                                      kinds_as_they_were):
    from robustmix.models import build_model, check_arch

    module = plugin(tmp_path, monkeypatch, ARCH)
    entry_points(monkeypatch, EntryPoint("mine", f"{module}:net", "robustmix.architectures"))
    stats = {"num_classes": 3, "in_channels": 2, "mean": [0.5, 0.5], "std": [0.2, 0.2]}
    assert check_arch("SmallCNN") == "smallcnn"
    for text in (f"{module}:net", "mine"):
        assert check_arch(f" {text} ") == text   # its text is its canonical name
        model = build_model(text, **stats)
        assert model.arch == text and model.config["arch"] == text
        assert model.net[0].in_channels == 2 and model.first_layer is model.net[0]
        assert model(torch.rand(5, 2, 9, 9)).shape == (5, 3)


def test_a_data_set_by_name_path_and_entry_point(tmp_path, monkeypatch, kinds_as_they_were):
    from robustmix.data import load_dataset

    module = plugin(tmp_path, monkeypatch, DATA)
    entry_points(monkeypatch, EntryPoint("two", f"{module}:data", "robustmix.datasets"))
    for text in (f"{module}:data", "two"):
        data = load_dataset(text, image_size=12, holdout=2)
        assert (data.num_classes, data.channels, data.height, data.n_train) == (2, 1, 12, 6)
        assert data.tensors("holdout")[0].shape == (2, 1, 12, 12)
    with pytest.raises(ConfigError, match=f"^dataset {module}:fixed: its factory returned "
                                          "8x8 images, not the 12x12 asked for"):
        load_dataset(f"{module}:fixed", image_size=12)


def test_an_attack_by_name_path_and_entry_point(tmp_path, monkeypatch, kinds_as_they_were):
    from robustmix.attacks import registry

    module = plugin(tmp_path, monkeypatch, ATTACK)
    entry_points(monkeypatch, EntryPoint("same", f"{module}:perturb", "robustmix.attacks"))
    assert registry.get("fgsm").kind == "single-step"
    for text in (f"{module}:perturb", "same"):
        attack = registry.get(text)
        assert attack.name == text and attack.kind == "iterative"
        x = torch.rand(2, 1, 4, 4)
        assert attack.perturb(None, x, None, 0.1, "linf", {}, None) is x
    assert "same" in registry.registered()


KIND_ERRORS = {   # kind -> (its flag, the module's source, its entry-point group)
    "architecture": ("--arch", ARCH, "robustmix.architectures"),
    "data set": ("--dataset", DATA, "robustmix.datasets"),
}
BROKEN_KINDS = [
    ("nosuch_robustmix_module:f", "cannot import module 'nosuch_robustmix_module' (no module "
                                  "named 'nosuch_robustmix_module')"),
    ("{module}:missing", "module '{module}' has no attribute 'missing'"),
    ("{module}:NOT_CALLABLE", "is a int, not a factory"),
    ("{module}:positional", "its factory must take the keywords"),
    ("{module}:raises", "its factory raised RuntimeError: boom"),
    ("{module}:no_module", "its factory returned a int, not a"),
    ("nosuch", "has unknown"),
]


@pytest.mark.parametrize("kind", list(KIND_ERRORS))
@pytest.mark.parametrize("spec, fragment", BROKEN_KINDS)
def test_a_broken_architecture_or_data_set_is_one_line_from_the_cli(
        kind, spec, fragment, capsys, tmp_path, monkeypatch, kinds_as_they_were):
    flag, source, group = KIND_ERRORS[kind]
    module = plugin(tmp_path, monkeypatch, source)
    spec, fragment = spec.format(module=module), fragment.format(module=module)
    if kind == "data set" and spec.endswith(":no_module"):
        spec = spec.replace("no_module", "no_source")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "train", "--quiet", flag, spec, "--epochs", "1")
    start = f"{flag} has unknown {flag[2:]} 'nosuch'; valid: " if spec == "nosuch" else \
        f"{flag} {spec}: "
    line = assert_one_line_error(code, err, f"robustmix train: error: {start}", fragment)
    if spec == "nosuch":   # what is accepted
        assert line.endswith(f"an installed plug-in's entry point in {group}, or "
                             "package.module:factory")
    assert not (tmp_path / "runs").exists()


def test_an_architecture_without_a_conv_and_a_data_sets_own_refusal_are_one_line(
        capsys, tmp_path, monkeypatch, kinds_as_they_were):
    arch, data = plugin(tmp_path, monkeypatch, ARCH), plugin(tmp_path, monkeypatch, DATA)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "train", "--quiet", "--arch", f"{arch}:no_conv")
    assert_one_line_error(code, err, f"--arch {arch}:no_conv: its network has no "
                                     "torch.nn.Conv2d")
    code, _, err = run_cli(capsys, "train", "--quiet", "--dataset", f"{data}:refuses",
                           "--data-dir", "here")
    assert_one_line_error(code, err, "robustmix train: error: here/labels.txt is missing; "
                                     "accepted: a folder with labels.txt")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("spec, fragment", [
    ("nosuch_robustmix_module:f", "cannot import module 'nosuch_robustmix_module'"),
    ("{module}:missing", "module '{module}' has no attribute 'missing'"),
    ("{module}:NOT_CALLABLE", "is a int, not a perturb function or a "
                              "robustmix.attacks.Attack"),
    ("{module}:positional", "its perturb function must take (model, x, y, eps, norm, "
                            "settings, draws)"),
    ("nosuch", "has unknown attack 'nosuch'; valid: fgsm, "),
])
def test_a_broken_attack_is_one_line_from_a_study(spec, fragment, capsys, tmp_path,
                                                  monkeypatch, kinds_as_they_were):
    module = plugin(tmp_path, monkeypatch, ATTACK)
    spec, fragment = spec.format(module=module), fragment.format(module=module)
    toml = tmp_path / "study.toml"
    toml.write_text(f'[attack]\nattacks = ["fgsm", "{spec}"]\n')
    code, _, err = run_cli(capsys, "study", "--config", toml, "--out", tmp_path / "s")
    start = "attack.attacks " + ("" if spec == "nosuch" else f"{spec}: ")
    assert_one_line_error(code, err, str(toml), start, fragment)
    assert not (tmp_path / "s").exists()


def test_an_entry_point_that_cannot_load_names_itself(tmp_path, monkeypatch,
                                                      kinds_as_they_were):
    from robustmix.attacks import registry
    from robustmix.models import check_arch

    entry_points(monkeypatch, EntryPoint("gone", "nosuch_robustmix_module:f",
                                         "robustmix.architectures"),
                 EntryPoint("gone", "nosuch_robustmix_module:f", "robustmix.attacks"))
    for call, field, group in ((check_arch, "arch", "robustmix.architectures"),
                               (registry.get, "attacks", "robustmix.attacks")):
        with pytest.raises(ConfigError) as info:
            call("gone")
        assert str(info.value) == (
            f"{field} gone (entry point nosuch_robustmix_module:f of {group}): cannot import "
            "module 'nosuch_robustmix_module' (no module named 'nosuch_robustmix_module')")


ROOT = Path(__file__).resolve().parent.parent   # examples/ is not installed: found from here


@pytest.fixture
def examples_importable():
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))


def write_npy_folder(root, *, side=8, per_class=6):
    """A .npy folder (examples/npy_folder.py) of 3 classes: class k's images near 100 k."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 2)):
        for k in range(3):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 40, size=(side, side), dtype=np.uint8) + 100 * k
                np.save(folder / f"{i}.npy", image.astype(np.uint8))


def test_train_one_epoch_on_the_example_npy_folder_with_the_example_architecture(
        capsys, tmp_path, monkeypatch, kinds_as_they_were, examples_importable):
    from robustmix import load_model
    from robustmix.core import runs

    write_npy_folder(tmp_path / "npy")
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--quiet", "--arch", "examples.tiny_arch:tiny",
                           "--dataset", "examples.npy_folder:npy_folder", "--data-dir",
                           tmp_path / "npy", "--epochs", "1", "--batch-size", "6",
                           "--device", "cpu", "--out", out)
    assert code == 0, err
    config = runs.read_config(out)
    assert config["train"]["arch"] == config["model"]["arch"] == "examples.tiny_arch:tiny"
    assert config["train"]["dataset"] == "examples.npy_folder:npy_folder"
    assert (config["dataset"]["num_classes"], config["dataset"]["n_train"],
            config["dataset"]["n_test"]) == (3, 18, 6)
    model = load_model(out)   # rebuilt from the recorded path, the weights read as tensors
    x = torch.rand(2, 1, 8, 8)
    assert model(x).shape == (2, 3)
    code, _, err = run_cli(capsys, "import", "--weights", out / runs.WEIGHTS, "--arch",
                           "examples.tiny_arch:tiny", "--dataset",
                           "examples.npy_folder:npy_folder", "--data-dir", tmp_path / "npy",
                           "--out", tmp_path / "imported")
    assert code == 0, err
    assert torch.equal(load_model(tmp_path / "imported")(x), model(x))


@pytest.mark.parametrize("layout, fragment", [
    ({"train/a/0.npy": np.zeros((4, 4), np.uint8)}, "holds 1 class folder(s)"),
    ({"train/a/0.npy": np.zeros((4, 4), np.uint8), "train/b/0.npy": np.zeros((4, 4),
                                                                              np.uint8)},
     "test is not a folder"),
    ({"train/a/0.npy": np.zeros((4, 4), np.float32), "train/b/0.npy": np.zeros((4, 4))},
     "holds a float32 array of shape (4, 4, 1); accepted: uint8"),
    ({"train/a/0.npy": np.zeros((4, 4), np.uint8), "train/b/0.npy": np.zeros((5, 4),
                                                                              np.uint8)},
     "is (5, 4, 1), the images before it (4, 4, 1)"),
    ({"train/a/0.npy": np.zeros((4, 4), np.uint8), "train/b/0.npy": np.zeros((4, 4),
                                                                              np.uint8),
      "test/c/0.npy": np.zeros((4, 4), np.uint8)}, "class folder 'c' is not among"),
])
def test_the_example_npy_folder_refuses_what_it_cannot_read_in_one_line(
        layout, fragment, tmp_path, examples_importable):
    from examples.npy_folder import npy_folder
    from robustmix.core.errors import UsageError

    for name, array in layout.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / name, array)
    with pytest.raises(UsageError) as info:
        npy_folder(data_dir=str(tmp_path), image_size=None, device="cpu")
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_the_example_npy_folder_resizes_and_keeps_its_classes(tmp_path, examples_importable):
    from examples.npy_folder import npy_folder

    write_npy_folder(tmp_path, side=6, per_class=2)
    data = npy_folder(data_dir=str(tmp_path), image_size=12, device="cpu")
    images, labels = data.tensors("train")
    assert images.shape == (6, 1, 12, 12) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert 200 <= int(images[-1].float().mean()) <= 240   # class 2's images, resized


def test_a_study_takes_an_architecture_and_a_data_set_by_path(
        capsys, tmp_path, monkeypatch, kinds_as_they_were, examples_importable):
    write_npy_folder(tmp_path / "npy")
    toml = tmp_path / "study.toml"
    train = ('[train]\narch = "examples.tiny_arch:{}"\n'
             'dataset = "examples.npy_folder:npy_folder"\n'
             f'data_dir = "{tmp_path / "npy"}"\nepochs = 1\nbatch_size = 6\n')
    toml.write_text('methods = ["vanilla", "mixup"]\n' + train.format("tiny"))
    code, out, err = run_cli(capsys, "study", "--config", toml, "--out", tmp_path / "s",
                             "--dry-run")
    assert code == 0 and "data ready" in out, err
    toml.write_text('methods = ["vanilla", "mixup"]\n' + train.format("nosuch"))
    code, _, err = run_cli(capsys, "study", "--config", toml, "--out", tmp_path / "s",
                           "--device", "cpu")
    assert_one_line_error(code, err, "arch examples.tiny_arch:nosuch: module "
                                     "'examples.tiny_arch' has no attribute 'nosuch'")
    assert not (tmp_path / "s").exists()
