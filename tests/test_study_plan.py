"""The study's plan (robustmix.app.study_plan): planned seconds from one measured pass, the
plan's and the end's lines, and the per-step record of time and threads (steps.csv)."""

from types import SimpleNamespace

import pytest

from robustmix.app import study, study_plan
from robustmix.app.study_config import AttackPlan
from robustmix.attacks.plan import passes
from robustmix.core import memory as mem
from robustmix.core import runs
from robustmix.core.errors import ConfigError
from robustmix.core.config import MixConfig, TrainConfig

SHAPE = study_plan.Shape(n_train=1000, n_evaluated=400, n_test=300, n_classes=10,
                         per_example=0.002)


def test_training_is_planned_from_its_passes():
    train = TrainConfig(dataset="digits", epochs=3)
    assert study_plan.train_seconds(train, SHAPE) == pytest.approx(3 * (1000 + 400 / 3) * 0.002)
    puzzle = TrainConfig(dataset="digits", epochs=3, mix=MixConfig(mix="puzzlemix"))
    assert study_plan.train_seconds(puzzle, SHAPE) == pytest.approx(
        3 * (2000 + 400 / 3) * 0.002)


def test_an_attack_is_planned_at_the_attack_commands_bound():
    config = AttackPlan(eps="8/255,16/255", attacks=["fgsm", "pgd"], pgd_steps=10).config()
    each = sum(passes(name, config.settings_for(name), 10)[0] for name in config.attacks)
    # 500 asked, 300 in the test set
    assert study_plan.attack_seconds(config, 500, SHAPE) == pytest.approx(
        each * 2 * 300 * 0.002)
    assert study_plan.attack_seconds(config, 0, SHAPE) == study_plan.attack_seconds(
        config, 300, SHAPE)


def _steps():
    train = TrainConfig(dataset="digits", epochs=1)
    attack = (AttackPlan().config(), 10, train)
    return [SimpleNamespace(kind="train", settings=train, label="a"),
            SimpleNamespace(kind="attack", settings=attack, label="a"),
            SimpleNamespace(kind="autoattack", settings=attack, label="a"),
            SimpleNamespace(kind="evaluate", settings=None, label="a"),
            SimpleNamespace(kind="report", settings=None, label="report")]


def test_the_plan_and_the_end_say_each_kind_beside_its_plan():
    steps = _steps()
    planned = {0: 61.0, 1: 100.0, 2: 20.0}
    line = study_plan.plan_line(steps, planned)
    assert "5 steps to do" in line and "training about 1 min 01 s" in line
    assert "attacks at most 2 min 00 s" in line and "2 other steps" in line
    end = study_plan.took_line(steps, planned, {0: 30.0, 1: 50.0, 2: 10.0})
    assert end == ("robustmix study: training took 30 s (planned about 1 min 01 s); "
                   "attacks took 1 min 00 s (bound 2 min 00 s)")


def test_plan_times_measures_each_model_shape_once(monkeypatch):
    measured = []

    def fake(train, device, batch_size, data=None):
        measured.append((train.arch, batch_size))
        return SHAPE

    monkeypatch.setattr(study_plan, "measure", fake)
    monkeypatch.setattr(study_plan.train_memory, "load_data", lambda train: None)
    steps = _steps()
    planned = study_plan.plan_times(steps, "cpu")
    assert sorted(planned) == [0, 1, 2] and measured == [("smallcnn", 256)]
    assert planned[0] == study_plan.train_seconds(steps[0].settings, SHAPE)


def test_each_step_is_recorded_with_its_threads_and_times(tmp_path, monkeypatch):
    monkeypatch.setattr(study.threads, "used", lambda: [2, 1])
    step = SimpleNamespace(kind="attack", label="vanilla-s0")
    study._record(tmp_path, step, 12.34, 20.0)
    study._record(tmp_path, SimpleNamespace(kind="report", label="report"), 1.0, None)
    rows = runs.read_csv(tmp_path / study.STEPS_FILE)
    assert rows == [{"kind": "attack", "label": "vanilla-s0", "threads": "2 1",
                     "seconds": "12.3", "planned_seconds": "20.0"},
                    {"kind": "report", "label": "report", "threads": "2 1",
                     "seconds": "1.0", "planned_seconds": ""}]


def _estimate(available, batch=64):
    return mem.Estimate(device="cpu", batch_size=batch, per_example=2 ** 20, fixed=2 ** 30,
                        available=available, image_size=8)


def test_the_plan_says_each_kinds_largest_peak_and_refuses_one_that_cannot_fit(monkeypatch):
    monkeypatch.setattr(study_plan.train_memory, "load_data", lambda train: None)
    monkeypatch.setattr(study_plan.train_memory, "planned",
                        lambda train, device, data: (data, None, device))
    monkeypatch.setattr(study_plan.attack_memory, "estimate_run",
                        lambda *a, **k: _estimate(8 * 2 ** 30, 256))
    monkeypatch.setattr(study_plan.train_memory, "estimate_run",
                        lambda *a, **k: _estimate(8 * 2 ** 30))
    largest = study_plan.plan_memory(_steps(), "cpu")
    assert set(largest) == {"train", "attack"} and largest["attack"].batch_size == 256
    line = study_plan.memory_line(largest)
    assert line.startswith("robustmix study: memory: training about 1.06 GiB at batch size 64")
    assert "attacks about 1.25 GiB at batch size 256" in line and "8.00 GiB available" in line
    # 1 GiB fixed + 1 MiB an example: 64 examples do not fit in 1 GiB + 20 MiB, 20 do
    monkeypatch.setattr(study_plan.train_memory, "estimate_run",
                        lambda *a, **k: _estimate(2 ** 30 + 20 * 2 ** 20))
    with pytest.raises(ConfigError, match=r"batch_size 20 .*would fit") as refused:
        study_plan.plan_memory(_steps(), "cpu")
    assert refused.value.field == "batch_size"
    monkeypatch.setenv(mem.NO_CHECK, "1")
    assert study_plan.plan_memory(_steps(), "cpu")["train"].fits is False
