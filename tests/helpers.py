"""Helpers shared by the test modules (plain functions and classes; the fixtures are in
conftest.py, the forked-command kill harness in kill_harness.py)."""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from robustmix.app.cli import main


def run_cli(capsys, *argv):
    """Run ``robustmix ARGV`` in this process; returns the exit code, stdout and stderr."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse exits by itself
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    """A refusal: exit code 2 and one line holding every fragment, no traceback. Returns
    the line."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def one_thread():
    """One intra-op torch thread in this process (as the forked and torchrun commands use:
    with another count, kernels may split their sums differently and results differ in
    the last bits). A robustmix command run in the block takes 1 thread too
    (``ROBUSTMIX_THREADS``)."""
    threads, chosen = torch.get_num_threads(), os.environ.get("ROBUSTMIX_THREADS")
    torch.set_num_threads(1)
    os.environ["ROBUSTMIX_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if chosen is None:
            os.environ.pop("ROBUSTMIX_THREADS", None)
        else:
            os.environ["ROBUSTMIX_THREADS"] = chosen


# ---------------------------------------------------------------------------- small models


def two_conv_cnn(seed=0, classes=10):
    """Two 3x3 convolutions and a linear layer on 1x8x8 inputs, in eval mode."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, classes)).eval()


def one_conv_cnn(seed=0):
    """One 3x3 convolution and a linear layer on 1x8x8 inputs, 10 classes, in eval mode."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 10)).eval()


class OneAtATime(nn.Module):
    """Runs each example through ``model`` alone, so an example's logits and gradients are
    the same arithmetic whatever batch it arrives in: tests that compare per-example
    verdicts across batch sizes, orders, subsets or ranks' shards are then exact by
    construction (CPU kernels otherwise vectorize and split sums by batch shape)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.cat([self.model(x[i:i + 1]) for i in range(x.shape[0])])


class RunsCode:
    """A pickle payload that, if unpickled, creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def mini_study(out, *, methods=("vanilla", "cutmix"), train=None, attack=None,
               evaluate=None) -> str:
    """A miniature digits study with every kind of step, as TOML: one seed on the CPU,
    APGD (``autoattack``) on a few examples. ``train``, ``attack``, ``evaluate`` override it."""
    import dataclasses

    from robustmix.app.study_config import load_config, to_toml

    base = load_config("digits", None)
    settings = {"epochs": 2, "image_size": 12, **(train or {})}
    plan = {"eps": "8/255,32/255", "pgd_steps": 3, "n_examples": 24,
            "autoattack": "apgd", "autoattack_eps": "32/255",
            "autoattack_examples": 8, "autoattack_seeds": (), **(attack or {})}
    config = dataclasses.replace(
        base, out=str(out), methods=tuple(methods), seeds=(0,), seeds_by_method={},
        device="cpu",
        train=dataclasses.replace(base.train, **settings),
        attack=dataclasses.replace(base.attack, **plan),
        evaluate=dataclasses.replace(base.evaluate,
                                     **{"n_examples": 16, "q_draws": 16, **(evaluate or {})}))
    return to_toml(config)


def interrupted_at(load_dataset, epoch=2, step=3):
    """``load_dataset`` whose training batches raise KeyboardInterrupt at ``step`` of
    ``epoch`` (counted from 1): a run killed mid-epoch, to resume."""
    def load_then_break(*args, **kwargs):
        source = load_dataset(*args, **kwargs)
        real_batches, calls = source.train_batches, {"epochs": 0}

        def batches(*a, **k):
            calls["epochs"] += 1
            for i, batch in enumerate(real_batches(*a, **k)):
                if calls["epochs"] == epoch and i == step:
                    raise KeyboardInterrupt
                yield batch

        source.train_batches = batches
        return source
    return load_then_break
