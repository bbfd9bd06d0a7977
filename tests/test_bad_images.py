"""Image folders with files that cannot be decoded: found before any work, refused in one
line, or left out with --skip-bad-images (recorded, so every later command uses the same
examples); a file that goes bad during a run stops it in one line, and --resume continues.

The folder: two classes of 8×8 images, plus a truncated JPEG, a text file named .png and a
zero-byte .jpg.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os

import numpy as np

import pytest
import torch
from PIL import Image

from helpers import assert_one_line_error, run_cli
from robustmix.core import runs
from robustmix.data import BadImagesError, UnreadableImage, find_bad_images, load_dataset
from robustmix.data import image_check

pytestmark = pytest.mark.usefixtures("torch_one_thread")

BAD = ("train/ant/truncated.jpg", "train/bee/empty.jpg", "val/bee/notes.png")


def _jpeg(size: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def write_folder(root, *, bad: bool = True):
    """train/{ant,bee}/ with 6 images each, val/ with 3 each (8×8, PNG and JPEG); with
    ``bad`` the three files of BAD as well."""
    k = 0
    for split, count in (("train", 6), ("val", 3)):
        for label, name in enumerate(("ant", "bee")):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                colour = (20 * k % 256, 200 - 10 * label, 40 + 100 * label)
                suffix = "png" if i % 2 else "jpg"
                Image.new("RGB", (8, 8), colour).save(root / split / name / f"{i}.{suffix}")
                k += 1
    if bad:
        whole = _jpeg(32, 0)
        (root / BAD[0]).write_bytes(whole[:len(whole) * 3 // 5])
        (root / BAD[1]).write_bytes(b"")
        (root / BAD[2]).write_text("meeting notes, not a picture\n")
    return f"imagefolder:{root}"


TRAIN = ["train", "--quiet", "--image-size", "8", "--epochs", "1", "--batch-size", "4",
         "--lr", "0.01"]


# ---------------------------------------------------------------------------- the check


def test_the_check_finds_each_kind_of_bad_file_and_only_those(tmp_path):
    write_folder(tmp_path)
    paths = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*"))
    bad = find_bad_images(tmp_path, paths)
    assert dict(bad) == {BAD[0]: dict(bad)[BAD[0]], BAD[1]: "empty file",
                         BAD[2]: "not an image PIL can read"}
    assert dict(bad)[BAD[0]].startswith("OSError: image file is truncated")
    # Image.verify reads only a JPEG's header: the truncated file passes it, and only a
    # decode finds it (which is why the check decodes).
    with Image.open(tmp_path / BAD[0]) as image:
        image.verify()
    assert image_check.image_problem(str(tmp_path / BAD[0])) is not None


def test_worker_processes_find_the_same_files(tmp_path, monkeypatch):
    write_folder(tmp_path)
    paths = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*"))
    serial = image_check._scan(str(tmp_path), paths, workers=1)
    monkeypatch.setattr(image_check, "PARALLEL_FROM", 0)
    monkeypatch.setattr(image_check, "CHUNK", 4)
    assert image_check._scan(str(tmp_path), paths, workers=2) == serial
    assert [p for p, why in zip(paths, serial) if why] == sorted(BAD)


def test_the_cache_answers_for_an_unchanged_listing_only(tmp_path, monkeypatch):
    write_folder(tmp_path)
    paths = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*"))
    first = find_bad_images(tmp_path, paths)
    assert image_check.cache_path(tmp_path).is_file()
    assert not any(image_check.cache_dir() in p.parents for p in tmp_path.rglob("*"))
    decoded = []
    real = image_check.image_problem
    monkeypatch.setattr(image_check, "image_problem",
                        lambda path: decoded.append(path) or real(path))
    assert find_bad_images(tmp_path, paths) == first and decoded == []   # from the cache
    (tmp_path / BAD[1]).write_bytes(_jpeg(8, 1))                         # repaired
    assert [p for p, _ in find_bad_images(tmp_path, paths)] == [BAD[0], BAD[2]]
    assert len(decoded) == len(paths)                                    # checked again
    image_check.cache_path(tmp_path).write_text("{damaged")              # ignored, rewritten
    assert [p for p, _ in find_bad_images(tmp_path, paths)] == [BAD[0], BAD[2]]


def test_load_refuses_or_leaves_out_the_bad_files(tmp_path):
    spec = write_folder(tmp_path)
    with pytest.raises(BadImagesError) as info:
        load_dataset(spec, image_size=8)
    message = str(info.value)
    assert "3 files cannot be read as images" in message and "--skip-bad-images" in message
    assert BAD[0] in message and "\n" not in message
    notes = []
    data = load_dataset(spec, image_size=8, skip_bad_images=True, echo=notes.append)
    assert (data.n_train, data.n_test) == (12, 6) and data.skipped == tuple(sorted(BAD))
    assert len(notes) == 1 and "leaving out 3 image files" in notes[0]
    # A run's recorded files are left out without being checked: the same examples.
    again = load_dataset(spec, image_size=8, skipped=data.skipped)
    assert again.skipped == data.skipped and again.newly_skipped == ()
    assert torch.equal(again.tensors("test")[0], data.tensors("test")[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_that_goes_bad_after_the_check_is_one_line(tmp_path, workers):
    spec = write_folder(tmp_path, bad=False)
    data = load_dataset(spec, image_size=8, num_workers=workers)
    (tmp_path / "val" / "bee" / "1.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(UnreadableImage) as info:
        list(data.eval_batches("test", 4, "cpu"))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"image {tmp_path / 'val' / 'bee' / '1.png'} cannot be read (")
    # the error holds no loader: its worker processes stopped with it (not at a later
    # garbage collection, whose shutdown of idle workers stalls 10 s)
    assert multiprocessing.active_children() == []


# ---------------------------------------------------------------------------- the commands


@pytest.mark.slow
def test_train_attack_evaluate_refuse_before_work_then_skip(capsys, tmp_path):
    spec = write_folder(tmp_path / "data")
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *TRAIN, "--dataset", spec, "--out", out)
    assert_one_line_error(code, err, "3 files cannot be read as images", BAD[0],
                          "--skip-bad-images")
    assert not out.exists() or not any(out.iterdir())          # nothing written
    code, printed, err = run_cli(capsys, *TRAIN, "--dataset", spec, "--out", out,
                                 "--skip-bad-images")
    assert code == 0, err
    assert "leaving out 3 image files that cannot be read" in printed
    config = runs.read_config(out)
    assert config["dataset"]["skipped_images"] == sorted(BAD)
    assert (config["dataset"]["n_train"], config["dataset"]["n_test"]) == (12, 6)
    # attack and evaluate leave out the recorded files, with no flag.
    code, printed, err = run_cli(capsys, "attack", "--quiet", out, "--attacks",
                                 "fgsm", "--eps", "8/255")
    assert code == 0, err
    assert "3 recorded by the run when it started" in printed
    assert {row["n_examples"] for row in runs.read_csv(out / runs.ROBUSTNESS)} == {"6"}
    code, printed, err = run_cli(capsys, "evaluate", out, "--q-draws", "4")
    assert code == 0, err
    assert json.loads((out / runs.GENERALIZATION).read_text())["test"]["n"] == 6
    # The same command again finds the same run (same files left out), complete.
    code, printed, _ = run_cli(capsys, *TRAIN, "--dataset", spec, "--out", out,
                               "--skip-bad-images")
    assert code == 0 and "complete; nothing to do" in printed


@pytest.mark.slow
def test_a_file_gone_bad_after_training_refuses_attack_and_evaluate(capsys, tmp_path):
    spec = write_folder(tmp_path / "data", bad=False)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *TRAIN, "--dataset", spec, "--out", out)
    assert code == 0, err
    assert "skipped_images" not in runs.read_config(out)["dataset"]
    (tmp_path / "data" / "val" / "ant" / "0.jpg").write_bytes(b"")
    before = sorted(os.listdir(out))
    for command in (["attack", "--quiet", "--attacks", "fgsm"], ["evaluate", "--q-draws", "4"]):
        code, _, err = run_cli(capsys, *command, out)
        assert_one_line_error(code, err, "1 file cannot be read as images", "val/ant/0.jpg",
                              "--skip-bad-images")
        assert sorted(os.listdir(out)) == before                 # nothing written
    code, printed, err = run_cli(capsys, "attack", "--quiet", "--attacks", "fgsm", out,
                                 "--skip-bad-images")
    assert code == 0, err
    assert "leaving out 1 image file that cannot be read (found now)" in printed
    assert {row["n_examples"] for row in runs.read_csv(out / runs.ROBUSTNESS)} == {"5"}


@pytest.mark.slow
def test_a_file_that_goes_bad_mid_run_stops_it_and_resume_continues(capsys, tmp_path,
                                                                    monkeypatch):
    from robustmix.training import trainer as trainer_module

    spec = write_folder(tmp_path / "data", bad=False)
    victim = tmp_path / "data" / "train" / "bee" / "2.jpg"
    good = victim.read_bytes()
    real_save = trainer_module.Trainer.save_epoch

    def save_then_break(self, epoch):
        real_save(self, epoch)
        if epoch == 0:
            victim.write_bytes(good[:len(good) // 2])          # a disk error, after epoch 1

    monkeypatch.setattr(trainer_module.Trainer, "save_epoch", save_then_break)
    out = tmp_path / "run"
    two_epochs = [("2" if previous == "--epochs" else arg)
                  for previous, arg in zip([None, *TRAIN], TRAIN)]
    code, _, err = run_cli(capsys, *two_epochs, "--dataset", spec, "--out", out)
    line = assert_one_line_error(code, err, f"image {victim} cannot be read",
                                 "checkpoint", "epoch 1", f"--resume {out}")
    assert "Traceback" not in line
    monkeypatch.undo()
    assert runs.load_checkpoint(out / runs.CHECKPOINT)["epoch"] == 1
    assert not runs.is_complete(out)
    # Still bad: resume refuses before any work, and keeps the run's examples.
    code, _, err = run_cli(capsys, "train", "--resume", out)
    assert_one_line_error(code, err, "1 file cannot be read", "train/bee/2.jpg",
                          "restore them and resume")
    victim.write_bytes(good)
    code, printed, err = run_cli(capsys, "train", "--quiet", "--resume", out)
    assert code == 0, err
    assert "resumed after epoch 1" in printed and runs.is_complete(out)


# ---------------------------------------------------------------------------- the study


def _folder_study(tmp_path, skip: bool):
    from helpers import mini_study

    spec = write_folder(tmp_path / "data")
    toml = tmp_path / "study.toml"
    out = tmp_path / "study"
    toml.write_text(mini_study(out, methods=("vanilla",),
                               train={"dataset": spec, "epochs": 1, "batch_size": 4,
                                      "image_size": 8, "skip_bad_images": skip,
                                      "holdout": 0}))
    return toml, out


@pytest.mark.slow
def test_a_study_refuses_a_folder_with_bad_files_before_any_step(capsys, tmp_path):
    toml, out = _folder_study(tmp_path, skip=False)
    code, printed, err = run_cli(capsys, "study", "--dry-run", "--config", toml)
    assert code == 0, err
    assert f"data missing: image folder {tmp_path / 'data'}/: 3 files cannot be read" in printed
    assert "it cannot start: 1 data problem above" in printed
    code, _, err = run_cli(capsys, "study", "--quiet", "--config", toml)
    assert_one_line_error(code, err, "the study's data is not ready", "3 files cannot be read",
                          "--skip-bad-images")
    assert not out.exists()                                        # no step ran
    text = toml.read_text().replace("skip_bad_images = false", "skip_bad_images = true")
    toml.write_text(text)
    code, printed, err = run_cli(capsys, "study", "--dry-run", "--config", toml)
    assert code == 0 and "data ready" in printed, err


@pytest.mark.slow
def test_a_study_trains_around_bad_files_with_skip_bad_images(capsys, tmp_path):
    toml, out = _folder_study(tmp_path, skip=True)
    code, printed, err = run_cli(capsys, "study", "--quiet", "--config", toml)
    assert code == 0, err
    assert "leaving out 3 image files that cannot be read" in printed
    run = out / "runs" / "vanilla-s0"
    assert runs.read_config(run)["dataset"]["skipped_images"] == sorted(BAD)
    assert (out / "report.md").is_file()


@pytest.mark.slow
def test_the_benchmark_runs(monkeypatch):
    import math
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import bench_image_check

    cache = os.environ["ROBUSTMIX_CACHE_DIR"]
    result = bench_image_check.run(files=6, workers=(1, 2), sample=3, size=(16, 12))
    assert os.environ["ROBUSTMIX_CACHE_DIR"] == cache
    values = result["results"]
    assert {"full_decode_ms", "check_ms", "verify_ms", "cold_1_workers_s",
            "cold_2_workers_s", "cached_s"} <= values.keys()
    assert all(math.isfinite(v) and v > 0 for v in values.values())
    assert "find_bad_images, cached" in bench_image_check.format_results(result)
