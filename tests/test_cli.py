"""The command line: every bad input is one line and exit code 2, and nothing is half-written."""

import argparse
import csv
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from robustmix.attacks import AttackConfig, PGDSettings
from robustmix.app.cli import build_parser
from robustmix.core import runs
from robustmix.core.config import LEGACY_OPTIONS, MixConfig, TrainConfig
from robustmix.core.methods import BUILTIN_OPTIONS

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
def test_masks_gallery_is_a_png(capsys, tmp_path):
    path = tmp_path / "masks.png"
    code, _, err = run_cli(capsys, "masks", "--size", "24", "--out", str(path))
    assert code == 0, err
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    import matplotlib.image

    image = matplotlib.image.imread(str(path))
    assert image.shape[0] > 200 and image.shape[1] > 600


@pytest.mark.parametrize("argv, fragment", [
    (["masks"], "nothing to do"),
    (["masks", "--kernel", "k.csv", "--alpha", "0"], "--alpha must be > 0"),
    (["masks", "--out", "g.png", "--lam", "2"], "--lam must lie in [0, 1]"),
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
        assert options[field.name] == getattr(config, field.name), field.name


def test_each_builtin_option_has_a_flag_whose_default_is_the_registrys():
    """--hmix-r etc. set the method's options; unset (None), the registry's default holds,
    and the help says which it is."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions = {a.dest: a for a in sub.choices["train"]._actions if a.option_strings}
    for name, default in BUILTIN_OPTIONS.items():
        assert actions[name].default is None, name
        assert f"(default: {default})" in actions[name].help, name
    assert set(LEGACY_OPTIONS) == set(BUILTIN_OPTIONS)


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


def test_attack_and_masks_flags_default_to_the_configs():
    attack, pgd, masks = _options("attack"), PGDSettings(), _options("masks")
    config = AttackConfig()
    assert attack["attacks"] == ",".join(config.attacks)
    assert attack["eps"] == ",".join(e.text for e in config.eps)
    assert (attack["norm"], attack["batch_size"], attack["seed"]) == \
        (config.norm, config.batch_size, config.seed)
    assert (attack["pgd_steps"], attack["pgd_step"], attack["restarts"]) == \
        (pgd.steps, pgd.step_size, pgd.restarts)
    assert masks["alpha"] == MixConfig().alpha
    assert masks["hmix_r"] is None and masks["switch_prob"] is None   # the registry's
