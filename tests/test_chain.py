"""The commands chain with no paths, as the project's card shows them: train, then
`attack --eps 8/255`, `evaluate`, `report`, each finding the runs under ./runs/ itself."""

from __future__ import annotations

import csv

import pytest

from helpers import assert_one_line_error, run_cli


@pytest.mark.parametrize("command", ["attack", "evaluate", "report", "runs"])
def test_with_no_run_anywhere_each_command_says_how_to_make_one(capsys, tmp_path, monkeypatch,
                                                                command):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, command)
    assert_one_line_error(code, err, "no ", "run under runs/", "robustmix train")
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_train_attack_evaluate_report_chain_without_paths(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for mix in ("cutmix", "mixup"):
        code, _, err = run_cli(capsys, "train", "--mix", mix, "--epochs", "1", "--image-size",
                               "8", "--quiet")
        assert code == 0, err
    # an unfinished run beside them: listed as skipped, never attacked
    (tmp_path / "runs" / "killed").mkdir()
    (tmp_path / "runs" / "killed" / "config.json").write_text(
        (tmp_path / "runs" / "digits-smallcnn-mixup-s0" / "config.json").read_text())
    code, out, err = run_cli(capsys, "attack", "--eps", "8/255", "--attacks", "fgsm,pgd",
                             "--pgd-steps", "2", "--n-examples", "40", "--quiet")
    assert code == 0, err
    threads, first = out.splitlines()[:2]   # the torch threads it chose, then the runs
    assert threads.startswith("robustmix: ") and " torch thread" in threads
    assert first.startswith("robustmix attack: 2 finished runs under runs/: "
                            "digits-smallcnn-cutmix-s0, digits-smallcnn-mixup-s0"), first
    assert "skipped 1 unfinished (killed" in first
    assert not (tmp_path / "runs" / "killed" / "robustness.csv").exists()
    code, out, err = run_cli(capsys, "evaluate", "--n-examples", "16", "--q-draws", "16")
    assert code == 0 and out.splitlines()[1].startswith("robustmix evaluate: 2 finished runs"), \
        err
    code, out, err = run_cli(capsys, "report")
    assert code == 0, err
    assert f"wrote {'report/report.md'}" in out and "main plot report/" in out
    with open(tmp_path / "report" / "runs.csv", newline="") as handle:
        methods = sorted(row["method"] for row in csv.DictReader(handle))
    assert methods == ["cutmix", "mixup"]
    code, out, err = run_cli(capsys, "runs")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["run", "method", "seed"]
    table = {line.split()[0]: line for line in lines[1:4]}
    assert set(table) == {"digits-smallcnn-cutmix-s0", "digits-smallcnn-mixup-s0", "killed"}
    assert "8/255" in table["digits-smallcnn-cutmix-s0"]
    assert "0/1" in table["killed"]
    assert lines[-1] == "next: robustmix train --resume runs/killed"


def test_report_open_says_where_the_report_is_when_no_viewer_exists(tmp_path, monkeypatch):
    import shutil
    import subprocess

    from robustmix.app import commands

    opened = []
    monkeypatch.setattr(subprocess, "Popen", lambda argv, **_: opened.append(argv))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    report = tmp_path / "report.md"
    assert str(report.resolve()) in commands._open(report) and opened == []
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert commands._open(report).startswith(f"opened {report}")
    assert opened and opened[0][-1] == str(report)
