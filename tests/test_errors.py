"""Errors fit their caller: the library names fields, only the command line names flags."""

from __future__ import annotations

import pytest

from robustmix.attacks import AttackConfig, PGDSettings
from helpers import run_cli
from robustmix.core.config import MixConfig, TrainConfig
from robustmix.core.errors import ConfigError, UsageError


@pytest.mark.parametrize("config, field", [
    (TrainConfig(lr=-1.0), "lr"),
    (TrainConfig(batch_size=0), "batch_size"),
    (TrainConfig(mix=MixConfig(mix="hmix", options={"hmix_r": 2.0})), "hmix_r"),
    (AttackConfig(pgd=PGDSettings(steps=0)), "pgd.steps"),
    (AttackConfig(pgd=PGDSettings(step_size=-1.0)), "pgd.step_size"),
])
def test_library_errors_name_the_field_and_are_value_errors(config, field):
    with pytest.raises(ConfigError) as caught:
        config.validate()
    error = caught.value
    assert error.field == field and str(error).startswith(f"{field} ")
    assert isinstance(error, ValueError) and isinstance(error, UsageError)
    assert "--" not in str(error)


@pytest.mark.parametrize("argv, line", [
    (["train", "--mix", "mixup", "--alpha", "0"], "--alpha must be > 0"),
    (["train", "--lr", "-1"], "--lr must be a finite number > 0"),
    (["train", "--mix", "hmix", "--hmix-r", "2"], "--hmix-r must lie in [0, 1]"),
    (["attack", "x", "--pgd-step-size", "-1"], "--pgd-step-size must be > 0"),
])
def test_the_command_line_names_the_flag(capsys, argv, line):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"robustmix {argv[0]}: error: {line}"), err


def test_a_setting_read_from_a_file_keeps_its_field_name_and_names_the_file(capsys, tmp_path):
    path = tmp_path / "study.toml"
    path.write_text("[train]\nalpha = 0.0\n")
    code, _, err = run_cli(capsys, "study", "--config", path, "--out", tmp_path / "s")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(path) in err and "alpha must be > 0" in err and "--alpha" not in err
