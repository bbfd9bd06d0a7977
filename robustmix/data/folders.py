"""ImageNet-style image folders (``PATH/train/<class>/``, ``PATH/val/<class>/``) read
through a ``DataLoader``; the per-image random crop is drawn from a per-epoch seed and the
image index, so the batches do not depend on the number of workers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robustmix.core.errors import UsageError
from robustmix.data.augment import Augment, _to_unit_float, draw_resized_crop_boxes
from robustmix.data.image_check import (BadImagesError, UnreadableImage, find_bad_images,
                                        read_image)
from robustmix.data.image_check import one_line as _one_line
from robustmix.data.sources import DataSource

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FOLDER_DEFAULT_SIZE = 224


def _folder_classes(directory: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())


def _folder_samples(root: Path, classes: list[str], *, allow_empty: bool) -> list[tuple[str, int]]:
    """(path, class index) of every image under ``root/<class>/``, with the given class list."""
    # torchvision (about 1 s to import) loads only for the data sets that need it
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    index = {name: i for i, name in enumerate(classes)}
    return make_dataset(str(root), index, extensions=IMG_EXTENSIONS, allow_empty=allow_empty)


def _list_folder(root: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """The classes of ``root/train/`` and the (path, class) samples of train and test
    (``val/``); a folder that does not have this layout is a one-line UsageError."""
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
        samples = {"train": _folder_samples(root / "train", classes, allow_empty=False),
                   "test": _folder_samples(root / "val", classes, allow_empty=True)}
    except (FileNotFoundError, OSError) as error:
        raise UsageError(f"image folder {root}/: {_one_line(error)}") from None
    if not samples["test"]:
        raise UsageError(f"image folder {root}/val/ holds no images (.jpg, .png, ...)")
    return classes, samples


SKIP_REMEDY = "replace or remove them, or pass --skip-bad-images to leave them out"


def _leave_out_bad(root: Path, samples: dict[str, list[tuple[str, int]]],
                   skip_bad_images: bool, skipped: Sequence[str]):
    """The samples without the files that cannot be decoded, and the paths left out
    (relative to ``root``, sorted): all of them, and those found now.

    ``skipped``, the files a run recorded when it started, are left out unchecked (the run
    keeps its examples); any other file that cannot be decoded is a
    :class:`BadImagesError` unless ``skip_bad_images``.
    """
    prefix = str(root) + os.sep

    def relative(path: str) -> str:  # the listing's paths all start with root/
        inside = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)
        return inside.replace(os.sep, "/")

    recorded = set(skipped)
    paths = [relative(path) for split in samples.values() for path, _ in split]
    bad = find_bad_images(root, [p for p in paths if p not in recorded])
    if bad and not skip_bad_images:
        raise BadImagesError(root, bad, SKIP_REMEDY)
    leave_out = recorded | {path for path, _ in bad}
    kept = {split: [(path, label) for path, label in items if relative(path) not in leave_out]
            for split, items in samples.items()}
    return kept, tuple(sorted(leave_out)), tuple(path for path, _ in bad)


def _skip_note(name: str, skipped: Sequence[str], newly: Sequence[str]) -> str:
    shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    recorded = len(skipped) - len(newly)
    why = (f"{recorded} recorded by the run when it started"
           + (f", {len(newly)} found now" if newly else "")) if recorded else "found now"
    return (f"{name}: leaving out {len(skipped)} image file{'s' if len(skipped) != 1 else ''} "
            f"that cannot be read ({why}): {shown}")


class _FolderImages(torch.utils.data.Dataset):
    """Images of a folder split through a deterministic transform (the evaluation view)."""

    def __init__(self, samples: list[tuple[str, int]], transform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, target = self.samples[index]
        return self.transform(read_image(path)), target


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

        path, target = self.samples[index]
        image = read_image(path)
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
                 num_workers: int | None = None, skip_bad_images: bool = False,
                 skipped: Sequence[str] = (), echo: Callable[[str], None] | None = None
                 ) -> None:
        root = Path(path)
        self.name = f"imagefolder:{path}"
        classes, samples = _list_folder(root)
        self._samples, self.skipped, self.newly_skipped = _leave_out_bad(
            root, samples, skip_bad_images, skipped)
        if self.skipped and echo is not None:
            echo(_skip_note(self.name, self.skipped, self.newly_skipped))
        for split, folder in (("train", "train"), ("test", "val")):
            if not self._samples[split]:
                raise UsageError(f"image folder {root}/{folder}/ holds no readable images")
        self.root = root
        self.num_classes = len(classes)
        self.classes = classes
        self.channels, self.height, self.width = 3, image_size, image_size
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.n_train, self.n_test = len(self._samples["train"]), len(self._samples["test"])
        self.default_augment = Augment(pad=0, flip=True, crop_scale=(0.08, 1.0))
        if num_workers is None:  # workers pay off only for real folders
            num_workers = 0 if self.n_train < 1000 else min(4, os.cpu_count() or 1)
        self.num_workers = int(num_workers)

    def _split_train(self, held, keep) -> None:
        train = self._samples["train"]
        self._samples["holdout"] = [train[int(i)] for i in held]
        self._samples["train"] = [train[int(i)] for i in keep]

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
    batches = iter(loader)
    try:
        for x, y in batches:
            yield (_to_unit_float(x.to(device, non_blocking=True)),
                   y.to(torch.int64).to(device, non_blocking=True))
    except UnreadableImage as error:
        # Its traceback holds the loader's iterator, so its worker processes would wait for
        # a garbage collection, whose late shutdown stalls 10 s: without it they stop now.
        raise error.with_traceback(None) from None
    finally:
        del batches
