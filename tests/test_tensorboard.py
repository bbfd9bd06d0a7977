"""`robustmix train --tensorboard`: the event file holds metrics.csv's numbers and the
mask gallery; the weights are those of the run without it; without the package it is
one line and exit 2."""

import dataclasses
import sys

import pytest

from robustmix.app.study_config import load_config
from robustmix.core import runs

from helpers import assert_one_line_error, mini_study, one_thread, run_cli

TRAIN = ["train", "--quiet", "--epochs", "2", "--image-size", "8", "--batch-size", "128",
         "--mix", "cutmix"]


@pytest.mark.slow
def test_the_event_file_holds_the_metrics_and_training_is_unchanged(capsys, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with one_thread():
        code, _, err = run_cli(capsys, *TRAIN, "--tensorboard", "--out", tmp_path / "board")
        assert code == 0, err
        code, _, err = run_cli(capsys, *TRAIN, "--out", tmp_path / "plain")
        assert code == 0, err
    board, plain = tmp_path / "board", tmp_path / "plain"
    assert (board / runs.WEIGHTS).read_bytes() == (plain / runs.WEIGHTS).read_bytes()
    assert not list(plain.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(board), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    rows = runs.read_metrics(board / runs.METRICS)
    for column, tag in (("test_acc", "accuracy/test"), ("train_loss", "loss/train"),
                        ("lr", "lr"), ("images_per_s", "images_per_s")):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx(
            [float(row[column]) for row in rows], rel=1e-6)   # float32 of the CSV's number
    (gallery,) = events.Tags()["images"]
    (image,) = events.Images(gallery)      # the 3 masks side by side, once
    assert gallery.startswith("masks/cutmix") and (image.width, image.height) == (3 * 8, 8)


def test_without_the_package_it_is_one_line_and_nothing_is_written(capsys, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails
    code, _, err = run_cli(capsys, *TRAIN, "--tensorboard", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "--tensorboard needs the tensorboard package",
                          "pip install 'robustmix[tensorboard]'")
    assert not (tmp_path / "run").exists()


def test_a_study_turns_it_on_in_its_train_table(tmp_path):
    text = mini_study(tmp_path / "study")
    assert "tensorboard = false" in text
    path = tmp_path / "study.toml"
    path.write_text(text.replace("tensorboard = false", "tensorboard = true"))
    run = load_config(None, str(path)).run_config("", "cutmix", 0)
    assert run.tensorboard is True
    # logging only: a run trained without it is the same run (resumed, not refused)
    assert dataclasses.replace(run, tensorboard=False) == run
