"""RunDir: the run directory's file names, paths and checked readers in one place; the one
rule for the test subset that ``attack`` and ``evaluate`` share; the data sources' public
view of their evaluation images."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from robustmix.attacks import runner, table, worst_case
from robustmix.evaluations import evaluate_run
from robustmix.core import runs
from robustmix.core.errors import ConfigError, UsageError
from robustmix.data import LazyImages, load_dataset

FILES = {"config_path": runs.CONFIG, "metrics_path": runs.METRICS,
         "checkpoint_path": runs.CHECKPOINT, "weights_path": runs.WEIGHTS,
         "robustness_path": runs.ROBUSTNESS,
         "robustness_examples_path": runs.ROBUSTNESS_EXAMPLES,
         "attack_state_dir": runs.ATTACK_STATE, "generalization_path": runs.GENERALIZATION,
         "profile_path": runs.PROFILE_CSV, "regularizer_path": runs.REGULARIZER_CSV,
         "corruptions_path": runs.CORRUPTIONS}


# ---------------------------------------------------------------------------- names and paths


def test_every_file_has_one_name_and_one_path(tmp_path):
    run = runs.RunDir(str(tmp_path))
    assert run.path == tmp_path and isinstance(run.path, Path)
    assert run == runs.RunDir(tmp_path)
    for attribute, name in FILES.items():
        assert getattr(run, attribute) == tmp_path / name
    assert len(set(FILES.values())) == len(FILES)
    assert list(tmp_path.iterdir()) == [], "a RunDir touches nothing"
    with pytest.raises(AttributeError):
        run.path = tmp_path / "other"  # frozen


# ---------------------------------------------------------------------------- a real run


def test_readers_round_trip_a_finished_run(finished):
    """A run trained, then attacked, by the commands (conftest.py's ``finished``)."""
    run = runs.RunDir(finished)
    assert run.is_complete() and run.holds_run()
    assert run.read_config() == runs.read_config(finished)
    assert run.read_config() == json.loads(run.config_path.read_text())
    assert run.read_metrics() == runs.read_metrics(finished / runs.METRICS)
    assert [row["epoch"] for row in run.read_metrics()] == ["1", "2"]
    assert [row["epoch"] for row in run.read_metrics(epochs=1)] == ["1"]
    assert runs.load_checkpoint(run.checkpoint_path)["epoch"] == 2
    assert run.weights_path.is_file() and not run.attack_state_dir.exists()
    rows = table.read_rows(run.robustness_path)
    assert {(row["attack"], row["n_examples"]) for row in rows} == {("fgsm", "16"),
                                                                     ("worst-case", "16")}
    assert {row["n_examples"] for row in worst_case.read(run.robustness_examples_path)} \
        == {"16"}
    assert run.read_generalization() is None

    result = evaluate_run(finished, device="cpu", n_examples=8, q_draws=8)
    assert run.read_generalization() == json.loads(json.dumps(result))
    assert run.profile_path.is_file() and run.regularizer_path.is_file()
    assert result["gradient_profile"]["csv"] == runs.PROFILE_CSV


def test_open_reads_the_config_once_and_keeps_the_run_info(finished):
    opened = runs.RunDir(finished).open()
    assert isinstance(opened, runs.FinishedRun) and isinstance(opened, runs.RunDir)
    assert opened == runs.open_run(str(finished)) == runs.open_run(finished)
    assert opened.path == finished and opened.config == runs.read_config(finished)
    assert opened.weights_path == finished / runs.WEIGHTS
    assert (opened.mix, opened.seed) == ("cutmix", 0)
    assert opened.train == opened.config["train"] and opened.dataset["name"] == "digits"
    assert opened.data_identity() == tuple(opened.dataset.get(k) for k in runs.DATA_KEYS)
    assert opened.data_label() == "digits 1x8x8 (1400 train / 397 test)"


def test_open_refuses_what_is_not_a_finished_run(unfinished, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UsageError, match=f"^run directory {missing} not found$"):
        runs.RunDir(missing).open()
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(UsageError, match="is not a run directory .give the folder that holds "
                                         "config.json and model.safetensors.$"):
        runs.RunDir(a_file).open()
    assert not runs.RunDir(unfinished).is_complete() and runs.RunDir(unfinished).holds_run()
    with pytest.raises(UsageError) as refused:
        runs.open_run(unfinished)
    assert str(refused.value) == (f"{unfinished} holds no finished run: model.safetensors is "
                                  f"missing (finish it with: robustmix train --resume "
                                  f"{unfinished})")


def test_a_config_without_its_dataset_section_is_refused(finished):
    config = runs.read_config(finished)
    del config["dataset"]
    runs.write_json(finished / runs.CONFIG, config)
    with pytest.raises(UsageError) as refused:
        runs.RunDir(finished).open()
    assert str(refused.value) == (f"{finished / runs.CONFIG} lacks the 'dataset' section; "
                                  "it was not written by robustmix train")


# ---------------------------------------------------------------------------- the test subset


@given(st.integers(0, 3000), st.one_of(st.none(), st.integers(1, 4000)))
def test_the_subset_is_fixed_sorted_unique_and_in_range(n_total, n_examples):
    subset = runs.test_subset(n_total, n_examples)
    assert np.array_equal(subset, runs.test_subset(n_total, n_examples))
    values = subset.tolist()
    assert values == sorted(set(values))
    assert all(0 <= v < n_total for v in values)
    if n_examples is None or n_examples >= n_total:
        assert values == list(range(n_total))
    else:
        assert len(values) == n_examples


def test_the_subset_is_the_rule_both_commands_always_used():
    subset = runs.test_subset(397, 40)
    expected = np.sort(np.random.default_rng(0).permutation(397)[:40])
    assert subset.tolist() == expected.tolist() and subset.tolist() != list(range(40))
    with pytest.raises(ConfigError, match="^n_examples must be >= 1, got 0$"):
        runs.test_subset(397, 0)


def test_attack_and_evaluate_read_the_same_test_examples(finished):
    """The attack command's subset is the images evaluate reads: the test subset's rule."""
    subset = runner.load_subset(finished, "cpu", 8, None, False, echo=lambda *_: None)
    train = runs.RunDir(finished).read_config()["train"]
    data = load_dataset(train["dataset"], image_size=train["image_size"])
    chosen = runs.test_subset(data.n_test, 8)
    images, labels = data.eval_images("test", chosen)
    assert subset.indices.tolist() == chosen.tolist() and len(chosen) == 8
    assert torch.equal(subset.y, labels)
    assert torch.equal(subset.x, images.float() / 255)


# ---------------------------------------------------------------------------- evaluation images


def test_tensor_source_eval_images_index_its_tensors():
    data = load_dataset("digits", image_size=8)
    images, labels = data.eval_images("train")
    assert images is data.tensors("train")[0] and labels is data.tensors("train")[1]
    indices = runs.test_subset(data.n_test, 5)
    x, y = data.eval_images("test", indices)
    x_all, y_all = data.tensors("test")
    assert torch.equal(x, x_all[torch.from_numpy(indices)])
    assert torch.equal(y, y_all[torch.from_numpy(indices)])


def test_folder_source_eval_images_read_only_what_is_asked(tmp_path):
    for split in ("train", "val"):
        for label, cls in enumerate(("ant", "bee")):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 20), (40 * i, 100 + label, 7)).save(
                    tmp_path / split / cls / f"{i}.png")
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=16)
    view, labels = data.eval_images("train")
    assert isinstance(view, LazyImages) and labels is None
    assert view.shape == (6, 3, 16, 16)
    x_all, y_all = data.tensors("test")
    indices = np.array([1, 4, 5])
    x, y = data.eval_images("test", indices)
    assert torch.equal(x, x_all[torch.from_numpy(indices)])
    assert torch.equal(y, y_all[torch.from_numpy(indices)])
    assert len(data.eval_dataset("test")) == 6
    with pytest.raises(UsageError, match="unknown split 'val'"):
        data.eval_images("val")
