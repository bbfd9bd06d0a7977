"""One command-line grammar: runs chosen by one positional list, shared options, --out a
folder, a study's [attack] as the attack command's settings, and the old forms kept one
release (they work and say the new form on stderr)."""

import csv
import os
import shutil

import pytest

from robustmix.app import commands
from robustmix.app.cli import build_parser
from robustmix.app.presets import PRESETS
from robustmix.app.study_config import AttackPlan, StudyConfig, load_config, to_dict
from robustmix.attacks import PGDSettings
from robustmix.core import runs

from helpers import assert_one_line_error, run_cli

OLD_RUN = "robustmix: {} is now a positional RUN_DIR...; this form goes in the next release"


def _fake_run(path, finished=True):
    """A directory that holds a run (finished: with its weights file); enough for choosing
    runs, which reads no file's content."""
    path.mkdir(parents=True)
    (path / runs.CONFIG).write_text("{}")
    if finished:
        (path / runs.WEIGHTS).write_bytes(b"")
    return path


def _chosen(argv, capsys):
    """The runs ``robustmix ARGV`` would take, and what it said on stdout and stderr."""
    args = build_parser().parse_args(argv)
    chosen = commands._run_dirs(args, args.command)
    captured = capsys.readouterr()
    return chosen, captured.out, captured.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished digits run (1 epoch at 8×8) in a folder of runs."""
    out = tmp_path_factory.mktemp("trained") / "runs" / "run"
    code = commands.HANDLERS["train"](build_parser().parse_args(
        ["train", "--quiet", "--epochs", "1", "--image-size", "8", "--out", str(out)]))
    assert code == 0
    return out


def _rows(run):
    with (run / runs.ROBUSTNESS).open() as handle:
        return [{k: v for k, v in row.items() if k not in ("seconds", "run")}
                for row in csv.DictReader(handle)]


@pytest.mark.parametrize("command", ["attack", "evaluate", "report"])
def test_each_command_takes_run_dirs_and_folders_of_runs_as_one_positional_list(
        command, tmp_path, capsys):
    lone = _fake_run(tmp_path / "lone")
    study = tmp_path / "study"
    a, b = _fake_run(study / "runs" / "a"), _fake_run(study / "runs" / "b")
    _fake_run(study / "runs" / "c", finished=False)
    chosen, out, err = _chosen([command, str(lone), str(study)], capsys)
    assert chosen == [str(lone), str(a), str(b)]
    assert f"robustmix {command}: 2 finished runs under {study / 'runs'}/: a, b; skipped 1 " \
           "unfinished (c" in out
    assert err == ""


@pytest.mark.parametrize("argv", [["attack", "--run"], ["attack", "--runs"],
                                  ["evaluate", "--run"]])
def test_the_old_run_flags_still_choose_the_runs_and_say_the_new_form(argv, tmp_path, capsys):
    a, b = _fake_run(tmp_path / "a"), _fake_run(tmp_path / "b")
    chosen, _, err = _chosen([*argv, str(a), str(b)], capsys)
    assert chosen == [str(a), str(b)]
    assert err.splitlines() == [OLD_RUN.format(argv[1])]


@pytest.mark.parametrize("command", ["attack", "evaluate", "report"])
def test_no_run_named_means_every_finished_run_under_runs(command, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_run(tmp_path / "runs" / "b")
    _fake_run(tmp_path / "runs" / "a")
    _fake_run(tmp_path / "runs" / "late", finished=False)
    chosen, out, _ = _chosen([command], capsys)
    assert chosen == [os.path.join("runs", "a"), os.path.join("runs", "b")]
    assert out.startswith(f"robustmix {command}: 2 finished runs under runs/: a, b; skipped 1")


@pytest.mark.parametrize("command", ["attack", "evaluate"])
def test_an_unfinished_or_missing_run_is_refused_in_one_line(command, tmp_path, capsys):
    late = _fake_run(tmp_path / "late", finished=False)
    code, _, err = run_cli(capsys, command, late)
    assert_one_line_error(code, err, f"{late} holds no finished run", "--resume")
    code, _, err = run_cli(capsys, command, tmp_path / "nowhere")
    assert_one_line_error(code, err, "no such run directory")


def test_attack_by_the_new_and_the_old_form_writes_the_same_rows(trained, tmp_path, capsys):
    settings = ["--quiet", "--attacks", "fgsm,pgd", "--pgd-steps", "2", "--n-examples", "16",
                "--no-diagnostics", "--device", "cpu"]
    new, old = shutil.copytree(trained, tmp_path / "new"), shutil.copytree(trained,
                                                                          tmp_path / "old")
    code, _, err = run_cli(capsys, "attack", new, *settings, "--pgd-step-size", "0.01")
    assert code == 0 and "is now" not in err, err
    code, _, err = run_cli(capsys, "attack", *settings, "--pgd-step", "0.01", "--run", old)
    assert code == 0, err
    assert [line for line in err.splitlines() if "is now" in line] == [
        "robustmix: --pgd-step is now --pgd-step-size; this form goes in the next release",
        OLD_RUN.format("--run")]
    rows = _rows(new)
    assert rows == _rows(old) and [r["attack"] for r in rows] == ["fgsm", "pgd", "worst-case"]
    assert rows[1]["settings"].startswith("steps=2;step=0.01;")


def test_runs_lists_the_runs_of_each_folder_and_run_named(trained, tmp_path, capsys,
                                                          monkeypatch):
    other = shutil.copytree(trained, tmp_path / "other" / "runs" / "copy")
    code, out, err = run_cli(capsys, "runs", trained.parent, other)
    assert code == 0, err
    names = [line.split()[0] for line in out.splitlines()[1:3]]
    assert names == ["run", "copy"]
    monkeypatch.chdir(trained.parent.parent)   # ./runs/ holds the trained run
    code, out, _ = run_cli(capsys, "runs")
    assert code == 0 and out.splitlines()[1].split()[0] == "run"
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "runs", tmp_path / "empty")
    assert_one_line_error(code, err, f"no run under {tmp_path / 'empty'}/")
    code, _, err = run_cli(capsys, "runs", trained, tmp_path / "nowhere")
    assert_one_line_error(code, err, f"{tmp_path / 'nowhere'}: no such run directory")


def test_the_attack_commands_settings_are_a_studys_attack_section():
    plan = commands.attack_plan(build_parser().parse_args(["attack"]))
    assert plan == AttackPlan() and plan.pgd_steps == PGDSettings().steps
    assert plan.config() == AttackPlan().config()
    given = commands.attack_plan(build_parser().parse_args(
        ["attack", "--attacks", "fgsm,apgd,targets=3", "--pgd-steps", "7", "--n-examples", "9",
         "--no-diagnostics", "--pgd-step-size", "0.01"]))
    assert given == AttackPlan(attacks=("fgsm", "apgd"), options={"apgd": {"targets": 3}},
                               pgd_steps=7, n_examples=9, diagnostics=False,
                               pgd_step_size=0.01)


def test_each_attack_flags_help_states_the_sections_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = {a.dest: a.help for a in sub.choices["attack"]._actions if a.option_strings}
    plan = AttackPlan()
    stated = {"eps": plan.eps, "norm": plan.norm, "attacks": ",".join(plan.attacks),
              "pgd_steps": plan.pgd_steps, "restarts": plan.restarts,
              "batch_size": plan.batch_size, "seed": plan.seed}
    for dest, value in stated.items():
        assert helps[dest].endswith(f"(default: {value})"), dest
    assert plan.n_examples == 0 and helps["n_examples"].endswith("(default: all of it)")
    assert plan.diagnostics and helps["diagnostics"].endswith("default: on)")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_states_the_attack_settings_whose_defaults_were_the_studys_own(name):
    """The section's defaults are the attack command's (PGD-20, the whole test set); a
    study had PGD-10 and 1000 examples: each preset states its own, so none changed."""
    assert {"pgd_steps", "n_examples"} <= set(PRESETS[name]["attack"])


def test_the_default_study_keeps_pgd_10_and_writes_no_step_size():
    config = load_config(None, None)
    assert config.attack.pgd_steps == 10 and config.attack.n_examples == 160
    assert "pgd_step_size" not in to_dict(config)["attack"]   # its declaration's hash holds


def test_a_study_may_set_the_pgd_step_size(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[attack]\npgd_step_size = 0.01\n')
    config = load_config(None, str(path))
    assert config.attack.config().pgd.step_size == 0.01
    assert to_dict(config)["attack"]["pgd_step_size"] == 0.01


@pytest.mark.parametrize("toml, argv, device", [
    ('device = "cpu"\n', [], "cpu"),                    # auto, the default: the study's own
    ('device = "cpu"\n', ["--device", "auto"], "cpu"),
    ("", ["--device", "cpu"], "cpu"),
    ("", [], "auto"),
])
def test_study_device_auto_keeps_the_studys_own(toml, argv, device, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(toml)
    args = build_parser().parse_args(["study", "--config", str(path), "--out",
                                      str(tmp_path / "out"), *argv])
    config = commands._study_config(args)
    assert isinstance(config, StudyConfig) and config.device == device


@pytest.mark.parametrize("command", ["train", "attack", "evaluate", "study"])
def test_the_shared_options_have_one_default_each(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    defaults = {a.dest: a.default for a in sub.choices[command]._actions if a.option_strings}
    assert defaults["device"] == "auto" and defaults["threads"] is None
    assert defaults.get("quiet", False) is False and defaults.get("data_dir") is None


def test_masks_out_file_png_still_works_and_says_the_new_form(tmp_path, capsys):
    path = tmp_path / "g.png"
    code, _, err = run_cli(capsys, "masks", "--size", "8", "--out", path)
    assert code == 0 and path.read_bytes()[:4] == b"\x89PNG"
    assert err.splitlines() == ["robustmix: masks --out FILE.png is now --out FOLDER (writes "
                                "FOLDER/mask_gallery.png); this form goes in the next release"]


@pytest.mark.parametrize("argv, fragments", [
    (["attack", "--norm", "l3"], ["argument --norm: invalid choice: 'l3'"]),
    (["attack", "--pgd-step-size", "-1", "x"], ["--pgd-step-size must be > 0"]),
    (["report", "--open", "--out"], ["argument --out: expected one argument"]),
])
def test_a_bad_choice_exits_2_in_one_line(argv, fragments, capsys):
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *fragments)


def test_power_is_a_command(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    code, _, err = run_cli(capsys, "power", tmp_path, "--budget", "0")
    assert_one_line_error(code, err, "--budget", "expected an integer >= 1")
    code, _, err = run_cli(capsys, "power", tmp_path)
    assert_one_line_error(code, err, "holds no finished run")
