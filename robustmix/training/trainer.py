"""The training loop: one model under one MSDA, into a resumable run directory.

The data set lives on the training device; batches are augmented and mixed there; the
loss is the soft-target cross-entropy of the mixed labels. All randomness after model
initialization (epoch order, crops, flips, λ, masks, partners) comes from one
``numpy.random.Generator`` seeded with ``--seed`` and saved in every checkpoint, so a run
killed at any moment and resumed ends with exactly the weights of an uninterrupted run
(on the CPU with the same number of threads; GPU kernels may be non-deterministic).

A loss that turns NaN or infinite stops the run with the epoch and step where it first
did; weights or a test loss that are not finite at the end of an epoch stop it too, so no
checkpoint or weights file ever holds non-finite numbers.

Under torchrun (:mod:`robustmix.core.distributed`) every rank draws the same epoch from that
generator and trains on its slice of each global batch in DistributedDataParallel; each
rank mixes its slice with a generator seeded by (seed, epoch, rank). Rank 0 alone writes.

PuzzleMix needs the saliency of the clean batch: one extra forward and backward pass per
mixed batch (:func:`robustmix.mixing.puzzlemix.input_saliency`, model in eval mode as the
official code, gradient for the input only), which the Mixer asks for through
``saliency_fn``. It draws no random numbers and leaves the parameters' gradients alone.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import json
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from robustmix.core import distributed, runs
from robustmix.core.config import TrainConfig
from robustmix.core.devices import autocast, resolve_device
from robustmix.core.errors import ConfigError, UsageError
from robustmix.data import Augment, load_dataset
from robustmix.mixing.mixer import Mixer
from robustmix.models import build_model, check_arch
from robustmix.mixing.puzzlemix import saliency_of
from robustmix.models.accuracy import evaluate

METRIC_FIELDS = runs.METRIC_FIELDS


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate at a global step: linear warm-up, then cosine or step decay."""
    epoch = step / steps_per_epoch
    if epoch < config.warmup_epochs:
        return config.lr * (step + 1) / (config.warmup_epochs * steps_per_epoch)
    if config.schedule == "cosine":
        done = (epoch - config.warmup_epochs) / (config.epochs - config.warmup_epochs)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
    passed = sum(1 for milestone in config.milestones if epoch >= milestone)
    return config.lr * config.lr_gamma ** passed


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy against soft labels, averaged over the batch."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def soft_labels(y: Tensor, num_classes: int, smoothing: float) -> Tensor:
    off = smoothing / num_classes
    return torch.full((y.shape[0], num_classes), off, device=y.device).scatter_(
        1, y.unsqueeze(1), 1.0 - smoothing + off)


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


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    train_acc: float
    test_acc: float
    seconds: float
    resumed_from: int = 0


def prepare_run_dir(out: Path, *, overwrite: bool, config: TrainConfig | None = None) -> bool:
    """Refuse to write over another run unless asked; with ``overwrite`` clear its files.

    Returns True when ``out`` already holds a run with exactly ``config``'s settings, so
    that the same command, rerun after a crash, continues it (or finds it complete).
    """
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} is a file, not a directory")
    if not runs.holds_run(out):
        return False
    if overwrite:
        for name in runs.RUN_FILES:
            (out / name).unlink(missing_ok=True)
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


def _restore(state: dict[str, Any], path: Path, config: TrainConfig, model, optimizer,
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
    if not _finite(model):
        raise UsageError(f"{path} holds non-finite weights; start over with --overwrite")
    return epoch


def _finite(model: torch.nn.Module) -> bool:
    """Whether every floating-point weight and buffer is finite (one host synchronization)."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all()) if tensors else True


def _kept(out: Path, epoch: int) -> str:
    if epoch == 0:
        return "no checkpoint was written (it diverged in the first epoch)"
    return f"the last good checkpoint ({out / runs.CHECKPOINT}, epoch {epoch}) is kept"


def train(config: TrainConfig, out: str | Path, *, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Train one model into ``out``; with ``resume`` continue from its checkpoint."""
    trainer = Trainer(config, out, resume=resume, progress=progress)
    trainer.setup()
    trainer.restore()
    trainer.prepare_step()
    started = time.perf_counter()
    for epoch in range(trainer.start_epoch, trainer.config.epochs):
        trainer.train_epoch(epoch)
        trainer.evaluate_epoch(epoch)
        trainer.save_epoch(epoch)
    return trainer.finish(started)


@dataclass
class _Epoch:
    """One epoch's running sums; they stay on the device until a log interval ends."""
    index: int
    started: float
    bar: Any
    loss_sum: Tensor
    correct: Tensor
    first_bad: Tensor  # the 1-based step whose loss first was not finite; 0: none yet
    bad_loss: Tensor
    seen: int = 0
    lr: float = 0.0
    train_seconds: float = 0.0

    def add(self, step: int, loss: Tensor, logits: Tensor, target: Tensor, y: Tensor) -> None:
        """Count one step's loss and hits without waiting for the device."""
        self.loss_sum += loss * y.shape[0]
        newly_bad = (self.first_bad == 0) & ~torch.isfinite(loss)
        self.first_bad = torch.where(newly_bad, step + 1, self.first_bad)
        self.bad_loss = torch.where(newly_bad, loss.float(), self.bad_loss)
        self.correct += (logits.argmax(1) == target.argmax(1)).sum()
        self.seen += y.shape[0]


class Trainer:
    """One training run with a visible lifecycle: :meth:`setup` (data, model, optimizer,
    mixer), :meth:`restore` (or a fresh config.json), :meth:`prepare_step`, then per epoch
    :meth:`train_epoch`, :meth:`evaluate_epoch` and :meth:`save_epoch`, and :meth:`finish`.
    The calls must come in this order: the random draws follow it."""

    def __init__(self, config: TrainConfig, out: str | Path, *, resume: bool = False,
                 progress: bool = True):
        config.validate()
        if check_arch(config.arch) != config.arch:
            config = dataclasses.replace(config, arch=check_arch(config.arch))
        self.config = config
        self.out = Path(out)
        self.resume = resume
        self.place = distributed.current()
        self.progress = progress and self.place.is_main
        self.checkpoint_path = self.out / runs.CHECKPOINT
        self.metrics: list[dict[str, Any]] = []
        self.start_epoch = 0

    # ------------------------------------------------------------------------ set-up

    def setup(self) -> None:
        """Check the settings against the processes, then load data, model and optimizer."""
        config, place = self.config, self.place
        self.device = distributed.device_for(resolve_device(config.device), place)
        if config.sync_bn and place.active and self.device.type != "cuda":
            raise distributed.shared_error(ConfigError(
                "sync_bn", "needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only; drop it to "
                "train on the CPU"))
        local_batch = config.batch_size // place.world
        if config.batch_size % place.world or (local_batch < 2 and config.mix.mix != "vanilla"):
            raise distributed.shared_error(ConfigError(
                "batch_size", f"{config.batch_size} is the global batch; under torchrun it "
                f"must be a multiple of the {place.world} processes, with at least 2 examples "
                "each when mixing"))
        self._setup_data()
        self._setup_model()
        self._setup_optimizer()
        self.rng = np.random.default_rng(config.seed)

    def _setup_data(self) -> None:
        config = self.config
        download = config.download
        if download and self.place.active:  # once, on rank 0; torchvision does not write atomically
            distributed.on_main(lambda: load_dataset(config.dataset, data_dir=config.data_dir,
                                                     download=True) and None)
            download = False
        data = load_dataset(config.dataset, data_dir=config.data_dir,
                            image_size=config.image_size, download=download, device=self.device)
        self.augment = Augment(
            pad=data.default_augment.pad if config.pad is None else config.pad,
            flip=data.default_augment.flip if config.flip is None else config.flip,
            crop_scale=config.crop_scale or data.default_augment.crop_scale)
        self.steps_per_epoch = data.n_train // config.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError("batch_size", f"{config.batch_size} is larger than the training "
                              f"set ({data.n_train} images)")
        self.data = data

    def _setup_model(self) -> None:
        config, data = self.config, self.data
        torch.manual_seed(config.seed)
        model = build_model(config.arch, num_classes=data.num_classes, in_channels=data.channels,
                            mean=data.mean, std=data.std)
        self.spec = model.config
        self.memory_format = (torch.channels_last
                              if config.channels_last and self.device.type == "cuda"
                              else torch.preserve_format)
        model = model.to(device=self.device, memory_format=self.memory_format)
        if config.sync_bn and self.place.active:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model

    def _setup_optimizer(self) -> None:
        """SGD, and the Mixer with the saliency pass that PuzzleMix asks for."""
        config = self.config
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum,
            nesterov=config.nesterov, weight_decay=config.weight_decay)
        self.mixer = Mixer(config.mix)
        self.mixer.check_image_size(self.data.height, self.data.width)
        self.saliency_fn = None
        if self.mixer.needs_saliency:
            self.saliency_fn = saliency_of(self.model, amp=config.amp)

    # ------------------------------------------------------------------------ restore

    def restore(self) -> None:
        """With ``resume``, continue from the checkpoint (read on rank 0, sent to every rank);
        otherwise write the run's config.json."""
        restored = distributed.on_main(self._read_checkpoint)
        if restored is None:
            distributed.on_main(self._write_config)
            return
        state, self.metrics, started_with = restored
        self.start_epoch = state["epoch"]
        if not self.place.is_main:
            _restore(state, self.checkpoint_path, self.config, self.model, self.optimizer,
                     self.rng)
        if started_with != self.place.world and self.progress:
            print(f"robustmix train: note: {self.out} was started with {started_with} "
                  f"processes and resumes with {self.place.world}; it continues, but each "
                  "rank's mixing draws and batch-norm slices differ from an uninterrupted "
                  "run's")

    def _read_checkpoint(self):
        """On rank 0: the checkpoint's state, earlier metrics and world size, or None."""
        if not (self.resume and self.checkpoint_path.exists()):
            return None
        state = runs.load_checkpoint(self.checkpoint_path)
        epoch = _restore(state, self.checkpoint_path, self.config, self.model, self.optimizer,
                         self.rng)
        return (state, runs.read_metrics(self.out / runs.METRICS, epochs=epoch),
                runs.read_config(self.out).get("world_size", 1))

    def _write_config(self) -> None:
        data = self.data
        runs.write_json(self.out / runs.CONFIG, {
            "train": self.config.to_dict(), "model": self.spec, "versions": _versions(),
            "git_commit": _git_commit(), "device": str(self.device),
            "world_size": self.place.world,
            "dataset": {"name": data.name, "n_train": data.n_train, "n_test": data.n_test,
                        "num_classes": data.num_classes, "channels": data.channels,
                        "height": data.height, "width": data.width},
            "augment": dataclasses.asdict(self.augment)})

    def prepare_step(self) -> None:
        """What each step calls; after :meth:`restore`, since DistributedDataParallel starts
        every rank from rank 0's weights."""
        self.net = _training_module(self.model, self.config, self.device, self.place)
        self.step_fn = (_compile_errors_as_usage(train_step) if self.config.compile
                        else train_step)

    # ------------------------------------------------------------------------ epochs

    def train_epoch(self, epoch: int) -> None:
        """One pass over the training set, one host synchronization per log interval."""
        config, place, device = self.config, self.place, self.device
        self.model.train()
        # Alone, one generator drives everything. Under torchrun every rank draws the same
        # epoch (order, crops, flips) from it and takes its slice of each global batch, and
        # mixes its slice with draws of its own, reseeded per epoch so that resume is exact.
        mix_rng = self.rng if place.world == 1 else np.random.default_rng(
            [config.seed, epoch, place.rank])
        self.epoch_state = state = self._start_epoch(epoch)
        batches = self.data.train_batches(self.rng, config.batch_size, device, self.augment,
                                          shard=(place.rank, place.world))
        for step, (x, y) in enumerate(batches):
            state.lr = learning_rate(config, epoch * self.steps_per_epoch + step,
                                     self.steps_per_epoch)
            loss, logits, target = self.step_fn(
                self.net, self.optimizer, self.mixer, x, y, mix_rng, lr=state.lr,
                config=config, num_classes=self.data.num_classes,
                memory_format=self.memory_format, saliency_fn=self.saliency_fn)
            state.add(step, loss, logits, target, y)
            if (step + 1) % config.log_interval == 0 or step + 1 == self.steps_per_epoch:
                self._log_interval(state, step)
        state.train_seconds = time.perf_counter() - state.started

    def _start_epoch(self, epoch: int) -> _Epoch:
        device = self.device
        started = time.perf_counter()
        return _Epoch(
            index=epoch, started=started,
            loss_sum=torch.zeros((), device=device),
            correct=torch.zeros((), device=device, dtype=torch.long),
            first_bad=torch.zeros((), device=device, dtype=torch.long),
            bad_loss=torch.zeros((), device=device),
            bar=tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.config.epochs}",
                     disable=not self.progress, leave=True, dynamic_ncols=True))

    def _log_interval(self, state: _Epoch, step: int) -> None:
        """The one host synchronization per interval (with the ranks' sums): stop on a loss
        that is not finite, else update the progress bar."""
        loss_total, correct_total, seen_total = _totals(state.loss_sum, state.correct,
                                                        state.seen)
        mean_loss = loss_total / seen_total
        if not math.isfinite(mean_loss):
            _diverged(state.first_bad, state.bad_loss, step, mean_loss, state.index, self.out)
        elapsed = time.perf_counter() - state.started
        state.bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{correct_total / seen_total:.1%}",
                              img_s=f"{seen_total / elapsed:.0f}", refresh=False)
        state.bar.update(step + 1 - state.bar.n)

    def evaluate_epoch(self, epoch: int) -> None:
        """Test rank 0's model, stop if it or its test loss is not finite, add the metrics."""
        state, config, place = self.epoch_state, self.config, self.place
        loss_total, correct_total, seen_total = _totals(state.loss_sum, state.correct,
                                                        state.seen)
        distributed.broadcast_buffers(self.model)  # every rank evaluates and saves rank 0's
        test_acc, test_loss = evaluate(
            self.model, self.data.eval_batches("test", 2 * config.batch_size, self.device,
                                               shard=(place.rank, place.world)), config.amp)
        finite_weights = _finite(self.model)
        if not (finite_weights and math.isfinite(test_loss)):
            what = "the test loss is" if finite_weights else "the weights are"
            raise distributed.shared_error(
                f"training diverged: {what} not finite at the end of epoch {epoch + 1}; "
                f"{_kept(self.out, epoch)}; lower the learning rate (lr)")
        state.bar.set_postfix(loss=f"{loss_total / seen_total:.3f}",
                              acc=f"{correct_total / seen_total:.1%}", test=f"{test_acc:.1%}",
                              img_s=f"{seen_total / state.train_seconds:.0f}")
        state.bar.close()
        self.metrics.append({
            "epoch": epoch + 1, "train_loss": f"{loss_total / seen_total:.6f}",
            "train_acc": f"{correct_total / seen_total:.6f}", "test_loss": f"{test_loss:.6f}",
            "test_acc": f"{test_acc:.6f}", "lr": f"{state.lr:.6g}",
            "seconds": f"{time.perf_counter() - state.started:.3f}",
            "images_per_s": f"{seen_total / state.train_seconds:.1f}"})

    def save_epoch(self, epoch: int) -> None:
        """On rank 0: the metrics so far and a checkpoint to resume from after ``epoch``."""
        checkpoint = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": epoch + 1, "rng": json.dumps(self.rng.bit_generator.state),
            "torch_rng": torch.get_rng_state()}
        rows = list(self.metrics)

        def write_epoch():
            runs.write_csv(self.out / runs.METRICS, rows, METRIC_FIELDS)
            runs.save_checkpoint(self.checkpoint_path, checkpoint)

        distributed.on_main(write_epoch)

    def finish(self, started: float) -> TrainResult:
        """On rank 0: the final weights; the result from the last epoch's metrics."""
        distributed.on_main(lambda: runs.save_weights(self.out / runs.WEIGHTS, self.model,
                                                      self.spec))
        last = self.metrics[-1]
        return TrainResult(run_dir=self.out, epochs=self.config.epochs,
                           train_acc=float(last["train_acc"]), test_acc=float(last["test_acc"]),
                           seconds=time.perf_counter() - started,
                           resumed_from=self.start_epoch)


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, mixer: Mixer, x: Tensor,
               y: Tensor, rng: np.random.Generator, *, lr: float, config: TrainConfig,
               num_classes: int, memory_format=torch.preserve_format,
               saliency_fn=None) -> tuple[Tensor, Tensor, Tensor]:
    """One SGD step on the mixed batch of (x, y): soft labels, the mix, the forward pass
    (bf16 autocast on CUDA with ``config.amp``), the soft-target loss, backward and the
    update at learning rate ``lr``. Returns the loss, logits and mixed targets, detached;
    nothing here waits for the device."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    target = soft_labels(y, num_classes, config.label_smoothing)
    x, target = mixer(x, target, rng, saliency_fn=saliency_fn)
    if memory_format is torch.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(x.device, config.amp):
        logits = net(x)
    loss = soft_cross_entropy(logits, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach(), target


def _training_module(model: torch.nn.Module, config: TrainConfig, device: torch.device,
                     place: distributed.Place) -> torch.nn.Module:
    """What the training step calls: the model, in DistributedDataParallel under torchrun
    (which starts every rank from rank 0's weights), compiled with ``--compile``."""
    net = model
    if place.active:
        net = DistributedDataParallel(model, device_ids=[device.index]
                                      if device.type == "cuda" else None)
    if config.compile:
        backend = os.environ.get("ROBUSTMIX_COMPILE_BACKEND", "inductor")
        try:
            net = torch.compile(net, backend=backend)
        except Exception as err:  # an unknown backend name
            raise ConfigError("compile", f"torch.compile(backend={backend!r}) failed: "
                              f"{_first_line(err)}") from None
    return net


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__


def _compile_errors_as_usage(step):
    """``step``, with a failure of torch.compile's compilers (no C++ compiler, an operator
    the backend lacks) turned into the one-line error; other errors pass unchanged."""
    def guarded(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        except Exception as err:
            if not type(err).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise
            cause = getattr(err, "inner_exception", None) or err.__cause__ or err
            raise ConfigError("compile", f"failed ({type(cause).__name__}: "
                              f"{_first_line(cause)}); train without it "
                              "(compilation needs a working C++ compiler on the CPU, Triton on "
                              "a GPU)") from None
    return guarded


def _totals(loss_sum: Tensor, correct: Tensor, seen: int) -> tuple[float, float, float]:
    """Summed loss, correct and seen over the ranks, in one host synchronization."""
    local = torch.stack([loss_sum.double(), correct.double(),
                         torch.tensor(float(seen), dtype=torch.float64, device=loss_sum.device)])
    loss_total, correct_total, seen_total = distributed.all_sum(local).tolist()
    return loss_total, correct_total, seen_total


def _diverged(first_bad: Tensor, bad_loss: Tensor, step: int, mean_loss: float, epoch: int,
              out: Path) -> None:
    """Stop every rank with the first step whose loss was not finite (on any rank)."""
    reports = [r for r in distributed.all_gather((int(first_bad.item()), bad_loss.item()))
               if r[0] > 0]
    bad_step, value = min(reports) if reports else (step + 1, mean_loss)  # else: sum overflowed
    raise distributed.shared_error(
        f"training diverged: the loss is {value} at epoch {epoch + 1}, step {bad_step}; "
        f"{_kept(out, epoch)}; lower the learning rate (lr)")
