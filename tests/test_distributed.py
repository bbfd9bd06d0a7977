"""torchrun: sharded epochs, DDP training and the sharded attack, on the CPU with gloo.

The cheap parts are checked in this process: the ranks' shards make up the unsharded
batches exactly, and attack results put back together from strided shards are those of
one process. The commands themselves run under the real torchrun with 2 processes (and
1, which must give the single-process run's bits), with one intra-op thread each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import robustmix
from robustmix.attacks import AttackConfig, PGDSettings, parse_eps
from robustmix.attacks.runner import merge_results, robustness
from robustmix.attacks.table import read_rows
from robustmix.core.runs import ROBUSTNESS
from robustmix.core import distributed, runs
from robustmix.app.cli import main
from robustmix.data import Augment, load_dataset
from robustmix.core.errors import UsageError
from robustmix.models.accuracy import evaluate
from robustmix.models.weights import load_model

from helpers import OneAtATime, one_thread

TRAIN = ["train", "--quiet", "--image-size", "8", "--batch-size", "64", "--mix", "cutmix",
         "--log-interval", "5"]
# Batches of one: each example is attacked alone, with the same shapes and kernels in one
# process and in each rank, so equal verdicts hold by construction. In batches of several,
# a rank's batches hold other examples and sizes than the single process's, and a kernel
# that sums in another order (batch-size dependent blocking) can move a borderline verdict.
ATTACK = ["attack", "--quiet", "--attacks", "fgsm,pgd", "--eps", "8/255,32/255",
          "--pgd-steps", "3", "--n-examples", "61", "--batch-size", "1"]
ACCURACY_COLUMNS = ("attack", "settings", "norm", "eps", "n_examples", "n_attacked",
                    "clean_acc", "robust_acc", "checks")
ONE_THREAD = {name: "1" for name in ("ROBUSTMIX_THREADS", "OMP_NUM_THREADS",
                                     "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def torchrun(nproc: int, *argv, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(nproc), "-m", "robustmix", *map(str, argv)]
    return subprocess.run(command, env={**os.environ, **ONE_THREAD}, capture_output=True,
                          text=True, timeout=timeout, **popen)


def accuracies(run_dir: Path) -> list[tuple]:
    return [tuple(row[c] for c in ACCURACY_COLUMNS) for row in read_rows(run_dir / ROBUSTNESS)]


# ---------------------------------------------------------------------------- in process


@pytest.mark.parametrize("augment", [Augment(pad=2, flip=True), Augment(crop_scale=(0.3, 1))])
def test_the_ranks_shards_make_up_the_unsharded_batches(augment):
    data = load_dataset("digits", image_size=12)
    whole = list(data.train_batches(np.random.default_rng(5), 96, "cpu", augment))
    shards = [list(data.train_batches(np.random.default_rng(5), 96, "cpu", augment,
                                      shard=(rank, 3))) for rank in range(3)]
    assert len(whole) == 1400 // 96
    for step, (x, y) in enumerate(whole):
        assert all(shard[step][0].shape[0] == 32 for shard in shards)
        assert torch.equal(torch.cat([shard[step][0] for shard in shards]), x)
        assert torch.equal(torch.cat([shard[step][1] for shard in shards]), y)


def test_the_ranks_evaluation_batches_interleave_to_the_unsharded_ones(tmp_path):
    from PIL import Image

    for split, count in (("train", 3), ("val", 7)):
        for label, name in enumerate(("ant", "bee")):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (20, 20), (30 * i, 100 * label, 7)).save(
                    tmp_path / split / name / f"{i}.png")
    for data in (load_dataset("digits", image_size=8),
                 load_dataset(f"imagefolder:{tmp_path}", image_size=16)):
        whole = list(data.eval_batches("test", 4, "cpu"))
        shards = [list(data.eval_batches("test", 4, "cpu", shard=(rank, 3)))
                  for rank in range(3)]
        assert sum(map(len, shards)) == len(whole) and len(whole) % 3 != 0
        for number, (x, y) in enumerate(whole):
            xs, ys = shards[number % 3][number // 3]
            assert torch.equal(xs, x) and torch.equal(ys, y), (data.name, number)


def test_a_batch_that_does_not_split_over_the_ranks_is_refused():
    data = load_dataset("digits", image_size=8)
    with pytest.raises(UsageError, match="cannot be split evenly over 3"):
        data.train_batches(np.random.default_rng(0), 64, "cpu", Augment(), shard=(0, 3))


@pytest.mark.slow
def test_results_from_strided_shards_merge_to_the_one_process_result(one_thread_cutmix_run):
    model = OneAtATime(load_model(one_thread_cutmix_run))
    data = load_dataset("digits", image_size=8)
    x_all, y_all = data.tensors("test")
    chosen = torch.arange(0, 397, 5)
    x, y = x_all[chosen].float() / 255, y_all[chosen]
    config = AttackConfig(attacks=("fgsm", "pgd"), eps=tuple(parse_eps("4/255,16/255")),
                          batch_size=16, pgd=PGDSettings(steps=3))
    whole = robustness(model, x, y, config, indices=chosen)
    parts = [robustness(model, x[r::3], y[r::3], config, indices=chosen[r::3])
             for r in range(3)]
    merged = merge_results(parts)
    assert torch.equal(merged.clean, whole.clean)
    assert merged.robust.keys() == whole.robust.keys()
    for key in whole.robust:
        assert torch.equal(merged.robust[key], whole.robust[key]), key
    assert [(r.attack, r.eps.text, r.n_examples, r.n_attacked, r.clean_acc, r.robust_acc)
            for r in merged.rows] == \
        [(r.attack, r.eps.text, r.n_examples, r.n_attacked, r.clean_acc, r.robust_acc)
         for r in whole.rows]
    assert 0 < whole.rows[-1].robust_acc < whole.rows[0].clean_acc, "a test that can fail"


def test_fewer_examples_than_processes_is_refused_on_every_rank(one_thread_cutmix_run,
                                                                monkeypatch):
    """With 2 examples and 3 ranks one rank's share would be empty: every rank refuses
    together (a shared error, printed once) before any attack runs."""
    from robustmix.attacks import attack_run
    monkeypatch.setattr(distributed, "current", lambda: distributed.Place(1, 3))
    config = AttackConfig(attacks=("fgsm",), eps=tuple(parse_eps("8/255")))
    with pytest.raises(UsageError, match="2 test example.* among 3 processes") as info:
        attack_run(one_thread_cutmix_run, config, n_examples=2)
    assert info.value.shared
    assert not (one_thread_cutmix_run / ROBUSTNESS).exists()


@pytest.fixture(scope="module")
def one_thread_cutmix_run(tmp_path_factory):
    """A single-process run with one thread, as the torchrun processes use."""
    out = tmp_path_factory.mktemp("single") / "run"
    with one_thread():
        assert main(TRAIN + ["--epochs", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture
def group_of_one(tmp_path, monkeypatch):
    """A real gloo process group of one process, as torchrun --nproc_per_node 1 makes."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store",
                                         rank=0, world_size=1)
    yield
    distributed.leave()


def test_on_main_hands_over_results_and_errors(group_of_one):
    assert distributed.current().active and distributed.current().world == 1
    assert distributed.on_main(lambda: {"epoch": 3}) == {"epoch": 3}

    def refused():
        raise UsageError("no such file")

    with pytest.raises(UsageError, match="no such file") as caught:
        distributed.on_main(refused)
    assert caught.value.shared, "raised on every rank, printed by rank 0 alone"

    def bug():
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):  # rank 0 raises its own error; the others stop
        distributed.on_main(bug)
    assert distributed.on_main(lambda: 5) == 5, "the group is still usable"


def test_sync_bn_on_the_cpu_is_one_line_and_exit_2(group_of_one, tmp_path, capsys):
    code = main(TRAIN + ["--epochs", "1", "--sync-bn", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "--sync-bn needs CUDA" in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("command", [["study", "--dry-run"], ["report", "x"],
                                     ["masks", "--out", "m"]])
def test_single_process_commands_refuse_torchrun(monkeypatch, capsys, command):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "runs in one process; under torchrun run train or attack" in err, err


# Each compiled step is checked against an eager step taken from the same state (weights,
# momentum buffers, batch-norm buffers, random generator) on the same batch. Whole runs are
# not compared: SGD on mixed batches amplifies a rounding-level difference ~10^3-10^4-fold
# over one epoch (an eager run with 2 intra-op threads ends up to 2e-3 from one with 1
# thread), so their distance measures the dynamics and the CPU's kernels, not --compile.
#
# Within one step the two differ only in the order of the compiled forward's and backward's
# float32 sums; the loss, the optimizer and the weights' rounding are the same eager code:
#   parameter  w' = w - lr*b, b = momentum*buf + g + wd*w from the same buf and w, so
#              |w'_c - w'_e| <= lr*|g_c - g_e| + one rounding of w' (<= eps_f32*|w'|);
#   buffer     running mean/var are averages of float32 batch reductions: they differ by a
#              rounding error relative to their own size;
#   loss       a float32 reduction of the logits, relative to its size.
# Reordering a float32 sum of k terms moves it by ~u*sqrt(k) of its scale (u = 2^-24). A
# gradient entry here sums k <= 64*8*8 = 4096 products and carries the error of <= 4 layers
# of backpropagation: 6e-8 * 64 * 4 ~ 1.5e-5 of max|g| per computation, ~3e-5 between two.
# RHO = 1e-4 covers that with margin and lies far below what a compile bug gives (a wrong,
# stale or missing gradient or buffer update is O(1) of the step). For scale: eager steps
# that legitimately reorder sums (2 threads instead of 1, the batch reversed) differed by
# at most 4.4e-6 * lr*max|g| beyond the rounding of w'; a 1e-6 relative error in the
# weights before a step exceeds the bound 500-fold.
RHO = 1e-4
F32_EPS = torch.finfo(torch.float32).eps


@pytest.mark.slow
def test_compile_trains_the_same_model(tmp_path, monkeypatch):
    """--compile through dynamo and AOT autograd (the eager backend: no C compiler needed):
    every compiled training step gives the eager step's numbers, to float32 rounding."""
    import copy

    from robustmix.training import trainer as train_module

    real_step = train_module.train_step
    checked = []

    def step_checked_against_eager(net, optimizer, mixer, x, y, rng, *, lr, **kwargs):
        model = net._orig_mod  # net is torch.compile's wrapper of the model
        eager = copy.deepcopy(model)
        eager_optimizer = torch.optim.SGD(eager.parameters(), lr=lr)
        eager_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        eager_rng = np.random.default_rng()
        eager_rng.bit_generator.state = rng.bit_generator.state
        eager_loss = real_step(eager, eager_optimizer, mixer, x, y, eager_rng, lr=lr,
                               **kwargs)[0]
        result = real_step(net, optimizer, mixer, x, y, rng, lr=lr, **kwargs)
        assert rng.bit_generator.state == eager_rng.bit_generator.state
        assert abs(result[0].item() - eager_loss.item()) <= RHO * abs(eager_loss.item())
        grads = {name: p.grad for name, p in eager.named_parameters()}
        for (name, c), e in zip(model.state_dict().items(), eager.state_dict().values()):
            if not e.is_floating_point():
                assert torch.equal(c, e), name
                continue
            scale = lr * grads[name].abs().max() if name in grads else e.abs().max()
            bound = RHO * scale + F32_EPS * torch.maximum(c.abs(), e.abs())
            assert ((c - e).abs() <= bound).all(), (f"step {len(checked) + 1}", name)
        checked.append(lr)
        return result

    monkeypatch.setattr(train_module, "train_step", step_checked_against_eager)
    monkeypatch.setenv("ROBUSTMIX_COMPILE_BACKEND", "aot_eager")
    out = tmp_path / "compiled"
    assert main(TRAIN + ["--epochs", "1", "--compile", "--out", str(out)]) == 0
    assert len(checked) == 1400 // 64, "every step of the epoch was checked"
    assert runs.read_config(out)["train"]["compile"] is True


@pytest.mark.slow
def test_a_compiler_that_fails_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from torch._dynamo import register_backend

    @register_backend(name="robustmix_test_broken")
    def broken(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setenv("ROBUSTMIX_COMPILE_BACKEND", "robustmix_test_broken")
    code = main(TRAIN + ["--epochs", "1", "--compile", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--compile failed" in err and "no C++ compiler found" in err, err
    assert not runs.is_complete(tmp_path / "run")

    monkeypatch.setenv("ROBUSTMIX_COMPILE_BACKEND", "no_such_backend")
    code = main(TRAIN + ["--epochs", "1", "--compile", "--out", str(tmp_path / "other")])
    err = capsys.readouterr().err
    assert code == 2 and "no_such_backend" in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_torchrun_with_one_process_gives_the_single_process_bits(one_thread_cutmix_run, tmp_path):
    out = tmp_path / "run"
    done = torchrun(1, *TRAIN, "--epochs", "1", "--out", out)
    assert done.returncode == 0, done.stderr
    assert (out / runs.WEIGHTS).read_bytes() == (one_thread_cutmix_run / runs.WEIGHTS).read_bytes()


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    out = base / "run"
    done = torchrun(2, *TRAIN, "--epochs", "2", "--out", out, cwd=base)
    assert done.returncode == 0, done.stderr
    return base, out, done


@pytest.mark.slow
def test_a_two_process_run_writes_one_run_directory_that_loads(two_process_run):
    base, out, done = two_process_run
    assert sorted(p.name for p in base.iterdir()) == ["run"], "only rank 0 writes"
    assert runs.is_complete(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [runs.CONFIG, runs.METRICS, runs.CHECKPOINT, runs.WEIGHTS])
    config = runs.read_config(out)
    assert config["world_size"] == 2 and config["train"]["batch_size"] == 64
    rows = runs.read_metrics(out / runs.METRICS)
    assert len(rows) == 2 and float(rows[-1]["test_acc"]) > 0.5
    # The ranks evaluated the batches of 2 x 64 test images numbered rank, rank + 2, ... with
    # one thread each; the same batches with one thread here are the same computations, so
    # the accuracy is the same number by construction (one batch of all 397, or another
    # thread count, may sum in another order and flip a near-tie between two classes).
    model = robustmix.load_model(out / runs.WEIGHTS)
    with one_thread():
        accuracy, _ = evaluate(model, load_dataset("digits", image_size=8).eval_batches(
            "test", 2 * 64, "cpu"))
    assert abs(accuracy - float(rows[-1]["test_acc"])) < 1e-6, \
        "the saved model is the one the ranks evaluated together"
    assert done.stdout.count("robustmix train:") == 1, "rank 0 alone prints"


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_same_bits(two_process_run, tmp_path):
    _, expected, _ = two_process_run
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "robustmix", *TRAIN, "--epochs", "2",
               "--out", str(out)]
    process = subprocess.Popen(command, env={**os.environ, **ONE_THREAD},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / runs.CHECKPOINT).exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks, inside epoch 2
    process.wait()
    assert not runs.is_complete(out)
    resumed = torchrun(2, "train", "--quiet", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / runs.WEIGHTS).read_bytes() == (expected / runs.WEIGHTS).read_bytes()
    assert [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")}
            for row in runs.read_metrics(out / runs.METRICS)] == \
        [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")}
         for row in runs.read_metrics(expected / runs.METRICS)]


@pytest.mark.slow
def test_a_two_process_attack_gives_the_single_process_accuracies(one_thread_cutmix_run, tmp_path,
                                                                  capsys):
    import shutil

    single, sharded = tmp_path / "single", tmp_path / "sharded"
    shutil.copytree(one_thread_cutmix_run, single)
    shutil.copytree(one_thread_cutmix_run, sharded)
    with one_thread():  # as each rank
        assert main(ATTACK + [str(single)]) == 0
    done = torchrun(2, *ATTACK, sharded)
    assert done.returncode == 0, done.stderr
    assert accuracies(sharded) == accuracies(single)
    assert {row["robust_acc"] for row in read_rows(single / ROBUSTNESS)} != {"0.000000"}
    assert done.stdout.count("robustmix attack: wrote") == 1
