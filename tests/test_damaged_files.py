"""Damaged or code-carrying run files: `train --resume`, `attack`, `evaluate` and `report`
check every file they read and refuse a damaged one in one line that names it, changing
nothing; no command runs code from a weights or checkpoint file."""

from __future__ import annotations

import pytest
import torch

import robustmix
from robustmix.attacks.table import read_rows
from robustmix.core.runs import ROBUSTNESS
from helpers import RunsCode, assert_one_line_error, run_cli
from robustmix.core import runs
from robustmix.core.errors import UsageError

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def replace_in(path, old, new, count=1):
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, count))


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: replace_in(d / runs.CONFIG, '"epochs": 2', '"epochs": "2"'),
     'malformed training settings: epochs must be an integer, got "2"'),
    (lambda d: replace_in(d / runs.CONFIG, '"epochs": 2', '"epochs": 2.5'),
     "epochs must be an integer, got 2.5"),
    (lambda d: replace_in(d / runs.CONFIG, '"seed": 0', '"seed": "0"'),
     "seed must be an integer"),
    (lambda d: replace_in(d / runs.CONFIG, '"train": {', '"train": {"bogus": 1, '),
     "unknown training settings bogus"),
    (lambda d: replace_in(d / runs.CONFIG, '"train": {', '"extra": 1, "train": {'),
     "unknown keys 'extra'"),
    (lambda d: (d / runs.CONFIG).write_text("[]"), "holds a JSON list"),
    (lambda d: (d / runs.CONFIG).write_text('{"train": '), "is not valid JSON"),
    (lambda d: replace_in(d / runs.METRICS, "\n2,", "\nX,"),
     "metrics.csv, line 3: epoch is 'X', not an integer"),
    (lambda d: replace_in(d / runs.METRICS, "test_acc,", "test_accuracy,"),
     "lacks the column 'test_acc'"),
    (lambda d: (d / runs.METRICS).write_text(
        (d / runs.METRICS).read_text().splitlines()[0] + "\n"),
     "holds 0 epochs, but checkpoint.pt was saved after epoch 2"),
    (lambda d: (d / runs.METRICS).unlink(), "metrics.csv not found"),
    (lambda d: (d / runs.CHECKPOINT).write_bytes((d / runs.CHECKPOINT).read_bytes()[:5000]),
     "not a readable robustmix checkpoint"),
    (lambda d: (d / runs.CHECKPOINT).write_bytes(b"\x00" * 100),
     "not a readable robustmix checkpoint"),
    (lambda d: runs.save_checkpoint(d / runs.CHECKPOINT, {
        **runs.load_checkpoint(d / runs.CHECKPOINT), "model": {"w": torch.zeros(1)}}),
     "checkpoint.pt does not fit this run"),
    (lambda d: runs.save_checkpoint(d / runs.CHECKPOINT, {
        **runs.load_checkpoint(d / runs.CHECKPOINT), "epoch": 7}),
     "its epoch 7 is not one of 1..2"),
    (lambda d: runs.save_checkpoint(d / runs.CHECKPOINT, {
        **runs.load_checkpoint(d / runs.CHECKPOINT), "rng": 5}),
     "checkpoint.pt does not fit this run"),
])
def test_resume_checks_every_file_it_reads(unfinished, capsys, damage, fragment):
    damage(unfinished)
    before = {p.name: p.read_bytes() for p in unfinished.iterdir()}
    code, _, err = run_cli(capsys, "train", "--quiet", "--resume", unfinished)
    line = assert_one_line_error(code, err, fragment)
    assert str(unfinished) in line, "the line names the file"
    assert {p.name: p.read_bytes() for p in unfinished.iterdir()} == before
    assert not runs.is_complete(unfinished)


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: (d / runs.WEIGHTS).write_bytes((d / runs.WEIGHTS).read_bytes()[:3000]),
     "not a readable safetensors weights file"),
    (lambda d: (d / runs.WEIGHTS).write_bytes(b"garbage" * 50),
     "not a readable safetensors weights file"),
    (lambda d: replace_in(d / runs.CONFIG, '"lr": 0.05', '"lr": "fast"'),
     "lr must be a number"),
    (lambda d: replace_in(d / ROBUSTNESS, ",0.015686275,", ",0.2,"),
     "robustness.csv, line 2: eps 4/255 is 0.015686275, but eps_value is 0.2"),
    (lambda d: (d / ROBUSTNESS).write_text((d / ROBUSTNESS).read_text().replace(
        "\n", "\nnot,a,row\n", 1)), "robustness.csv, line 2: 3 values"),
    (lambda d: (d / ROBUSTNESS).write_text((d / ROBUSTNESS).read_text().replace(
        ",checks", ",notes", 1)), "lacks the column 'checks'"),
])
def test_attack_checks_every_file_it_reads_before_attacking(finished, capsys, damage,
                                                            fragment):
    damage(finished)
    before = {p.name: p.read_bytes() for p in finished.iterdir()}
    code, _, err = run_cli(capsys, "attack", "--quiet", finished, "--attacks", "fgsm",
                           "--n-examples", "16")
    line = assert_one_line_error(code, err, fragment)
    assert str(finished) in line
    assert {p.name: p.read_bytes() for p in finished.iterdir()} == before


def edit_robust_acc(run_dir, value):
    rows = read_rows(run_dir / ROBUSTNESS)
    rows[0]["robust_acc"] = value
    from robustmix.attacks.table import CSV_FIELDS

    runs.write_csv(run_dir / ROBUSTNESS, rows, CSV_FIELDS)


@pytest.mark.parametrize("value, fragment", [
    ("abc", "robust_acc is 'abc', not a number"),
    ("1.5", "robust_acc is 1.5, outside [0, 1]"),
    ("0.99", "robust_acc 0.99 is above clean_acc"),
])
def test_a_hand_edited_robustness_csv_is_refused_by_attack_and_report(finished, tmp_path,
                                                                      capsys, value, fragment):
    edit_robust_acc(finished, value)
    code, _, err = run_cli(capsys, "attack", "--quiet", finished, "--attacks", "fgsm",
                           "--n-examples", "16")
    assert_one_line_error(code, err, f"{finished / ROBUSTNESS}, line 2: {fragment}")
    code, _, err = run_cli(capsys, "report", finished, "--out", tmp_path / "report")
    assert_one_line_error(code, err, f"{finished / ROBUSTNESS}, line 2: {fragment}")


def test_a_hand_edited_metrics_csv_is_refused_by_report(finished, tmp_path, capsys):
    replace_in(finished / runs.METRICS, "\n2,", "\n2,-")
    code, _, err = run_cli(capsys, "report", finished, "--out", tmp_path / "report")
    assert_one_line_error(code, err, f"{finished / runs.METRICS}, line 3: train_loss is -")


def test_no_command_that_reads_weights_runs_code_from_them(finished, unfinished, tmp_path,
                                                          capsys):
    marker = tmp_path / "code-ran"
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": RunsCode(marker)},
               finished / runs.WEIGHTS)
    torch.save({"model": RunsCode(marker), "epoch": 2}, unfinished / runs.CHECKPOINT)
    with open(finished / runs.WEIGHTS, "rb") as handle:  # the control: it does run code
        torch.load(handle, weights_only=False)
    assert marker.exists()
    marker.unlink()

    for argv, fragment in [
        (["attack", "--quiet", finished, "--attacks", "fgsm"],
         "not a readable safetensors"),
        (["evaluate", finished, "--n-examples", "8", "--q-draws", "8"],
         "not a readable safetensors"),
        (["train", "--quiet", "--resume", unfinished], "not a readable robustmix checkpoint"),
    ]:
        code, _, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, fragment)
    for path in (finished, finished / runs.WEIGHTS):
        with pytest.raises(UsageError, match="not a readable safetensors"):
            robustmix.load_model(path)
    assert not marker.exists(), "no code from a weights or checkpoint file ran"


def test_evaluate_checks_config_json_too(finished, capsys):
    replace_in(finished / runs.CONFIG, '"train": {', '"extra": 1, "train": {')
    code, _, err = run_cli(capsys, "evaluate", finished, "--n-examples", "8")
    assert_one_line_error(code, err, f"{finished / runs.CONFIG} has unknown keys 'extra'")
