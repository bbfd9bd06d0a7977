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

The run directory's files (config.json, metrics, checkpoint) are read and written by
:mod:`robustmix.training.run_files`; an epoch's sums, progress bar and divergence checks
are kept by :mod:`robustmix.training.progress`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from robustmix.core import distributed, runs
from robustmix.core.config import TrainConfig
from robustmix.core.devices import autocast, resolve_device
from robustmix.core.errors import ConfigError, UsageError
from robustmix.data import Augment, BadImagesError, UnreadableImage, load_dataset, recorded_skips
from robustmix.mixing.mixer import Mixer
from robustmix.mixing.registry import resolved
from robustmix.models import build_model, check_arch
from robustmix.mixing.puzzlemix import saliency_of
from robustmix.models.accuracy import evaluate
from robustmix.training import memory, run_files, tensorboard
from robustmix.training.progress import EpochProgress, stop_unless_finite
from robustmix.training.run_files import prepare_run_dir  # noqa: F401  (the app imports it here)

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


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    train_acc: float
    test_acc: float
    seconds: float
    resumed_from: int = 0


def train(config: TrainConfig, out: str | Path, *, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Train one model into ``out``; with ``resume`` continue from its checkpoint."""
    trainer = Trainer(config, out, resume=resume, progress=progress)
    trainer.setup()
    trainer.restore()
    trainer.prepare_step()
    started = time.perf_counter()
    for epoch in range(trainer.start_epoch, trainer.config.epochs):
        try:
            trainer.train_epoch(epoch)
            trainer.evaluate_epoch(epoch)
        except UnreadableImage as err:  # a file that passed the check went bad (disk error)
            raise UsageError(f"{err}; {_kept(trainer.out, epoch)}") from None
        trainer.save_epoch(epoch)
    return trainer.finish(started)


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
        # the method loaded and checked, its options complete as config.json records them
        config = dataclasses.replace(config, mix=resolved(config.mix))
        self.config = config
        self.out = Path(out)
        self.resume = resume
        self.place = distributed.current()
        self.progress = progress and self.place.is_main
        self.checkpoint_path = self.out / runs.CHECKPOINT
        self.metrics: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.board: tensorboard.Board | None = None

    def setup(self) -> None:
        """Check the settings against the processes, then load data, model and optimizer, and
        refuse a run whose estimated peak memory does not fit the device
        (:mod:`robustmix.training.memory`)."""
        config, place = self.config, self.place
        if config.tensorboard:
            tensorboard.require()
        self.device = device = distributed.device_for(resolve_device(config.device), place)
        _check_processes(config, place, device)
        self.data, self.augment, self.steps_per_epoch = _load_data(
            config, place, device, self._recorded_skips())
        self.model, self.spec, self.memory_format = _build_model(config, self.data, device,
                                                                 place)
        self.optimizer, self.mixer, self.saliency_fn = _build_optimizer(config, self.model,
                                                                        self.data)
        # before anything is written: a run that cannot fit is refused, not killed later
        memory.check(config, self.data, self.model, device)
        self.rng = np.random.default_rng(config.seed)

    def _recorded_skips(self) -> tuple[str, ...] | None:
        """The image files a resumed run left out when it started (read on rank 0); None
        for a new run."""
        if not self.resume:
            return None
        path = self.out / runs.CONFIG
        return distributed.on_main(lambda: recorded_skips(runs.read_config(self.out), str(path))
                                   if path.is_file() else ())

    def _start_fresh(self) -> None:
        """A new run's config.json (rank 0), after an earlier run's files are removed: those
        of a run it replaces (``--overwrite``), kept until this one passed its checks."""
        run_files.clear_run_files(self.out)
        run_files.write_config(self.out, self.config, self.spec, self.device,
                               self.place.world, self.data, self.augment)

    def restore(self) -> None:
        """With ``resume``, continue from the checkpoint (read on rank 0, sent to every rank);
        otherwise write the run's config.json."""
        def read_checkpoint():  # on rank 0
            if not self.resume:
                return None
            return run_files.read_checkpoint(self.out, self.config, self.model, self.optimizer,
                                             self.rng)

        restored = distributed.on_main(read_checkpoint)
        if self.config.tensorboard and self.place.is_main:
            self.board = tensorboard.Board(self.out)
        if restored is None:
            distributed.on_main(self._start_fresh)
            if self.board is not None:
                self.board.masks(self.config, self.data.height, self.data.width)
            return
        state, self.metrics, started_with, threads = restored
        self.start_epoch = state["epoch"]
        if not self.place.is_main:
            run_files.restore_state(state, self.checkpoint_path, self.config, self.model,
                                    self.optimizer, self.rng)
        if started_with != self.place.world and self.progress:
            print(f"robustmix train: note: {self.out} was started with {started_with} "
                  f"processes and resumes with {self.place.world}; it continues, but each "
                  "rank's mixing draws and batch-norm slices differ from an uninterrupted "
                  "run's")
        if self.place.is_main:
            note = run_files.threads_note(self.out, threads, self.device)
            if note:
                print(note)

    def prepare_step(self) -> None:
        """What each step calls; after :meth:`restore`, since DistributedDataParallel starts
        every rank from rank 0's weights."""
        self.net = _training_module(self.model, self.config, self.device, self.place)
        self.step_fn = (_compile_errors_as_usage(train_step) if self.config.compile
                        else train_step)

    def train_epoch(self, epoch: int) -> None:
        """One pass over the training set, one host synchronization per log interval."""
        config, place, device = self.config, self.place, self.device
        self.model.train()
        # Alone, one generator drives everything. Under torchrun every rank draws the same
        # epoch (order, crops, flips) from it and takes its slice of each global batch, and
        # mixes its slice with draws of its own, reseeded per epoch so that resume is exact.
        mix_rng = self.rng if place.world == 1 else np.random.default_rng(
            [config.seed, epoch, place.rank])
        self.epoch_state = state = EpochProgress.start(
            epoch, config.epochs, self.steps_per_epoch, device, self.progress)
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
                state.log_interval(step, self.out)
        state.train_seconds = time.perf_counter() - state.started

    def evaluate_epoch(self, epoch: int) -> None:
        """Test rank 0's model, stop if it or its test loss is not finite, add the metrics."""
        state, config, place = self.epoch_state, self.config, self.place
        totals = state.totals()
        distributed.broadcast_buffers(self.model)  # every rank evaluates and saves rank 0's
        test_acc, test_loss = evaluate(
            self.model, self.data.eval_batches("test", 2 * config.batch_size, self.device,
                                               shard=(place.rank, place.world)), config.amp)
        stop_unless_finite(self.model, test_loss, epoch, self.out)
        row = state.close(totals, test_acc, test_loss)
        if config.holdout:  # the held-out training images: what convergence is judged on
            held_acc, held_loss = evaluate(
                self.model, self.data.eval_batches("holdout", 2 * config.batch_size,
                                                   self.device, shard=(place.rank, place.world)),
                config.amp)
            row.update(holdout_loss=f"{held_loss:.6f}", holdout_acc=f"{held_acc:.6f}")
        self.metrics.append(row)

    def save_epoch(self, epoch: int) -> None:
        """On rank 0: the metrics so far and a checkpoint to resume from after ``epoch``."""
        run_files.save_epoch(self.out, epoch, self.metrics, self.model, self.optimizer,
                             self.rng)
        if self.board is not None:
            self.board.epoch(self.metrics[-1])

    def finish(self, started: float) -> TrainResult:
        """On rank 0: the final weights; the result from the last epoch's metrics."""
        distributed.on_main(lambda: runs.save_weights(self.out / runs.WEIGHTS, self.model,
                                                      self.spec))
        if self.board is not None:
            self.board.close()
        last = self.metrics[-1]
        return TrainResult(run_dir=self.out, epochs=self.config.epochs,
                           train_acc=float(last["train_acc"]), test_acc=float(last["test_acc"]),
                           seconds=time.perf_counter() - started,
                           resumed_from=self.start_epoch)


# ---------------------------------------------------------------------------- set-up


def _check_processes(config: TrainConfig, place: distributed.Place,
                     device: torch.device) -> None:
    """Refuse, on every rank alike, settings that these processes cannot train with."""
    if config.sync_bn and place.active and device.type != "cuda":
        raise distributed.shared_error(ConfigError(
            "sync_bn", "needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only; drop it to "
            "train on the CPU"))
    local_batch = config.batch_size // place.world
    if config.batch_size % place.world or (local_batch < 2 and config.mix.mix != "vanilla"):
        raise distributed.shared_error(ConfigError(
            "batch_size", f"{config.batch_size} is the global batch; under torchrun it "
            f"must be a multiple of the {place.world} processes, with at least 2 examples "
            "each when mixing"))


def _load_data(config: TrainConfig, place: distributed.Place, device: torch.device,
               skipped: tuple[str, ...] | None):
    """The data set on ``device``, its augmentation and the number of steps per epoch.

    ``skipped``: for a resumed run, the image files it left out when it started (None for a
    new run); it keeps exactly those out, and refuses files that went bad since."""
    download = config.download
    if download and place.active:  # once, on rank 0; torchvision does not write atomically
        distributed.on_main(lambda: load_dataset(config.dataset, data_dir=config.data_dir,
                                                 download=True) and None)
        download = False

    def load(echo=None):
        return load_dataset(config.dataset, data_dir=config.data_dir,
                            image_size=config.image_size, download=download, device=device,
                            skip_bad_images=config.skip_bad_images and skipped is None,
                            skipped=skipped or (), holdout=config.holdout, echo=echo)

    try:
        if place.active and config.dataset.startswith("imagefolder:"):
            distributed.on_main(lambda: load() and None)  # rank 0 checks (and caches) first
        data = load(echo=print if place.is_main else None)
    except BadImagesError as err:
        if skipped is None:
            raise
        raise UsageError(f"{err.summary()}; the run started with them readable: restore them "
                         "and resume, or start over with --skip-bad-images --overwrite") from None
    augment = Augment(
        pad=data.default_augment.pad if config.pad is None else config.pad,
        flip=data.default_augment.flip if config.flip is None else config.flip,
        crop_scale=config.crop_scale or data.default_augment.crop_scale)
    steps_per_epoch = data.n_train // config.batch_size
    if steps_per_epoch < 1:
        raise ConfigError("batch_size", f"{config.batch_size} is larger than the training "
                          f"set ({data.n_train} images)")
    return data, augment, steps_per_epoch


def _kept(out: Path, epoch: int) -> str:
    """What a run stopped by an unreadable image keeps, and how to continue it."""
    if (out / runs.CHECKPOINT).is_file():
        return (f"the last checkpoint ({out / runs.CHECKPOINT}, epoch {epoch}) is kept: "
                f"restore the file and continue with: robustmix train --resume {out}")
    return "no checkpoint was written yet: restore the file and run the command again"


def _build_model(config: TrainConfig, data, device: torch.device, place: distributed.Place):
    """The model (initialized from ``config.seed``) on ``device``, its spec and the memory
    format of its inputs."""
    torch.manual_seed(config.seed)
    model = build_model(config.arch, num_classes=data.num_classes, in_channels=data.channels,
                        mean=data.mean, std=data.std)
    spec = model.config
    memory_format = (torch.channels_last if config.channels_last and device.type == "cuda"
                     else torch.preserve_format)
    model = model.to(device=device, memory_format=memory_format)
    if config.sync_bn and place.active:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, spec, memory_format


def _build_optimizer(config: TrainConfig, model: torch.nn.Module, data):
    """SGD, and the Mixer with the saliency pass that PuzzleMix asks for."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum,
        nesterov=config.nesterov, weight_decay=config.weight_decay)
    mixer = Mixer(config.mix)
    mixer.check_image_size(data.height, data.width)
    saliency_fn = saliency_of(model, amp=config.amp) if mixer.needs_saliency else None
    return optimizer, mixer, saliency_fn


# ---------------------------------------------------------------------------- one step


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
