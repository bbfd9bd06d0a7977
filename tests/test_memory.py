"""Memory said before it is spent: the decision, the measurement, and the refusal of a
train or attack command that cannot fit, before it writes anything."""

from __future__ import annotations

import math
import re
import shutil

import pytest
import torch
from torch import nn

from helpers import assert_one_line_error, one_thread, run_cli
from robustmix.core import memory as mem
from robustmix.core.errors import ConfigError
from robustmix.models import build_model
from robustmix.models.memory import measure, saved_bytes

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ---------------------------------------------------------------------------- the decision


def test_the_largest_batch_is_the_last_one_whose_peak_is_within_the_memory():
    assert mem.largest_batch(per_example=100, fixed=1_000, available=10_000) == 90
    assert mem.largest_batch(per_example=100, fixed=1_000, available=10_099) == 90
    assert mem.largest_batch(per_example=100, fixed=1_000, available=10_100) == 91
    assert mem.largest_batch(per_example=100, fixed=1_000, available=1_099) == 0
    assert mem.largest_batch(per_example=100, fixed=20_000, available=10_000) == 0
    # exactly 20 examples' room, where floating division gives 19.999...
    assert mem.largest_batch(per_example=610766.4, fixed=0, available=12215328) == 20


@pytest.mark.parametrize("batch", [1, 7, 64, 500])
def test_an_estimate_fits_at_its_largest_batch_and_not_one_above(batch):
    found = mem.Estimate("cpu", batch, per_example=1234.5, fixed=50_000, data=7_000,
                         available=400_000)
    largest = found.largest_batch()
    assert largest == math.floor((400_000 - 57_000) / 1234.5)
    assert mem.Estimate("cpu", largest, 1234.5, 50_000, 7_000, 400_000).fits
    assert not mem.Estimate("cpu", largest + 1, 1234.5, 50_000, 7_000, 400_000).fits
    assert found.fits == (batch <= largest)


def test_the_largest_image_size_scales_the_activations_and_data_by_area():
    # at 32 px: 100 examples of 1,000 bytes and 20,000 bytes of images; at 16 px a quarter
    found = mem.Estimate("cpu", 100, per_example=1_000, fixed=5_000, data=20_000,
                         available=5_000 + (100_000 + 20_000) // 4, image_size=32)
    assert not found.fits
    assert found.largest_image_size() == 16
    assert found.largest_image_size(step=1) == 16
    roomier = mem.Estimate("cpu", 100, 1_000, 5_000, 20_000, 5_000 + 120_000 // 4 - 1,
                           image_size=32)
    assert roomier.largest_image_size(step=1) == 15


def test_unknown_memory_never_refuses():
    found = mem.Estimate("mps", 10 ** 6, per_example=10 ** 9, fixed=0, available=None)
    assert found.fits and mem.refusal(found, {"batch_size": 1}) is None


def test_the_refusal_is_one_line_with_the_estimate_what_is_available_and_the_knob():
    found = mem.Estimate("cpu", 128, per_example=200 * 2 ** 20, fixed=2 ** 30, data=0,
                         available=10 * 2 ** 30, image_size=224,
                         parts=(("weights", 2 ** 30),))
    error = mem.refusal(found, {"batch_size": 46, "image_size": 0})
    assert isinstance(error, ConfigError) and error.field == "batch_size"
    text = str(error)
    assert "\n" not in text
    assert text.startswith("batch_size 128 needs about 26.0 GiB on cpu")
    assert "10.0 GiB available" in text and "weights 1.00 GiB" in text
    assert "batch_size 46 would fit" in text and "image_size" not in text
    assert mem.NO_CHECK in text and error.mentions == ("batch_size", "image_size")
    nothing = mem.refusal(found, {"batch_size": 0})
    assert "not even one example fits" in str(nothing)


def test_the_check_can_be_switched_off(monkeypatch):
    found = mem.Estimate("cpu", 10, per_example=10, fixed=0, available=1)
    monkeypatch.setenv(mem.NO_CHECK, "1")
    mem.refuse_unless_fits(found, {"batch_size": 0})
    monkeypatch.setenv(mem.NO_CHECK, "0")
    with pytest.raises(ConfigError, match="not even one example"):
        mem.refuse_unless_fits(found, {"batch_size": 0})


# ---------------------------------------------------------------------------- free memory


def _write(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def test_the_cpu_has_the_least_of_memavailable_and_the_cgroups_rooms(tmp_path):
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    _write(proc, meminfo="MemTotal: 1000 kB\nMemAvailable: 900 kB\n")
    _write(proc / "self", cgroup="0::/job/step\n")
    assert mem.cpu_available(proc, root) == 900 * 1024            # no cgroup files at all
    # v2: the step's limit leaves 300 kB (+ 100 kB of reclaimable cache); the job's 50 kB
    _write(root / "job" / "step", memory_max="600000", memory_current="400000",
           memory_stat="anon 1\ninactive_file 100000\n")
    assert mem.cpu_available(proc, root) == 300_000
    _write(root / "job", memory_max="1000000", memory_current="950000")
    assert mem.cpu_available(proc, root) == 50_000
    _write(root / "job", memory_max="max", memory_current="950000")
    assert mem.cpu_available(proc, root) == 300_000


def test_a_cgroup_v1_limit_counts_and_an_unset_one_does_not(tmp_path):
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    _write(proc, meminfo="MemAvailable: 4000 kB\n")
    _write(proc / "self", cgroup="5:cpu:/\n4:memory:/box\n0::/\n")
    _write(root / "memory" / "box", memory_limit_in_bytes="9223372036854771712",
           memory_usage_in_bytes="10")
    assert mem.cpu_available(proc, root) == 4000 * 1024
    _write(root / "memory" / "box", memory_limit_in_bytes="3000000",
           memory_usage_in_bytes="2000000", memory_stat="total_inactive_file 500\n")
    assert mem.cpu_available(proc, root) == 1_000_500


def test_this_machine_reports_some_free_memory():
    free = mem.available_bytes(torch.device("cpu"))
    assert free is None or free > 0


# ---------------------------------------------------------------------------- measurement


def test_the_count_equals_the_saved_tensors_of_a_tiny_model_by_hand():
    # conv (saves its input; its weight is the model's), relu (saves its output, which the
    # linear layer saves again as a view: one storage), linear (saves that view and its weight)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 3))
    for n in (1, 5):
        x = torch.rand(n, 1, 8, 8)
        image, activation, logits = n * 64 * 4, n * 4 * 64 * 4, n * 3 * 4
        assert saved_bytes(model, x) == image + activation + 2 * activation + 2 * logits
        attacked = x.clone().requires_grad_(True)
        assert saved_bytes(model.eval(), attacked) == image + 3 * activation + 2 * logits
        model.train()


def test_the_bytes_per_example_do_not_depend_on_the_batch_measured():
    model = build_model("preactresnet18", num_classes=10, in_channels=3, mean=(0.5,) * 3,
                        std=(0.25,) * 3)
    per = [measure(model, (3, 16, 16), "cpu", train=True, examples=n).per_example
           for n in (2, 4, 8)]
    # only batch norm's per-channel statistics do not grow with the batch
    assert max(per) / min(per) < 1.01, per


@pytest.mark.parametrize("arch", ["smallcnn", "preactresnet18", "resnet20"])
def test_a_conv_nets_activations_grow_with_the_images_area(arch):
    model = build_model(arch, num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    small, large = (measure(model, (3, side, side), "cpu", train=True).per_example
                    for side in (16, 32))
    assert large / small == pytest.approx(4.0, rel=0.02), (small, large)


def test_measuring_leaves_the_model_and_the_random_numbers_as_they_were():
    model = build_model("smallcnn", num_classes=10, in_channels=1, mean=(0.5,), std=(0.25,))
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    measure(model, (1, 16, 16), "cpu", train=True)
    assert not model.training
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------- the commands


def _pretend_free(monkeypatch, free):
    """The machine has ``free`` bytes besides what the run holds (for every check)."""
    monkeypatch.setattr(mem, "available_bytes", lambda device: free)


def _train_estimate(argv):
    from robustmix.app.cli import build_parser
    from robustmix.app.commands import _train_config
    from robustmix.training.memory import estimate_run

    return estimate_run(_train_config(build_parser().parse_args(argv)))


def test_train_that_cannot_fit_is_refused_in_one_line_and_writes_nothing(
        capsys, monkeypatch, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--quiet", "--epochs", "1", "--out", str(out)]
    _pretend_free(monkeypatch, 0)
    found = _train_estimate(argv)  # available: only what the run holds itself
    # room for exactly 16 of the 64 examples
    _pretend_free(monkeypatch, math.ceil(found.fixed + found.data + 16 * found.per_example)
                  - found.available)
    code, _, err = run_cli(capsys, *argv)
    line = assert_one_line_error(code, err, "robustmix train: error: --batch-size 64 needs "
                                 "about", " MiB available", mem.NO_CHECK)
    assert re.search(r": --batch-size 16 (or --image-size \d+ )?would fit", line), line
    assert not out.exists()


def test_an_overwrite_that_cannot_fit_keeps_the_run_it_would_replace(
        capsys, monkeypatch, tmp_path, trained):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _pretend_free(monkeypatch, 0)
    code, _, err = run_cli(capsys, "train", "--quiet", "--epochs", "1", "--out", str(out),
                           "--overwrite")
    assert_one_line_error(code, err, "needs about", mem.NO_CHECK)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.slow
def test_train_runs_anyway_when_the_check_is_off(capsys, monkeypatch, tmp_path):
    _pretend_free(monkeypatch, 0)
    monkeypatch.setenv(mem.NO_CHECK, "1")
    code, _, err = run_cli(capsys, "train", "--quiet", "--epochs", "1", "--out",
                           tmp_path / "run")
    assert code == 0, err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from robustmix.app.cli import main

    out = tmp_path_factory.mktemp("memory") / "run"
    with one_thread():
        assert main(["train", "--quiet", "--epochs", "1", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_attack_that_cannot_fit_is_refused_in_one_line_and_writes_nothing(
        finished_run, capsys, monkeypatch):
    from robustmix.attacks import memory as attack_memory
    from robustmix.attacks.runner import load_subset
    from robustmix.attacks.sweep import AttackConfig

    before = sorted(p.name for p in finished_run.iterdir())
    subset = load_subset(finished_run, torch.device("cpu"), 100, None, False, echo=None)
    _pretend_free(monkeypatch, 0)
    found = attack_memory.estimate(subset.model, tuple(subset.x.shape[1:]), 100,
                                   AttackConfig(batch_size=50), "cpu")
    _pretend_free(monkeypatch, math.ceil(found.fixed + found.data + 20 * found.per_example)
                  - found.available)
    code, _, err = run_cli(capsys, "attack", "--quiet", finished_run, "--attacks",
                           "fgsm", "--n-examples", 100, "--batch-size", 50)
    assert_one_line_error(code, err, "robustmix attack: error: --batch-size 50 needs about",
                          "available: --batch-size 20 would fit", mem.NO_CHECK)
    assert sorted(p.name for p in finished_run.iterdir()) == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_estimate_is_above_the_peak_of_real_training_steps(tmp_path):
    import itertools

    import numpy as np

    from robustmix.core.config import TrainConfig
    from robustmix.training import memory as train_memory
    from robustmix.training.trainer import Trainer, train_step

    config = TrainConfig(arch="preactresnet18", image_size=32, batch_size=64, device="cuda")
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.setup()
    trainer.prepare_step()
    found = train_memory.estimate(trainer.config, trainer.data, trainer.model, trainer.device)
    rng = np.random.default_rng(0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    batches = trainer.data.train_batches(rng, config.batch_size, trainer.device, trainer.augment)
    for x, y in itertools.islice(batches, 3):
        train_step(trainer.net, trainer.optimizer, trainer.mixer, x, y, rng, lr=0.1,
                   config=trainer.config, num_classes=trainer.data.num_classes,
                   memory_format=trainer.memory_format, saliency_fn=trainer.saliency_fn)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()   # weights, data, state and activations
    assert peak <= found.needed <= 3 * peak, (peak, found)
