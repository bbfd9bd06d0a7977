"""Failed writes: a full disk during training or an attack keeps the earlier files and stops
in one line; an attack that breaks a guard stops before writing anything."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from robustmix.core.runs import ROBUSTNESS
from helpers import assert_one_line_error, run_cli
from kill_harness import TRAIN, assert_same_training, check_files
from robustmix.app.cli import main
from robustmix.core import runs

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def full_disk_at(name, occurrence, monkeypatch, seen_before):
    """fsync of the ``occurrence``-th temporary file of ``name`` fails with ENOSPC;
    ``seen_before`` receives the bytes of ``name`` on disk at that moment."""
    real = os.fsync
    count = {"n": 0}

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if f"/.{name}." in target:
            count["n"] += 1
            if count["n"] == occurrence:
                old = Path(target).parent / name
                seen_before.append(old.read_bytes() if old.exists() else None)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.slow
def test_a_full_disk_during_training_keeps_the_checkpoint_and_stops_in_one_line(
        trained, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    before = []
    full_disk_at(runs.CHECKPOINT, 2, monkeypatch, before)
    code, _, err = run_cli(capsys, *TRAIN, "--out", out)
    assert_one_line_error(code, err, f"could not write {out / runs.CHECKPOINT}",
                          "No space left on device", "the previous checkpoint.pt is kept")
    assert before[0] is not None and (out / runs.CHECKPOINT).read_bytes() == before[0]
    assert runs.load_checkpoint(out / runs.CHECKPOINT)["epoch"] == 1
    assert check_files(out) == [] and not runs.is_complete(out)
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "train", "--quiet", "--resume", out)
    assert code == 0, err
    assert_same_training(trained, out)


def test_a_full_disk_during_an_attack_keeps_the_earlier_results(attack_base, tmp_path,
                                                                 capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(attack_base, run)
    old = (run / ROBUSTNESS).read_bytes()
    full_disk_at(ROBUSTNESS, 1, monkeypatch, [])
    code, _, err = run_cli(capsys, "attack", "--quiet", run, "--attacks", "fgsm",
                           "--eps", "8/255", "--n-examples", "16")
    assert_one_line_error(code, err, f"could not write {run / ROBUSTNESS}",
                          "No space left on device", "the previous robustness.csv is kept")
    assert (run / ROBUSTNESS).read_bytes() == old
    assert check_files(run) == []


def test_an_attack_that_breaks_a_guard_stops_and_writes_nothing(finished, monkeypatch):
    """A planted bug (a robust accuracy rising with ε) stops the command before any row
    is written; the earlier results stay as they were."""
    import dataclasses

    from robustmix.attacks import AttackError, sweep

    @dataclasses.dataclass
    class Planted(sweep.Row):
        def __post_init__(self):
            if self.attack == "fgsm" and self.eps.text == "80/255":
                self.robust_acc = self.clean_acc

    monkeypatch.setattr(sweep, "Row", Planted)
    before = {p.name: p.read_bytes() for p in finished.iterdir()}
    with pytest.raises(AttackError, match="fgsm: robust accuracy rises from ε = 40/255 to "
                                          "80/255: a bug"):
        main(["attack", "--quiet", str(finished), "--attacks", "fgsm", "--eps",
              "40/255,80/255", "--n-examples", "16"])
    assert {p.name: p.read_bytes() for p in finished.iterdir()} == before
