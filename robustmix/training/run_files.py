"""The run directory as training writes and resumes it: refusing to write over another run,
config.json, the metrics and checkpoint after each epoch, and the checkpoint read back.

Nothing here keeps state: :class:`robustmix.training.trainer.Trainer` passes in what each
step needs. Rank 0 alone calls the writers (through :func:`robustmix.core.distributed.on_main`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustmix.core import distributed, runs
from robustmix.core.config import TrainConfig
from robustmix.core.errors import ConfigError, UsageError
from robustmix.data.sources import HOLDOUT_RULE


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("robustmix", "torch", "torchvision", "numpy", "scikit-learn",
                    "torchattacks", "pyautoattack"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return versions


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def prepare_run_dir(out: Path, *, overwrite: bool, config: TrainConfig | None = None) -> bool:
    """Refuse to write over another run unless asked (``overwrite``: the new run replaces
    it, its files removed by :func:`clear_run_files` once the new run has passed its
    checks, so that a refused run loses nothing).

    Returns True when ``out`` already holds a run with exactly ``config``'s settings, so
    that the same command, rerun after a crash, continues it (or finds it complete).
    """
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} is a file, not a directory")
    if not runs.holds_run(out) or overwrite:
        return False
    differ = ""
    if config is not None and (out / runs.CONFIG).is_file():
        earlier = TrainConfig.from_dict(runs.read_config(out)["train"],
                                        source=str(out / runs.CONFIG))
        if earlier == config:
            return True
        names = [f.name for f in dataclasses.fields(TrainConfig)
                 if getattr(earlier, f.name) != getattr(config, f.name)]
        differ = f" with other settings ({', '.join(names)} differ)"
    raise UsageError(f"{out} already holds a run{differ}; continue it with --resume {out} "
                     "or replace it with --overwrite")


def clear_run_files(out: Path) -> None:
    """Remove an earlier run's files from ``out`` (a fresh run starts there)."""
    for name in runs.RUN_FILES:
        (out / name).unlink(missing_ok=True)


def write_config(out: Path, config: TrainConfig, spec: dict[str, Any], device: torch.device,
                 world: int, data, augment, extra: dict[str, Any] | None = None) -> None:
    """config.json: every setting, the model spec, versions, git commit, the torch threads
    it was started with (the CPU's sums, and so the weights, depend on them), data and
    augment (None where nothing was trained), and ``extra`` entries."""
    runs.write_json(out / runs.CONFIG, {
        "train": config.to_dict(), "model": spec, "versions": _versions(),
        "git_commit": _git_commit(), "device": str(device),
        "world_size": world, "threads": torch.get_num_threads(),
        "dataset": {"name": data.name, "n_train": data.n_train, "n_test": data.n_test,
                    "num_classes": data.num_classes, "channels": data.channels,
                    "height": data.height, "width": data.width,
                    # the image files left out (--skip-bad-images): every later load of
                    # this run leaves out the same ones
                    **({"skipped_images": list(data.skipped)}
                       if getattr(data, "skipped", None) else {}),
                    # the training images set aside to judge convergence (never trained on)
                    **({"holdout": {"n": data.n_holdout, "rule": HOLDOUT_RULE,
                                    "sha256": data.holdout_digest}}
                       if getattr(data, "n_holdout", 0) else {})},
        "augment": None if augment is None else dataclasses.asdict(augment),
        **(extra or {})})


def read_checkpoint(out: Path, config: TrainConfig, model, optimizer,
                    rng: np.random.Generator):
    """On rank 0: load the checkpoint into the run; its state, the earlier metrics, and the
    world size and torch threads it was started with (None where config.json does not
    say), or None when there is no checkpoint."""
    path = out / runs.CHECKPOINT
    if not path.exists():
        return None
    state = runs.load_checkpoint(path)
    epoch = restore_state(state, path, config, model, optimizer, rng)
    started = runs.read_config(out)
    return (state, runs.read_metrics(out / runs.METRICS, epochs=epoch),
            started.get("world_size", 1), started.get("threads"))


def threads_note(out: Path, started_with: int | None, device: torch.device) -> str | None:
    """A note when a CPU run resumes on another torch thread count than it started with
    (its sums then split differently, so its weights leave an uninterrupted run's bits);
    None when they agree, when config.json does not say, or on a GPU."""
    now = torch.get_num_threads()
    if started_with is None or started_with == now or device.type != "cpu":
        return None
    return (f"robustmix train: note: {out} was started with {started_with} torch thread(s) "
            f"and resumes with {now}; it continues, but its weights will differ in the last "
            f"bits from an uninterrupted run's (resume with --threads {started_with} or "
            f"ROBUSTMIX_THREADS={started_with} to continue it exactly)")


def restore_state(state: dict[str, Any], path: Path, config: TrainConfig, model, optimizer,
                  rng: np.random.Generator) -> int:
    """Load a checkpoint's state into the run; returns its epoch. A checkpoint that does
    not fit this run (another model, a damaged state) is a one-line UsageError."""
    try:
        epoch = state["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or \
                not 1 <= epoch <= config.epochs:
            raise ValueError(f"its epoch {epoch!r} is not one of 1..{config.epochs}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = json.loads(state["rng"])
        torch.set_rng_state(state["torch_rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{path} does not fit this run ({first}); start over with "
                         "--overwrite") from None
    if not finite(model):
        raise UsageError(f"{path} holds non-finite weights; start over with --overwrite")
    return epoch


def save_epoch(out: Path, epoch: int, metrics: list[dict[str, Any]], model, optimizer,
               rng: np.random.Generator) -> None:
    """The metrics so far and a checkpoint to resume from after ``epoch`` (0-based), taken
    on every rank and written by rank 0."""
    checkpoint = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "epoch": epoch + 1, "rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state()}
    rows = list(metrics)

    def write_epoch():
        runs.write_csv(out / runs.METRICS, rows, runs.metric_fields(
            bool(rows) and "holdout_acc" in rows[0]))
        runs.save_checkpoint(out / runs.CHECKPOINT, checkpoint)

    distributed.on_main(write_epoch)


def finite(model: torch.nn.Module) -> bool:
    """Whether every floating-point weight and buffer is finite (one host synchronization)."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all()) if tensors else True


def kept(out: Path, epoch: int) -> str:
    """What a diverged run leaves behind, for its error message."""
    if epoch == 0:
        return "no checkpoint was written (it diverged in the first epoch)"
    return f"the last good checkpoint ({out / runs.CHECKPOINT}, epoch {epoch}) is kept"
