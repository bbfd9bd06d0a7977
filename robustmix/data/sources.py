"""Data sources: the interface (:class:`DataSource`) and the tensor-held data sets
(:class:`TensorSource`: the whole split as one uint8 tensor on the device)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from robustmix.core.errors import UsageError
from robustmix.data.augment import (Augment, _to_device, _to_unit_float, batch_crop, batch_flip,
                                    batch_resized_crop, draw_resized_crop_boxes)

if TYPE_CHECKING:
    from robustmix.data.folders import LazyImages

_CHUNK = 4096                        # images per chunk when resizing or computing statistics
HOLDOUT_SEED = 2024                  # the held-out slice is the same for every run and seed
HOLDOUT_RULE = ("the sorted first n of numpy default_rng(2024).permutation(n_train) over the "
                "data set's training split")


def holdout_indices(n_train: int, n: int) -> np.ndarray:
    """The training examples held out (sorted indices): :data:`HOLDOUT_RULE`, fixed, the
    same for every run, method and seed, so every run is judged on the same images."""
    return np.sort(np.random.default_rng(HOLDOUT_SEED).permutation(n_train)[:n])


class DataSource:
    """A dataset with its train and test splits, yielding batches in [0, 1] on a device.

    Attributes: name, num_classes, channels, height, width, mean and std (per channel, of the
    train images in [0, 1] units; the model normalizes with them), n_train, n_test,
    default_augment; for an image folder, skipped (the files left out as unreadable).
    """

    name: str
    num_classes: int
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    n_train: int
    n_test: int
    default_augment: Augment
    skipped: tuple[str, ...] = ()        # image files left out (paths relative to the folder)
    newly_skipped: tuple[str, ...] = ()  # of those, the ones found unreadable by this load
    n_holdout: int = 0                   # training examples set aside (:meth:`hold_out`)
    holdout_digest: str = ""             # sha256 of the held-out indices, for config.json

    def hold_out(self, n: int) -> None:
        """Set ``n`` training examples aside (:func:`holdout_indices`) as the split
        ``"holdout"``: never in :meth:`train_batches`, evaluated like ``"test"``. Called
        once, right after loading; ``n_train`` then counts the examples trained on."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not \
                0 < n < self.n_train:
            raise UsageError(f"holdout must be an integer in 1..{self.n_train - 1} (the "
                             f"training images of {self.name}), got {n!r}")
        if self.n_holdout:
            raise UsageError(f"{self.name}: a held-out slice was already set aside")
        held = holdout_indices(self.n_train, int(n))
        keep = np.setdiff1d(np.arange(self.n_train), held)
        self._split_train(held, keep)
        self.n_holdout, self.n_train = int(n), int(keep.size)
        self.holdout_digest = hashlib.sha256(held.astype(np.int64).tobytes()).hexdigest()

    def _split_train(self, held: np.ndarray, keep: np.ndarray) -> None:
        raise NotImplementedError

    def train_batches(self, rng: np.random.Generator, batch_size: int, device: Any,
                      augment: Augment, shard: tuple[int, int] = (0, 1)
                      ) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch: shuffled, augmented, drop_last; yields (x, y) on ``device``.

        x is float32 (B, C, H, W) in [0, 1], y int64 (B,). All of the epoch's random draws
        are taken from ``rng`` when this is called, before the first batch.

        ``shard=(rank, world)``: ``batch_size`` is the global batch, and this yields only
        rank's slice of each (``batch_size // world`` examples, cut in rank order), with the
        same draws as the unsharded epoch: the world's slices make up its batches exactly.
        """
        raise NotImplementedError

    def eval_batches(self, split: str, batch_size: int, device: Any,
                     shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[Tensor, Tensor]]:
        """Every example of ``split`` ('train' or 'test') once, in order, unaugmented.

        ``shard=(rank, world)``: only the batches numbered rank, rank + world, ... of the
        unsharded sequence (nothing else is loaded); the world's shards cover it once.
        """
        raise NotImplementedError

    def tensors(self, split: str) -> tuple[Tensor, Tensor]:
        """The whole split as uint8 (N, C, H, W) images and int64 (N,) labels."""
        raise NotImplementedError

    def eval_images(self, split: str, indices: np.ndarray | None = None
                    ) -> tuple[Tensor | LazyImages, Tensor | None]:
        """Unaugmented uint8 (N, C, H, W) images and int64 labels of ``split``, or of the
        examples ``indices`` of it (in that order).

        A tensor source indexes its tensors where they live. An image folder reads only
        the images asked for: with ``indices`` it loads them and their labels; without, it
        gives a :class:`LazyImages` view (each image read when indexed) and no labels.
        """
        images, labels = self.tensors(split)
        if indices is None:
            return images, labels
        index = torch.from_numpy(indices).to(images.device)
        return images[index], labels[index]

    def held_bytes(self) -> int:
        """The bytes of images and labels this source holds in memory (on ``device``, for
        a tensor source); 0 for one that reads its files batch by batch."""
        return 0

    def batches_per_epoch(self, batch_size: int) -> int:
        """Number of batches :meth:`train_batches` yields (drop_last)."""
        return self.n_train // batch_size

    def _check_batch_size(self, batch_size: int) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")

    def _check_train_batch_size(self, batch_size: int) -> None:
        self._check_batch_size(batch_size)
        if batch_size > self.n_train:
            raise UsageError(f"batch size {batch_size} is larger than the training set of "
                             f"{self.name} ({self.n_train} images)")

    @staticmethod
    def _shard_slice(batch_size: int, shard: tuple[int, int]) -> slice:
        rank, world = shard
        if not 0 <= rank < world or batch_size % world:
            raise UsageError(f"batch size {batch_size} cannot be split evenly over {world} "
                             "processes; use a multiple of the number of processes")
        local = batch_size // world
        return slice(rank * local, (rank + 1) * local)

    def _check_split(self, split: str) -> None:
        valid = ("train", "test", "holdout") if self.n_holdout else ("train", "test")
        if split not in valid:
            raise UsageError(f"unknown split {split!r}; valid: {', '.join(valid)}")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, {self.n_train} train / {self.n_test} "
                f"test, {self.channels}x{self.height}x{self.width}, {self.num_classes} classes)")


def _channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, in float64 chunks."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros(x.shape[1], dtype=torch.float64)
    for start in range(0, x.shape[0], _CHUNK):
        chunk = x[start:start + _CHUNK].to(torch.float64).div_(255)
        total += chunk.sum(dim=(0, 2, 3)).cpu()
        squares += chunk.square().sum(dim=(0, 2, 3)).cpu()
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


class TensorSource(DataSource):
    """A dataset held as uint8 (N, C, H, W) tensors on one device, augmented there."""

    def __init__(self, name: str, x_train: Tensor, y_train: Tensor, x_test: Tensor,
                 y_test: Tensor, *, num_classes: int, default_augment: Augment | None = None,
                 device: Any = "cpu") -> None:
        for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise ValueError(f"{name} {split} images must be uint8 (N, C, H, W), got "
                                 f"{x.dtype} {tuple(x.shape)}")
            if y.shape != (x.shape[0],):
                raise ValueError(f"{name} {split} labels must have shape ({x.shape[0]},), got "
                                 f"{tuple(y.shape)}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
                raise UsageError(f"{name} {split} labels lie outside 0..{num_classes - 1} "
                                 f"(found {int(y.min())}..{int(y.max())}); the files are not {name}")
        if x_train.shape[1:] != x_test.shape[1:]:
            raise ValueError(f"{name}: train images {tuple(x_train.shape[1:])} and test images "
                             f"{tuple(x_test.shape[1:])} differ in shape")
        self.device = torch.device(device)
        self.name = name
        self.num_classes = int(num_classes)
        self.channels, self.height, self.width = (int(v) for v in x_train.shape[1:])
        self.n_train, self.n_test = int(x_train.shape[0]), int(x_test.shape[0])
        self.mean, self.std = _channel_stats(x_train)
        self.default_augment = default_augment if default_augment is not None else Augment()
        self._x = {"train": x_train.contiguous().to(self.device),
                   "test": x_test.contiguous().to(self.device)}
        self._y = {"train": y_train.to(torch.int64).to(self.device),
                   "test": y_test.to(torch.int64).to(self.device)}

    def tensors(self, split: str) -> tuple[Tensor, Tensor]:
        self._check_split(split)
        return self._x[split], self._y[split]

    def held_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self._x.values(), *self._y.values()))

    def _split_train(self, held: np.ndarray, keep: np.ndarray) -> None:
        x, y = self._x["train"], self._y["train"]
        held_t, keep_t = (torch.from_numpy(i).to(x.device) for i in (held, keep))
        self._x["holdout"], self._y["holdout"] = x[held_t], y[held_t]
        self._x["train"], self._y["train"] = x[keep_t], y[keep_t]
        self.mean, self.std = _channel_stats(self._x["train"])  # of the images trained on

    def train_batches(self, rng: np.random.Generator, batch_size: int, device: Any,
                      augment: Augment, shard: tuple[int, int] = (0, 1)
                      ) -> Iterator[tuple[Tensor, Tensor]]:
        self._check_train_batch_size(batch_size)
        part = self._shard_slice(batch_size, shard)
        device = torch.device(device)
        steps = self.n_train // batch_size
        used = steps * batch_size
        # The whole epoch's draws, made now: the generator's state after this call does not
        # depend on how many batches the caller consumes.
        order = rng.permutation(self.n_train)[:used].reshape(steps, batch_size)
        boxes = offsets = flips = None
        if augment.crop_scale is not None:
            boxes = draw_resized_crop_boxes(rng, used, self.height, self.width,
                                            augment.crop_scale).reshape(steps, batch_size, 4)
        elif augment.pad > 0:
            offsets = rng.integers(0, 2 * augment.pad + 1, size=(steps, batch_size, 2))
        if augment.flip:
            flips = rng.random((steps, batch_size)) < 0.5
        order, boxes, offsets, flips = (None if a is None else a[:, part]
                                        for a in (order, boxes, offsets, flips))
        return self._train_epoch(order, boxes, offsets, flips, device, augment)

    def _train_epoch(self, order: np.ndarray, boxes: np.ndarray | None,
                     offsets: np.ndarray | None, flips: np.ndarray | None,
                     device: torch.device, augment: Augment) -> Iterator[tuple[Tensor, Tensor]]:
        x_all, y_all = self._x["train"], self._y["train"]
        for step in range(order.shape[0]):
            index = _to_device(order[step], self.device)
            x = x_all[index].to(device, non_blocking=True)
            y = y_all[index].to(device, non_blocking=True)
            if boxes is not None:
                x = batch_resized_crop(x, _to_device(boxes[step], device),
                                       (self.height, self.width)).div_(255)
            else:
                if offsets is not None:
                    x = batch_crop(x, _to_device(offsets[step], device), augment.pad)
                x = _to_unit_float(x)
            if flips is not None:
                x = batch_flip(x, _to_device(flips[step], device))
            yield x, y

    def eval_batches(self, split: str, batch_size: int, device: Any,
                     shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[Tensor, Tensor]]:
        self._check_split(split)
        self._check_batch_size(batch_size)
        return self._eval(split, batch_size, torch.device(device), shard)

    def _eval(self, split: str, batch_size: int, device: torch.device,
              shard: tuple[int, int]) -> Iterator[tuple[Tensor, Tensor]]:
        x_all, y_all = self._x[split], self._y[split]
        rank, world = shard
        for start in range(rank * batch_size, x_all.shape[0], world * batch_size):
            x = x_all[start:start + batch_size].to(device, non_blocking=True)
            y = y_all[start:start + batch_size].to(device, non_blocking=True)
            yield _to_unit_float(x), y
