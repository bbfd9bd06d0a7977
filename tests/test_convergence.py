"""Convergence judged on held-out training images: the slice is fixed and never trained on,
the trainer scores it each epoch (resume stays exact), the criterion can fail and does for
a run cut short, and older runs without the slice are "not judged". Also: runs of one seed
start from the same weights whatever their MSDA, which is what pairs (d) and (e)."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from robustmix.evaluations import convergence
from robustmix.evaluations.collect import load_record, run_metrics
from robustmix.core import runs
from robustmix.core.config import TrainConfig
from robustmix.core.errors import ConfigError, UsageError
from robustmix.data import Augment, load_dataset
from robustmix.data.sources import holdout_indices
from robustmix.mixing import MixConfig
from robustmix.training import trainer as train_module
from robustmix.training.trainer import Trainer, train
from helpers import interrupted_at

LN10 = math.log(10)
SHORT = TrainConfig(image_size=8, epochs=5, lr=0.1, batch_size=64, holdout=200,
                    mix=MixConfig(mix="cutmix"))


@pytest.mark.parametrize("acc, loss, planned, converged, why", [
    ([0.5, 0.9, 0.97, 0.98, 0.985, 0.99, 0.99, 0.99], [0.1] * 8, 8, True, ""),
    ([0.5, 0.9, 0.95, 0.96], [0.2] * 4, 4, True, ""),                       # +1.0 pp
    ([0.3, 0.7, 0.86, 0.94, 0.96], [0.2] * 5, 5, False, "still climbing: +10.0 pp"),
    ([0.5, 0.9, 0.95], [0.2] * 3, 8, False, "3 of 8 epochs"),
    ([0.5, 0.9, 0.95], [0.2] * 3, 3, False, "too few to judge"),
    ([0.1, 0.2, 0.2, 0.2], [2.1] * 4, 4, False, "barely learned"),
    ([], [], 15, None, convergence.NOT_JUDGED),
])
def test_the_criterion_on_curves(acc, loss, planned, converged, why):
    state = convergence.check(acc, loss, planned, 10)
    assert state.converged is converged
    assert why in state.reason


def test_the_third_quarter_is_after_half_and_up_to_three_quarters():
    assert convergence.third_quarter(15) == slice(7, 11)     # epochs 8..11
    assert convergence.third_quarter(4) == slice(2, 3)       # epoch 3
    assert convergence.third_quarter(200) == slice(100, 150)
    # at the threshold it passes, just above it fails
    edge = [0.5, 0.9, 0.95, 0.95 + convergence.GAIN]
    assert convergence.check(edge, [0.1] * 4, 4, 10).converged
    assert not convergence.check(edge[:3] + [edge[3] + 0.005], [0.1] * 4, 4, 10).converged


def test_the_held_out_slice_is_fixed_and_never_trained_on():
    full = load_dataset("digits", image_size=8)
    x_all, y_all = full.tensors("train")
    data = load_dataset("digits", image_size=8, holdout=200)
    held = holdout_indices(full.n_train, 200)
    assert (data.n_train, data.n_holdout) == (full.n_train - 200, 200)
    assert torch.equal(data.tensors("holdout")[0], x_all[torch.from_numpy(held)])
    keep = np.setdiff1d(np.arange(full.n_train), held)
    assert torch.equal(data.tensors("train")[0], x_all[torch.from_numpy(keep)])
    assert torch.equal(data.tensors("holdout")[1], y_all[torch.from_numpy(held)])
    # every training batch of an epoch comes from the kept images only
    seen = torch.cat([x for x, _ in data.train_batches(np.random.default_rng(0), 64, "cpu",
                                                        Augment(pad=0, flip=False))])
    kept = data.tensors("train")[0].float().div(255)
    assert seen.shape[0] == (data.n_train // 64) * 64
    assert all((kept == image).flatten(1).all(1).any() for image in seen[:50])
    assert load_dataset("digits", image_size=8, holdout=200).holdout_digest == \
        data.holdout_digest
    with pytest.raises(UsageError, match="holdout must be an integer in 1..1399"):
        load_dataset("digits", image_size=8, holdout=1400)
    with pytest.raises(ConfigError, match="holdout"):
        TrainConfig(holdout=-1).validate()


@pytest.mark.slow
def test_a_run_cut_short_fails_and_says_why(tmp_path):
    out = tmp_path / "short"
    train(SHORT, out, progress=False)
    rows = runs.read_metrics(out / runs.METRICS)
    assert list(rows[0])[-2:] == ["holdout_loss", "holdout_acc"] and len(rows) == 5
    saved = runs.read_config(out)["dataset"]
    assert saved["n_train"] == 1200 and saved["holdout"]["n"] == 200
    values = run_metrics(load_record(runs.RunDir(out).open(), "short"))
    assert values["converged"] is False
    assert "still climbing" in values["convergence"]
    # the same run's files without the held-out columns, as older runs wrote them: not judged
    old = [{k: v for k, v in r.items() if not k.startswith("holdout")} for r in rows]
    runs.write_csv(out / runs.METRICS, old, runs.METRIC_FIELDS)
    values = run_metrics(load_record(runs.RunDir(out).open(), "short"))
    assert values["converged"] is None and values["convergence"] == convergence.NOT_JUDGED


@pytest.mark.slow
def test_resume_with_a_held_out_slice_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    config = dataclasses.replace(SHORT, epochs=2)
    train(config, tmp_path / "whole", progress=False)
    monkeypatch.setattr(train_module, "load_dataset",
                        interrupted_at(train_module.load_dataset))
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "killed", progress=False)
    monkeypatch.undo()
    train(config, tmp_path / "killed", resume=True, progress=False)
    for name in (runs.WEIGHTS,):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes()
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
             for r in runs.read_csv(tmp_path / "whole" / runs.METRICS)]
    assert strip == [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
                     for r in runs.read_csv(tmp_path / "killed" / runs.METRICS)]


def test_runs_of_one_seed_start_from_the_same_weights_whatever_their_msda(tmp_path):
    states = {}
    for mix, seed in (("vanilla", 3), ("cutmix", 3), ("puzzlemix", 3), ("vanilla", 4)):
        config = dataclasses.replace(SHORT, seed=seed, mix=MixConfig(mix=mix))
        trainer = Trainer(config, tmp_path / f"{mix}-{seed}", progress=False)
        trainer.setup()
        states[mix, seed] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    same = [states["vanilla", 3], states["cutmix", 3], states["puzzlemix", 3]]
    assert all(torch.equal(a[k], b[k]) for a in same for b in same for k in a)
    three, four = states["vanilla", 3], states["vanilla", 4]
    assert any(not torch.equal(three[k], four[k]) for k in three
               if three[k].is_floating_point())


def test_an_image_folder_holds_out_the_same_way(tmp_path):
    """An image folder sets aside the same rule's images: held-out and trained-on colours
    are disjoint and together the whole training folder."""
    from PIL import Image

    for label, cls in enumerate(("ant", "bee")):
        for split, count in (("train", 5), ("val", 2)):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(count):
                colour = (20 * i + 5, 100 + 60 * label, 10 if split == "train" else 200)
                Image.new("RGB", (40, 40), colour).save(tmp_path / split / cls / f"{i}.png")

    def colours(source, split):
        images, _ = source.tensors(split)
        return sorted(tuple(int(v) for v in image[:, 0, 0]) for image in images)

    whole = load_dataset(f"imagefolder:{tmp_path}", image_size=32)
    held = load_dataset(f"imagefolder:{tmp_path}", image_size=32, holdout=3)
    assert (held.n_train, held.n_holdout, held.n_test) == (7, 3, 4)
    assert sorted(colours(held, "train") + colours(held, "holdout")) == colours(whole, "train")
    assert not set(colours(held, "train")) & set(colours(held, "holdout"))
    x, y = next(held.eval_batches("holdout", 8, "cpu"))
    assert x.shape == (3, 3, 32, 32) and y.shape == (3,)
