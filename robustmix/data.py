"""Datasets and on-device batch augmentation.

Every random draw (the epoch's permutation, crop offsets, flips, resized-crop boxes) comes
from the ``numpy.random.Generator`` the caller passes in; the draws are made on the host and
moved to the device as small tensors, so one seed gives the same batches on CPU and GPU and
the training loop can checkpoint the generator's state. The global torch/numpy RNGs are
never touched.

Two kinds of source:

- :class:`TensorSource`: the whole split is one uint8 (N, C, H, W) tensor kept on the
  device; a batch is gathered by index and augmented with a handful of batched tensor ops.
- :class:`FolderSource`: an ImageNet-style folder read through a ``DataLoader``; the
  per-image random crop is drawn from a per-epoch seed and the image index, so the batches
  do not depend on the number of workers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robustmix.core.errors import UsageError

DATASET_NAMES = ("digits", "cifar10", "cifar100", "svhn", "mnist", "fashionmnist")
"""Names accepted by :func:`load_dataset`, besides ``imagefolder:PATH``."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)  # aspect-ratio range of torchvision's RandomResizedCrop
RESIZED_CROP_TRIES = 10              # candidate boxes per sample, as torchvision tries
DIGITS_TEST_SIZE = 397               # sklearn digits: 1,797 images -> 1,400 train / 397 test
DIGITS_DEFAULT_SIZE = 16
FOLDER_DEFAULT_SIZE = 224
MIN_IMAGE_SIZE = 8
_CHUNK = 4096                        # images per chunk when resizing or computing statistics


# --------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class Augment:
    """The per-batch augmentation of training images.

    pad: random crop after zero padding by this many pixels on each side (0: no crop).
    flip: random horizontal flip with probability 1/2.
    crop_scale: random-resized-crop area scale (lo, hi) with aspect ratio in (3/4, 4/3), as
        torchvision's RandomResizedCrop; when set it replaces the pad-crop.
    """

    pad: int = 0
    flip: bool = False
    crop_scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.pad, bool) or not isinstance(self.pad, (int, np.integer)) or self.pad < 0:
            raise UsageError(f"crop padding must be an integer >= 0, got {self.pad!r}")
        object.__setattr__(self, "pad", int(self.pad))
        object.__setattr__(self, "flip", bool(self.flip))
        if self.crop_scale is not None:
            try:
                lo, hi = (float(v) for v in self.crop_scale)
            except (TypeError, ValueError):
                raise UsageError(f"crop scale must be two numbers lo,hi with 0 < lo <= hi <= 1, "
                                 f"got {self.crop_scale!r}") from None
            if not 0 < lo <= hi <= 1:
                raise UsageError(f"crop scale must satisfy 0 < lo <= hi <= 1, got ({lo}, {hi})")
            object.__setattr__(self, "crop_scale", (lo, hi))


def draw_resized_crop_boxes(rng: np.random.Generator, n: int, height: int, width: int,
                            scale: tuple[float, float],
                            ratio: tuple[float, float] = RESIZED_CROP_RATIO,
                            tries: int = RESIZED_CROP_TRIES) -> np.ndarray:
    """Boxes (top, left, h, w) of shape (n, 4), int64, drawn as RandomResizedCrop.get_params.

    For each sample ``tries`` candidates are drawn at once: area ``H*W*U(scale)`` and aspect
    ratio ``exp(U(log ratio))``, ``w = round(sqrt(area*ratio))``, ``h = round(sqrt(area/ratio))``;
    the first candidate that fits in the image is taken, at a uniform position. When none
    fits, the fallback is torchvision's: the centre crop of the whole image clamped to the
    ratio range.
    """
    u_area = rng.random((n, tries))
    u_ratio = rng.random((n, tries))
    u_pos = rng.random((n, 2))
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w = np.round(np.sqrt(area * aspect)).astype(np.int64)  # np.round rounds half to even, as round()
    h = np.round(np.sqrt(area / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.argmax(axis=1)
    found = fits.any(axis=1)
    rows = np.arange(n)

    in_ratio = width / height
    if in_ratio < min(ratio):
        fall_w, fall_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fall_w, fall_h = int(round(height * max(ratio))), height
    else:
        fall_w, fall_h = width, height
    box_h = np.where(found, h[rows, first], fall_h)
    box_w = np.where(found, w[rows, first], fall_w)
    top = np.where(found, np.floor(u_pos[:, 0] * (height - box_h + 1)), (height - fall_h) // 2)
    left = np.where(found, np.floor(u_pos[:, 1] * (width - box_w + 1)), (width - fall_w) // 2)
    return np.stack([top, left, box_h, box_w], axis=1).astype(np.int64)


def batch_crop(x: Tensor, offsets: Tensor, pad: int) -> Tensor:
    """Per-sample crops of the zero-padded batch: ``out[b] = pad(x)[b, :, oy:oy+H, ox:ox+W]``.

    ``offsets`` is (B, 2) int64 (oy, ox) in [0, 2*pad] on x's device; works on any dtype.
    """
    if pad == 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def batch_flip(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror horizontally the samples where the (B,) bool ``mask`` is set."""
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def batch_resized_crop(x: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop each sample to its box (top, left, h, w) and resize it to ``size``, bilinearly.

    One ``affine_grid`` + ``grid_sample`` (bilinear, align_corners=False) for the batch, with
    the sampling points clamped to the box: the same result as torch's bilinear resize of
    the cropped image (no antialiasing; the crops here are only ever enlarged). Returns
    float32 in the units of ``x``.
    """
    b, c = x.shape[:2]
    height, width = x.shape[2:]
    boxes = boxes.to(torch.float32)
    top, left, box_h, box_w = boxes.unbind(1)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = box_w / width
    theta[:, 0, 2] = (2 * left + box_w) / width - 1
    theta[:, 1, 1] = box_h / height
    theta[:, 1, 2] = (2 * top + box_h) / height - 1
    grid = F.affine_grid(theta, [b, c, size[0], size[1]], align_corners=False)
    # Clamp to the box's outer pixel centres, as a resize of the cropped image clamps to its
    # border: upsampling must not blend in the pixels just outside the box.
    low = torch.stack([(2 * left + 1) / width - 1, (2 * top + 1) / height - 1], dim=1)
    high = torch.stack([(2 * (left + box_w) - 1) / width - 1,
                        (2 * (top + box_h) - 1) / height - 1], dim=1)
    grid = torch.maximum(torch.minimum(grid, high[:, None, None, :]), low[:, None, None, :])
    return F.grid_sample(x.to(torch.float32), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def _to_device(array: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device, non_blocking=True)


def _to_unit_float(x: Tensor) -> Tensor:
    return x.to(torch.float32).div_(255)


# --------------------------------------------------------------------------- sources


class DataSource:
    """A dataset with its train and test splits, yielding batches in [0, 1] on a device.

    Attributes: name, num_classes, channels, height, width, mean and std (per channel, of the
    train images in [0, 1] units; the model normalizes with them), n_train, n_test,
    default_augment.
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

    @staticmethod
    def _check_split(split: str) -> None:
        if split not in ("train", "test"):
            raise UsageError(f"unknown split {split!r}; valid: train, test")

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


# --------------------------------------------------------------------------- image folders


def _folder_classes(directory: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())


def _folder_samples(root: Path, classes: list[str], *, allow_empty: bool) -> list[tuple[str, int]]:
    """(path, class index) of every image under ``root/<class>/``, with the given class list."""
    # torchvision (about 1 s to import) loads only for the data sets that need it
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    index = {name: i for i, name in enumerate(classes)}
    return make_dataset(str(root), index, extensions=IMG_EXTENSIONS, allow_empty=allow_empty)


class _FolderImages(torch.utils.data.Dataset):
    """Images of a folder split through a deterministic transform (the evaluation view)."""

    def __init__(self, samples: list[tuple[str, int]], transform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        # torchvision (about 1 s to import) loads only for the data sets that need it
        from torchvision.datasets.folder import pil_loader

        path, target = self.samples[index]
        return self.transform(pil_loader(path)), target


class LazyImages:
    """An indexable view of an image-folder split that reads only the images asked for.

    ``shape`` is (N, C, H, W) of the whole split; ``view[index]`` with a tensor of indices
    gives those images as one uint8 (len(index), C, H, W) tensor, on the host.
    """

    def __init__(self, dataset: _FolderImages):
        self.dataset = dataset
        first = self.dataset[0][0]
        self.shape = (len(self.dataset), *first.shape)

    def __getitem__(self, index: Tensor) -> Tensor:
        return torch.stack([self.dataset[int(i)][0] for i in index])


class _FolderTrainEpoch(torch.utils.data.Dataset):
    """One epoch's augmented view of an image folder.

    Each image's crop and flip are drawn from ``default_rng([seed, index])``: the batches
    depend on the epoch seed only, not on the worker count or the global RNGs.
    """

    def __init__(self, samples: list[tuple[str, int]], size: int, augment: Augment,
                 seed: int) -> None:
        self.samples, self.size, self.augment, self.seed = samples, size, augment, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        # torchvision (about 1 s to import) loads only for the data sets that need it
        import torchvision.transforms.functional as TF
        from torchvision.datasets.folder import pil_loader

        path, target = self.samples[index]
        image = pil_loader(path)
        rng = np.random.default_rng([self.seed, index])
        scale = self.augment.crop_scale or (0.08, 1.0)
        (top, left, h, w), = draw_resized_crop_boxes(rng, 1, image.height, image.width, scale)
        image = TF.resized_crop(image, int(top), int(left), int(h), int(w),
                                [self.size, self.size], antialias=True)
        if self.augment.flip and rng.random() < 0.5:
            image = TF.hflip(image)
        return TF.pil_to_tensor(image), target


class FolderSource(DataSource):
    """An ImageNet-style folder: ``PATH/train/<class>/*`` and ``PATH/val/<class>/*``.

    Training images: RandomResizedCrop(size, scale=augment.crop_scale or (0.08, 1)) and a
    horizontal flip if ``augment.flip`` (``pad`` is ignored). Evaluation images: resize the
    short side to round(size*256/224), centre crop ``size``.
    """

    def __init__(self, path: str | os.PathLike, *, image_size: int = FOLDER_DEFAULT_SIZE,
                 num_workers: int | None = None) -> None:
        root = Path(path)
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise UsageError(f"image folder {root}/ has no {split}/ folder: expected "
                                 f"{root}/train/<class>/*.jpg|png and {root}/val/<class>/*.jpg|png")
        classes = _folder_classes(root / "train")
        if not classes:
            raise UsageError(f"image folder {root}/train/ has no class folders: expected "
                             f"{root}/train/<class>/*.jpg|png")
        unknown = sorted(set(_folder_classes(root / "val")) - set(classes))
        if unknown:
            raise UsageError(f"image folder {root}/val/ has classes not in train/: "
                             f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}; "
                             "val must use the classes of train/")
        try:
            self._samples = {
                "train": _folder_samples(root / "train", classes, allow_empty=False),
                "test": _folder_samples(root / "val", classes, allow_empty=True)}
        except (FileNotFoundError, OSError) as error:
            raise UsageError(f"image folder {root}/: {_one_line(error)}") from None
        if not self._samples["test"]:
            raise UsageError(f"image folder {root}/val/ holds no images (.jpg, .png, ...)")
        self.root = root
        self.name = f"imagefolder:{path}"
        self.num_classes = len(classes)
        self.classes = classes
        self.channels, self.height, self.width = 3, image_size, image_size
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.n_train, self.n_test = len(self._samples["train"]), len(self._samples["test"])
        self.default_augment = Augment(pad=0, flip=True, crop_scale=(0.08, 1.0))
        if num_workers is None:  # workers pay off only for real folders
            num_workers = 0 if self.n_train < 1000 else min(4, os.cpu_count() or 1)
        self.num_workers = int(num_workers)

    def _loader(self, dataset, batch_size: int, *, sampler=None, drop_last: bool,
                seed: int, device: torch.device):
        # The generator feeds the loader's base seed, which it draws even when nothing uses
        # it: without one, that draw would come from the global torch RNG.
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
            drop_last=drop_last, num_workers=self.num_workers,
            pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))

    def train_batches(self, rng: np.random.Generator, batch_size: int, device: Any,
                      augment: Augment, shard: tuple[int, int] = (0, 1)
                      ) -> Iterator[tuple[Tensor, Tensor]]:
        self._check_train_batch_size(batch_size)
        part = self._shard_slice(batch_size, shard)
        device = torch.device(device)
        order = rng.permutation(self.n_train)
        seed = int(rng.integers(2**63))
        steps = self.n_train // batch_size
        mine = order[:steps * batch_size].reshape(steps, batch_size)[:, part]
        epoch = _FolderTrainEpoch(self._samples["train"], self.height, augment, seed)
        loader = self._loader(epoch, part.stop - part.start, sampler=mine.ravel().tolist(),
                              drop_last=True, seed=seed, device=device)
        return _moved(loader, device)

    def eval_dataset(self, split: str) -> torch.utils.data.Dataset:
        """The split through the evaluation transform, as a ``Dataset`` of (uint8 image,
        label); each image is read when indexed."""
        # torchvision (about 1 s to import) loads only for the data sets that need it
        import torchvision.transforms as T

        self._check_split(split)
        transform = T.Compose([T.Resize(int(round(self.height * 256 / 224))),
                               T.CenterCrop(self.height), T.PILToTensor()])
        return _FolderImages(self._samples[split], transform)

    def eval_batches(self, split: str, batch_size: int, device: Any,
                     shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[Tensor, Tensor]]:
        self._check_batch_size(batch_size)
        device = torch.device(device)
        dataset = self.eval_dataset(split)
        rank, world = shard
        # Only the last batch of the split can be short, so cutting this list into
        # batch_size chunks gives back exactly this rank's batches.
        mine = [i for start in range(rank * batch_size, len(dataset), world * batch_size)
                for i in range(start, min(start + batch_size, len(dataset)))]
        loader = self._loader(dataset, batch_size, sampler=mine, drop_last=False, seed=0,
                              device=device)
        return _moved(loader, device)

    def tensors(self, split: str) -> tuple[Tensor, Tensor]:
        """The eval-transformed split, all in memory (mind the size for a large folder)."""
        loader = self._loader(self.eval_dataset(split), 256, drop_last=False, seed=0,
                              device=torch.device("cpu"))
        xs, ys = zip(*loader)
        return torch.cat(xs), torch.cat(ys).to(torch.int64)

    def eval_images(self, split: str, indices: np.ndarray | None = None
                    ) -> tuple[Tensor | LazyImages, Tensor | None]:
        view = LazyImages(self.eval_dataset(split))
        if indices is None:
            return view, None
        labels = torch.tensor([view.dataset.samples[int(i)][1] for i in indices])
        return view[torch.from_numpy(indices)], labels


def _moved(loader, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    for x, y in loader:
        yield (_to_unit_float(x.to(device, non_blocking=True)),
               y.to(torch.int64).to(device, non_blocking=True))


# --------------------------------------------------------------------------- loading


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _resize_uint8(x: Tensor, size: int) -> Tensor:
    """Resize uint8 (N, C, H, W) images to size×size, bilinear (antialiased when shrinking)."""
    if x.shape[2] == size and x.shape[3] == size:
        return x
    shrink = size < x.shape[2] or size < x.shape[3]
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8, device=x.device)
    for start in range(0, x.shape[0], _CHUNK):
        chunk = x[start:start + _CHUNK].to(torch.float32)
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=shrink)
        out[start:start + _CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _load_digits(image_size: int | None, device: Any) -> TensorSource:
    # scikit-learn (about 0.5 s to import) loads only for the digits
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    size = DIGITS_DEFAULT_SIZE if image_size is None else image_size
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # 0..16 -> [0,1]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                           antialias=size < images.shape[2]) if size != images.shape[2] else images
    x = (images * 255).round_().clamp_(0, 255).to(torch.uint8)
    y = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=DIGITS_TEST_SIZE,
                                           stratify=digits.target, random_state=0)
    train_idx, test_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(test_idx))
    return TensorSource("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx],
                        num_classes=10, default_augment=Augment(pad=size // 8, flip=False),
                        device=device)


# name -> (torchvision class, classes, flip by default, folder relative to root, files there)
_TORCHVISION = {
    "cifar10": ("CIFAR10", 10, True, "cifar-10-batches-py",
                ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch", "batches.meta"), "data_batch_1..5, test_batch, batches.meta"),
    "cifar100": ("CIFAR100", 100, True, "cifar-100-python", ("train", "test", "meta"),
                 "train, test, meta"),
    "svhn": ("SVHN", 10, False, "", ("train_32x32.mat", "test_32x32.mat"),
             "train_32x32.mat, test_32x32.mat"),
    "mnist": ("MNIST", 10, False, os.path.join("MNIST", "raw"),
              ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"),
              "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
              "t10k-labels-idx1-ubyte"),
    "fashionmnist": ("FashionMNIST", 10, False, os.path.join("FashionMNIST", "raw"),
                     ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                      "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
                     "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                     "t10k-labels-idx1-ubyte"),
}


def _read_torchvision(name: str, root: str, download: bool) -> tuple[Tensor, ...]:
    """(x_train, y_train, x_test, y_test) through torchvision, its checksum checks kept."""
    # torchvision (about 1 s to import) loads only for the data sets that need it
    import torchvision.datasets as tvd

    class_name, _, _, folder, files, described = _TORCHVISION[name]
    cls = getattr(tvd, class_name)
    where = os.path.join(root, folder) if folder else root
    try:
        if name == "svhn":
            train, test = (cls(root, split=split, download=download) for split in ("train", "test"))
            data = [(torch.from_numpy(np.ascontiguousarray(d.data)),  # already (N, C, H, W)
                     torch.from_numpy(np.asarray(d.labels, dtype=np.int64))) for d in (train, test)]
        else:
            train, test = (cls(root, train=flag, download=download) for flag in (True, False))
            data = []
            for d in (train, test):
                images = d.data
                if isinstance(images, np.ndarray):  # CIFAR: (N, H, W, C)
                    images = torch.from_numpy(images).permute(0, 3, 1, 2)
                else:                              # MNIST: (N, H, W) uint8 tensor
                    images = images[:, None]
                labels = torch.as_tensor(np.asarray(d.targets, dtype=np.int64))
                data.append((images.contiguous(), labels))
    except RuntimeError as error:
        # torchvision's one message for absent files and failed md5 checks.
        missing = [f for f in files if not os.path.isfile(os.path.join(where, f))]
        tried = f"download failed ({_one_line(error)}); " if download else ""
        if missing:
            raise UsageError(
                f"{name} not found in {os.path.join(root, '')}: {tried}expected {os.path.join(where, '')} "
                f"({described}) as torchvision writes it; pass --download to fetch it, or "
                f"--data-dir to point at it") from None
        raise UsageError(
            f"{name} files in {os.path.join(where, '')} failed torchvision's checksum check "
            f"(corrupt, truncated or not the official files; {_one_line(error)}); delete them "
            f"and pass --download, or point --data-dir at good copies") from None
    except Exception as error:  # noqa: BLE001 - any failure while reading is the files' fault
        action = "download or read" if download else "read"
        raise UsageError(f"could not {action} {name} from {os.path.join(where, '')}: "
                         f"{_one_line(error)}; the files are corrupt or not {name}") from None
    for split, (x, y) in zip(("train", "test"), data):
        if x.dtype != torch.uint8 or x.ndim != 4 or y.shape != (x.shape[0],):
            raise UsageError(f"{name} {split} files in {os.path.join(where, '')} hold "
                             f"{x.dtype} {tuple(x.shape)} images and {tuple(y.shape)} labels; "
                             f"the files are not {name}")
    (x_train, y_train), (x_test, y_test) = data
    return x_train, y_train, x_test, y_test


def _load_torchvision(name: str, data_dir: str, image_size: int | None, download: bool,
                      device: Any) -> TensorSource:
    _, num_classes, flip, *_ = _TORCHVISION[name]
    x_train, y_train, x_test, y_test = _read_torchvision(name, data_dir, download)
    if image_size is not None:
        x_train, x_test = _resize_uint8(x_train, image_size), _resize_uint8(x_test, image_size)
    size = x_train.shape[2]
    return TensorSource(name, x_train, y_train, x_test, y_test, num_classes=num_classes,
                        default_augment=Augment(pad=size // 8, flip=flip), device=device)


def load_dataset(spec: str, *, data_dir: str = "data", image_size: int | None = None,
                 download: bool = False, device: Any = "cpu",
                 num_workers: int | None = None) -> DataSource:
    """The dataset named by ``spec``: one of :data:`DATASET_NAMES` or ``imagefolder:PATH``.

    ``image_size`` (>= 8) resizes square images once at load (digits default 16, folders 224,
    torchvision sets their native size). Tensor datasets are kept on ``device``.
    ``num_workers`` is the image-folder DataLoader's (None: 0 for small folders, else
    min(4, CPUs)). Nothing is downloaded unless ``download``.
    """
    if image_size is not None and (isinstance(image_size, bool)
                                   or not isinstance(image_size, (int, np.integer))
                                   or image_size < MIN_IMAGE_SIZE):
        raise UsageError(f"image size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    image_size = None if image_size is None else int(image_size)
    if spec.startswith("imagefolder:"):
        path = spec[len("imagefolder:"):]
        if not path:
            raise UsageError("imagefolder needs a path: imagefolder:PATH with PATH/train/<class>/ "
                             "and PATH/val/<class>/")
        return FolderSource(path, image_size=image_size or FOLDER_DEFAULT_SIZE,
                            num_workers=num_workers)
    if spec == "digits":
        return _load_digits(image_size, device)
    if spec in _TORCHVISION:
        return _load_torchvision(spec, data_dir, image_size, download, device)
    raise UsageError(f"unknown dataset {spec!r}; valid: {', '.join(DATASET_NAMES)}, imagefolder:PATH")
