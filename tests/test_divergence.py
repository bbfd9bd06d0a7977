"""Diverging training: a non-finite loss, test loss or weights stops `robustmix train` in one
line that names the epoch and step, and keeps the last good checkpoint."""

from __future__ import annotations

import pytest

from helpers import assert_one_line_error, run_cli
from kill_harness import STEPS_PER_EPOCH, TRAIN, check_files
from robustmix.core import runs

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def nan_loss_at(step, monkeypatch, value=float("nan")):
    """The training loss becomes ``value`` at global step ``step`` (1-based)."""
    from robustmix.training import trainer as train_module

    real = train_module.soft_cross_entropy
    calls = {"n": 0}

    def loss(logits, target):
        calls["n"] += 1
        result = real(logits, target)
        return result * value if calls["n"] == step else result

    monkeypatch.setattr(train_module, "soft_cross_entropy", loss)


@pytest.mark.slow
@pytest.mark.parametrize("value, shown", [(float("nan"), "nan"), (float("inf"), "inf")])
def test_divergence_names_epoch_and_step_and_keeps_the_last_good_checkpoint(
        tmp_path, capsys, monkeypatch, value, shown):
    out = tmp_path / "run"
    nan_loss_at(STEPS_PER_EPOCH + 4, monkeypatch, value)  # epoch 2, step 4 (logged at 6)
    code, _, err = run_cli(capsys, *TRAIN, "--out", out)
    assert_one_line_error(code, err, f"training diverged: the loss is {shown} at epoch 2, step 4;",
                          f"the last good checkpoint ({out / runs.CHECKPOINT}, epoch 1) is kept")
    assert runs.load_checkpoint(out / runs.CHECKPOINT)["epoch"] == 1
    assert len(runs.read_metrics(out / runs.METRICS)) == 1
    assert not runs.is_complete(out) and check_files(out) == []
    code, _, err = run_cli(capsys, "attack", out, "--attacks", "fgsm")
    assert_one_line_error(code, err, "holds no finished run")


def test_divergence_in_the_first_epoch_says_that_no_checkpoint_exists(tmp_path, capsys,
                                                                      monkeypatch):
    out = tmp_path / "run"
    nan_loss_at(2, monkeypatch)
    code, _, err = run_cli(capsys, *TRAIN, "--out", out)
    assert_one_line_error(code, err, "at epoch 1, step 2;", "no checkpoint was written")
    assert sorted(p.name for p in out.iterdir()) == [runs.CONFIG]


@pytest.mark.slow
def test_weights_or_test_loss_that_turn_non_finite_at_an_epoch_end_stop_the_run(
        tmp_path, capsys, monkeypatch):
    from robustmix.training import trainer as train_module

    real = train_module.evaluate
    calls = {"n": 0}

    def evaluate(*args, **kwargs):
        calls["n"] += 1
        accuracy, loss = real(*args, **kwargs)
        return accuracy, (float("nan") if calls["n"] == 2 else loss)

    monkeypatch.setattr(train_module, "evaluate", evaluate)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *TRAIN, "--out", out)
    assert_one_line_error(code, err, "the test loss is not finite at the end of epoch 2",
                          "epoch 1) is kept")
    assert not runs.is_complete(out)
    assert runs.load_checkpoint(out / runs.CHECKPOINT)["epoch"] == 1
