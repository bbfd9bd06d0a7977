"""What a study declares before its data: seeds per method, the [verdicts] table, the
study.toml written before the first run trains (and refused when changed later), and the
report that finds it."""

import dataclasses

import pytest

from robustmix.app import study
from robustmix.app.commands import _study_declaration
from robustmix.app.study_config import load_config
from robustmix.core.errors import ConfigError, UsageError
from robustmix.evaluations.declaration import Declaration

from helpers import run_cli


def test_the_digits_preset_declares_its_seeds_and_verdicts():
    config = load_config("digits", None)
    vanilla, msda = config.seeds_of("vanilla"), config.seeds_of("cutmix")
    assert len(vanilla) > len(msda) and set(msda) < set(vanilla), "more vanilla runs"
    assert all(config.seeds_of(m) == msda for m in config.methods[1:])
    labels = [s.label for s in study.plan(config) if s.kind == "train"]
    assert len(labels) == len(vanilla) + len(msda) * (len(config.methods) - 1)
    assert f"vanilla-s{vanilla[-1]}" in labels and f"cutmix-s{vanilla[-1]}" not in labels
    declared = config.declaration("here")
    # the primary grid is the study's attack grid, read from the preset, not written twice
    assert declared.primary_eps == config.attack.eps and declared.source == "here"
    assert config.train.holdout == 200


def test_seeds_on_the_command_line_apply_to_every_method():
    config = load_config("digits", None).with_overrides(seeds=(0, 1))
    assert config.seeds_of("vanilla") == config.seeds_of("hmix") == (0, 1)


@pytest.mark.parametrize("text, fragment", [
    ('[verdicts]\nlevel = 0.7\n', "verdicts.level must lie in (0, 0.5)"),
    ('[verdicts]\nprimary_eps = "-1/255"\n', "verdicts.primary_eps"),
    ('[verdicts]\ngap_margin_acc = 0\n', "gap_margin_acc must be a finite number > 0"),
    ('[verdicts]\nsurprise = 1\n', "surprise"),
    ('[seeds_by_method]\nvanilla = []\n', "seeds_by_method"),
    ('[seeds_by_method]\nnotamethod = [1]\n', "seeds_by_method"),
])
def test_bad_declarations_are_one_line_and_exit_2(capsys, tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code, _, err = run_cli(capsys, "study", "--config", str(path), "--dry-run")
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


def test_the_declaration_is_written_once_and_a_changed_one_refused(tmp_path):
    config = dataclasses.replace(load_config("digits", None), out=str(tmp_path / "s"))
    study.declare(config)
    path = tmp_path / "s" / study.STUDY_FILE
    assert load_config(None, str(path)) == config
    study.declare(config)                                  # the same again: nothing to do
    later = dataclasses.replace(config, verdicts=dataclasses.replace(
        config.verdicts, gap_margin_acc=0.02))
    with pytest.raises(UsageError, match="verdicts.gap_margin_acc = 0.005 there, 0.02 here"):
        study.declare(later)
    # the training recipe and the attack budget are frozen with it
    with pytest.raises(UsageError, match="attack.n_examples"):
        study.declare(dataclasses.replace(config, attack=dataclasses.replace(
            config.attack, n_examples=10)))


def test_the_report_finds_the_declaration_of_a_studys_runs(tmp_path):
    config = dataclasses.replace(load_config("digits", None), out=str(tmp_path / "s"))
    study.declare(config)
    runs_dir = tmp_path / "s" / "runs"
    inside = [str(runs_dir / "vanilla-s0"), str(runs_dir / "cutmix-s0")]
    found = _study_declaration(inside)
    assert found == config.declaration(str(tmp_path / "s" / study.STUDY_FILE))
    assert found.declared and [t for _, t in found.grid()] == config.attack.eps.split(",")
    assert _study_declaration(inside + [str(tmp_path / "elsewhere" / "run")]) is None
    assert _study_declaration([str(tmp_path / "loose" / "run")]) is None


def test_a_declaration_names_a_bad_field():
    with pytest.raises(ConfigError) as caught:
        Declaration(norm="l1").validate()
    assert caught.value.field == "norm"
