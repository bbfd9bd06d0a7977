"""The command line: every bad input is one line and exit code 2, and nothing is half-written."""

import argparse
import csv
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from robustmix.app import commands
from robustmix.app.cli import build_parser
from robustmix.core import runs
from robustmix.core import methods
from robustmix.core.config import MixConfig, TrainConfig

from helpers import assert_one_line_error, run_cli


@pytest.mark.parametrize("argv, fragments", [
    (["--mix", "blend"], ["--mix must be one of", "cutmix", "gmix", "got 'blend'"]),
    (["--mix", "cutmix", "--hmix-r", "0.3"], ["--hmix-r is an option of hmix, not of cutmix"]),
    (["--mix", "mypkg.masks:cutmix"], ["--mix mypkg.masks:cutmix: name 'cutmix' is already "
                                       "the name of a built-in method"]),
    (["--mix", "hmix", "--mix-option", "r=0.3"], ["--mix-option 'r' is not an option of hmix",
                                                 "hmix_r"]),
    (["--mix", "hmix", "--mix-option", "hmix_r"], ["--mix-option: expected KEY=VALUE"]),
    (["--mix", "hmix", "--mix-option", "hmix_r=big"], ["--mix-option hmix_r must be a number, got 'big'"]),
    (["--arch", "vgg16"], ["unknown arch 'vgg16'", "smallcnn", "wrnDEPTH-WIDTH"]),
    (["--dataset", "imagenet"], ["unknown dataset 'imagenet'", "digits", "cifar10"]),
    (["--mix", "mixup", "--alpha", "0"], ["--alpha must be > 0"]),
    (["--mix", "mixup", "--alpha", "-1"], ["--alpha must be > 0"]),
    (["--mix", "hmix", "--hmix-r", "1.5"], ["--hmix-r must lie in [0, 1]"]),
    (["--mix", "hmix", "--hmix-r", "-0.1"], ["--hmix-r must lie in [0, 1]"]),
    (["--mix", "cutmix", "--batch-size", "1"], ["--batch-size must be >= 2 when mixing"]),
    (["--crop-scale", "0.5"], ["expected LO,HI"]),
    (["--crop-scale", "0.9,0.2"], ["0 < LO <= HI <= 1"]),
    (["--milestones", "5,x"], ["expected comma-separated integers"]),
    (["--milestones", "20", "--epochs", "10"], ["--milestones must be increasing"]),
    (["--epochs", "0"], ["--epochs must be >= 1"]),
    (["--device", "tpu"], ["--device must be auto, cpu, cuda"]),
    (["--dataset", "cifar10"], ["cifar10 not found in", "cifar-10-batches-py", "--download"]),
])
def test_bad_training_input_is_one_line_and_exit_2(capsys, tmp_path, argv, fragments):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--quiet", "--out", str(out),
                           "--data-dir", str(tmp_path / "data"), *argv)
    assert_one_line_error(code, err, *fragments)
    assert not out.exists() or not any(out.iterdir()), "nothing may be written"


def test_corrupt_dataset_files_are_refused(capsys, tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"not a pickle")
    code, _, err = run_cli(capsys, "train", "--quiet", "--dataset", "cifar10", "--data-dir",
                           str(tmp_path / "data"), "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "cifar10")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_then_refuse_to_overwrite_then_resume_and_overwrite(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", "--quiet", "--epochs", "1", "--mix", "mixup",
                                "--out", str(out))
    assert code == 0, err
    summary = stdout.strip().splitlines()[-1]
    assert str(out) in summary and "test accuracy" in summary
    assert runs.is_complete(out)
    before = (out / runs.WEIGHTS).read_bytes()

    code, _, err = run_cli(capsys, "train", "--quiet", "--epochs", "1", "--out", str(out))
    assert_one_line_error(code, err, "already holds a run", "--resume", "--overwrite")
    assert (out / runs.WEIGHTS).read_bytes() == before

    code, stdout, _ = run_cli(capsys, "train", "--resume", str(out))
    assert code == 0 and "already complete" in stdout

    code, _, err = run_cli(capsys, "train", "--resume", str(out), "--epochs", "5")
    assert_one_line_error(code, err, "drop --epochs")

    code, _, err = run_cli(capsys, "train", "--quiet", "--epochs", "1", "--seed", "1",
                           "--out", str(out), "--overwrite")
    assert code == 0, err
    assert runs.read_json(out / runs.CONFIG)["train"]["seed"] == 1


def test_resume_of_a_directory_without_a_run(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path))
    assert_one_line_error(code, err, "holds no run to resume")


def test_masks_kernel_csv_has_offsets_and_the_mixup_value(capsys, tmp_path):
    path = tmp_path / "k.csv"
    code, _, err = run_cli(capsys, "masks", "--mix", "mixup", "--size", "8", "--kernel",
                           str(path), "--draws", "2000")
    assert code == 0, err
    rows = list(csv.DictReader(path.open()))
    assert [int(r["offset"]) for r in rows] == list(range(8))
    values = np.array([float(r["c"]) for r in rows])
    assert np.ptp(values) < 1e-9 and abs(values[0] - 1 / 3) < 0.03


@pytest.mark.slow
def test_masks_gallery_is_a_png_in_the_out_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, "masks", "--size", "24", "--out", tmp_path / "gallery")
    assert code == 0 and err == "", err
    path = tmp_path / "gallery" / "mask_gallery.png"   # the name the report gives it
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    import matplotlib.image

    image = matplotlib.image.imread(str(path))
    assert image.shape[0] > 200 and image.shape[1] > 600


@pytest.mark.parametrize("argv, fragment", [
    (["masks"], "nothing to do"),
    (["masks", "--kernel", "k.csv", "--alpha", "0"], "--alpha must be > 0"),
    (["masks", "--out", "g", "--lam", "2"], "--lam must lie in [0, 1]"),
    (["masks", "--kernel", "k.csv", "--mix", "nope"], "--mix must be one of"),
    (["masks", "--kernel", "k.csv", "--size", "0"], "expected an integer >= 1"),
])
def test_bad_masks_input_is_one_line_and_exit_2(capsys, tmp_path, argv, fragment):
    os.chdir(tmp_path)
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_installed_command_runs_as_a_module(tmp_path):
    result = subprocess.run([sys.executable, "-m", "robustmix", "masks", "--size", "4",
                             "--mix", "cutmix", "--draws", "10", "--kernel",
                             str(tmp_path / "k.csv")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    bad = subprocess.run([sys.executable, "-m", "robustmix", "train", "--mix", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def _options(command: str) -> dict:
    """dest -> default of every option of ``robustmix COMMAND``."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.default for a in sub.choices[command]._actions if a.option_strings}


def test_train_flags_are_the_config_fields_with_the_config_defaults():
    options = _options("train")
    fields = [(TrainConfig(), f) for f in dataclasses.fields(TrainConfig) if f.name != "mix"]
    fields += [(MixConfig(), f) for f in dataclasses.fields(MixConfig)]
    for config, field in fields:
        assert field.name in options, f"no flag for {type(config).__name__}.{field.name}"
        # --data-dir is a shared option: None, the run's own, which for a new run is the
        # config's default (below)
        if field.name != "data_dir":
            assert options[field.name] == getattr(config, field.name), field.name
    built = commands._train_config(build_parser().parse_args(["train"]))
    assert built.data_dir == TrainConfig().data_dir and built.device == TrainConfig().device
    assert commands._train_config(build_parser().parse_args(
        ["train", "--data-dir", "elsewhere"])).data_dir == "elsewhere"


# The built-ins' option flags as users type them today: generated from the registry, they
# must stay these (flag, method, value given, value in TrainConfig.mix.options).
TODAYS_FLAGS = [
    (["--switch-prob", "0.25"], "stochastic", {"switch_prob": 0.25}),
    (["--hmix-r", "0.3"], "hmix", {"hmix_r": 0.3}),
    (["--puzzle-beta", "0.7"], "puzzlemix", {"puzzle_beta": 0.7}),
    (["--puzzle-gamma", "0"], "puzzlemix", {"puzzle_gamma": 0.0}),
    (["--puzzle-eta", "2"], "puzzlemix", {"puzzle_eta": 2.0}),
    (["--no-puzzle-transport"], "puzzlemix", {"puzzle_transport": False}),
    (["--puzzle-transport"], "puzzlemix", {"puzzle_transport": True}),
]
DEFAULTS = {"stochastic": {"switch_prob": 0.5}, "hmix": {"hmix_r": 0.5},
            "puzzlemix": {"puzzle_beta": 1.2, "puzzle_gamma": 0.5, "puzzle_eta": 0.2,
                          "puzzle_transport": True}}


@pytest.mark.parametrize("flags, method, given", TODAYS_FLAGS)
def test_each_generated_option_flag_sets_its_methods_options_as_before(flags, method, given):
    from robustmix.app.commands import _train_config

    config = _train_config(build_parser().parse_args(["train", "--mix", method, *flags]))
    assert config.mix.options == {**DEFAULTS[method], **given}
    unset = _train_config(build_parser().parse_args(["train", "--mix", method]))
    assert unset.mix.options == DEFAULTS[method] == MixConfig(mix=method).options


def test_the_generated_option_flags_are_todays_with_range_and_default_in_their_help():
    """--hmix-r etc. are generated from the registry: unset (None), the registry's default
    holds, and the help says the default and the range."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions = {a.dest: a for a in sub.choices["train"]._actions if a.option_strings}
    assert set(methods.BUILTIN_OPTIONS) == {key for options in DEFAULTS.values()
                                            for key in options}
    for name, (method, spec) in methods.BUILTIN_OPTIONS.items():
        assert actions[name].option_strings[0] == "--" + name.replace("_", "-")
        assert actions[name].default is None, name
        assert spec.default == DEFAULTS[method][name]
        assert actions[name].help.startswith(f"{method}: {spec.help}"), name
        assert actions[name].help.endswith(f"(default: {spec.default})"), name
    assert ", in [0, 1] (default: 0.5)" in actions["hmix_r"].help
    assert ", finite, >= 0 (default: 1.2)" in actions["puzzle_beta"].help
    assert set(_options("masks")) >= {"switch_prob", "hmix_r"}
    assert not set(_options("masks")) & {"puzzle_beta", "puzzle_transport"}   # data-free only


@pytest.mark.slow
def test_a_builtin_option_flag_and_mix_option_give_the_same_config(capsys, tmp_path):
    configs = []
    for flags in (["--hmix-r", "0.25"], ["--mix-option", "hmix_r=0.25"]):
        out = tmp_path / flags[0].strip("-")
        code, _, err = run_cli(capsys, "train", "--quiet", "--epochs", "1", "--mix", "hmix",
                               "--image-size", "8", *flags, "--out", str(out))
        assert code == 0, err
        configs.append(runs.read_json(out / runs.CONFIG)["train"]["mix"])
    assert configs[0] == configs[1]
    assert configs[0]["options"] == {"hmix_r": 0.25} and configs[0]["factory"] is None


def test_masks_flags_default_to_the_configs():
    masks = _options("masks")
    assert masks["alpha"] == MixConfig().alpha
    assert masks["hmix_r"] is None and masks["switch_prob"] is None   # the registry's


def test_the_shared_parser_carries_nothing_from_one_command_to_the_next():
    """``main`` parses with one parser per process (cli._parser): a command parsed after
    another gets exactly what a new parser gives it, whatever the first one set."""
    from robustmix.app import cli

    first = cli._parser().parse_args(["train", "--mix", "hmix", "--mix-option", "hmix_r=0.3",
                                      "--hmix-r", "0.2", "--epochs", "3"])
    assert first.options == {"hmix_r": "0.3"}
    with pytest.raises(TypeError):
        cli._parser().parse_args(["train"]).options["hmix_r"] = "0.1"   # a default is read-only
    for argv in (["train"], ["train", "--mix", "hmix"], ["attack", "run"]):
        again, new = cli._parser().parse_args(argv), build_parser().parse_args(argv)
        assert {k: v for k, v in vars(again).items() if k not in ("handler", "parser")} == \
            {k: v for k, v in vars(new).items() if k not in ("handler", "parser")}, argv
