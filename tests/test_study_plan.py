"""The study's plan (robustmix.app.study_plan): planned seconds from one measured pass, the
plan's and the end's lines, and the per-step record of time and threads (steps.csv)."""

from types import SimpleNamespace

import pytest

from robustmix.app import study, study_plan
from robustmix.app.study_config import AttackPlan
from robustmix.attacks.plan import passes
from robustmix.core import runs
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

    def fake(train, device, batch_size):
        measured.append((train.arch, batch_size))
        return SHAPE

    monkeypatch.setattr(study_plan, "measure", fake)
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
