"""The training loop: it learns, it is deterministic, and resume equals an uninterrupted run."""

import dataclasses
import json
import math

import pytest
import torch

import robustmix
from robustmix.core import runs
from robustmix.training import trainer as train_module
from robustmix.core.errors import UsageError
from robustmix.mixing import MixConfig
from robustmix.core.config import TrainConfig
from robustmix.training.trainer import learning_rate, soft_cross_entropy, soft_labels, train

FAST = TrainConfig(epochs=3, batch_size=64, seed=0, log_interval=5)


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / runs.WEIGHTS))


@pytest.fixture(scope="module")
def cutmix_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cutmix"
    config = dataclasses.replace(FAST, mix=MixConfig(mix="cutmix"))
    result = train(config, out, progress=False)
    return config, out, result


@pytest.mark.slow
def test_short_digits_training_beats_chance_by_a_wide_margin(cutmix_run):
    _, out, result = cutmix_run
    assert result.test_acc > 0.6  # chance is 0.1
    rows = runs.read_csv(out / runs.METRICS)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["test_acc"]) == pytest.approx(result.test_acc)
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    config = runs.read_json(out / runs.CONFIG)
    assert config["train"]["mix"]["mix"] == "cutmix" and "torch" in config["versions"]
    assert TrainConfig.from_dict(config["train"]) == cutmix_run[0]


@pytest.mark.slow
def test_load_model_gives_the_trained_model_in_eval_mode(cutmix_run):
    _, out, result = cutmix_run
    from robustmix.data import load_dataset
    from robustmix.models.accuracy import evaluate

    for path in (out, out / runs.WEIGHTS):
        model = robustmix.load_model(path)
        assert not model.training
        data = load_dataset("digits")
        # batches of 2 x 64, as training evaluated, in the same process with the same
        # threads: the same computations, so the same accuracy by construction
        accuracy, _ = evaluate(model, data.eval_batches("test", 128, "cpu"))
        assert accuracy == pytest.approx(result.test_acc)


@pytest.mark.slow
def test_same_seed_gives_the_same_weights_and_resume_equals_uninterrupted(
        cutmix_run, tmp_path, monkeypatch):
    config, reference, _ = cutmix_run
    again = tmp_path / "again"
    train(config, again, progress=False)
    assert states_equal(weights(reference), weights(again))
    assert runs.read_csv(reference / runs.METRICS)[-1]["test_acc"] == \
        runs.read_csv(again / runs.METRICS)[-1]["test_acc"]

    # Kill the run in the middle of epoch 2 (after epoch 1's checkpoint), then resume.
    killed = tmp_path / "killed"
    from robustmix import data as data_module

    real_load = data_module.load_dataset

    def load_then_break(*args, **kwargs):
        source = real_load(*args, **kwargs)
        real_batches = source.train_batches
        calls = {"epochs": 0}

        def batches(*a, **k):
            calls["epochs"] += 1
            for step, batch in enumerate(real_batches(*a, **k)):
                if calls["epochs"] == 2 and step == 7:
                    raise KeyboardInterrupt
                yield batch

        source.train_batches = batches
        return source

    monkeypatch.setattr(train_module, "load_dataset", load_then_break)  # as the loop looks it up
    with pytest.raises(KeyboardInterrupt):
        train(config, killed, progress=False)
    monkeypatch.undo()
    assert not runs.is_complete(killed)
    assert runs.load_checkpoint(killed / runs.CHECKPOINT)["epoch"] == 1
    result = train(config, killed, resume=True, progress=False)
    assert result.resumed_from == 1
    assert states_equal(weights(reference), weights(killed))
    assert (reference / runs.METRICS).read_text().count("\n") == \
        (killed / runs.METRICS).read_text().count("\n")


@pytest.mark.slow
def test_per_sample_shuffled_mixing_trains_too(tmp_path):
    config = dataclasses.replace(FAST, epochs=2, mix=MixConfig(
        mix="gmix", lam_per="sample", pairing="shuffle"))
    result = train(config, tmp_path / "gmix", progress=False)
    assert result.test_acc > 0.3


def test_learning_rate_schedules_have_their_closed_forms():
    cosine = TrainConfig(epochs=10, lr=0.1)
    assert learning_rate(cosine, 0, 100) == pytest.approx(0.1)
    assert learning_rate(cosine, 500, 100) == pytest.approx(0.05)
    assert learning_rate(cosine, 999, 100) == pytest.approx(
        0.05 * (1 + math.cos(math.pi * 999 / 1000)))
    warm = TrainConfig(epochs=10, lr=0.1, warmup_epochs=2)
    assert learning_rate(warm, 0, 100) == pytest.approx(0.1 / 200)
    assert learning_rate(warm, 199, 100) == pytest.approx(0.1)
    assert learning_rate(warm, 600, 100) == pytest.approx(0.05)
    step = TrainConfig(epochs=10, lr=0.1, schedule="multistep", milestones=(5, 8))
    assert [learning_rate(step, e * 100, 100) for e in (4, 5, 8)] == pytest.approx(
        [0.1, 0.01, 0.001])


def test_soft_cross_entropy_equals_hard_cross_entropy_on_one_hot_labels():
    logits = torch.randn(7, 5)
    y = torch.randint(0, 5, (7,))
    torch.testing.assert_close(soft_cross_entropy(logits, soft_labels(y, 5, 0.0)),
                               torch.nn.functional.cross_entropy(logits, y))
    torch.testing.assert_close(soft_cross_entropy(logits, soft_labels(y, 5, 0.1)),
                               torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1))


def test_config_round_trip_refuses_unknown_keys_and_wrong_types():
    values = FAST.to_dict()
    assert TrainConfig.from_dict(json.loads(json.dumps(values))) == FAST
    with pytest.raises(UsageError, match="unknown training settings bogus"):
        TrainConfig.from_dict({**values, "bogus": 1})
    with pytest.raises(UsageError, match="epochs"):
        TrainConfig.from_dict({**values, "epochs": 0})
    with pytest.raises(UsageError, match="malformed"):
        TrainConfig.from_dict({**values, "mix": {"mix": "mixup", "alpha": None}})


def test_diverging_training_stops_with_a_clear_line_and_writes_no_weights(tmp_path):
    config = dataclasses.replace(FAST, lr=1e30, epochs=2)
    with pytest.raises(UsageError, match=r"diverged.*epoch 1, step"):
        train(config, tmp_path / "nan", progress=False)
    assert not runs.is_complete(tmp_path / "nan")


def test_load_model_refuses_what_is_not_robustmix_weights(tmp_path):
    with pytest.raises(UsageError, match="no finished run"):
        robustmix.load_model(tmp_path)
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UsageError, match="not a readable safetensors"):
        robustmix.load_model(bad)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(bad))
    with pytest.raises(UsageError, match="no robustmix model spec"):
        robustmix.load_model(bad)


def test_checkpoints_never_execute_code_from_the_file(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "checkpoint.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(UsageError, match="not a readable robustmix checkpoint"):
        runs.load_checkpoint(path)
    assert not marker.exists()


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    runs.atomic_write_text(path, "old\n")

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_module.runs.os, "replace", full_disk)
    with pytest.raises(OSError):
        runs.atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
