"""A data set read from a folder of ``.npy`` images, as a robustmix data-set plug-in: the
worked example.

The folder (``--data-dir``) holds one sub-folder per split and, in each, one per class, as
an image folder does; every file is one image saved with ``numpy.save``::

    DATA_DIR/train/<class>/*.npy     uint8, (H, W) grey or (H, W, C), one shape throughout
    DATA_DIR/test/<class>/*.npy      the same classes

The classes are the train split's sub-folders in sorted order (label k is the k-th). The
files are read with ``allow_pickle=False``: an array file cannot run code. Anything else
(a missing split, a foreign class folder, an unreadable file, another dtype or shape) is
refused in one line naming the file and what is accepted.

A data-set plug-in is a factory ``factory(*, data_dir, image_size, device)`` that returns a
:class:`robustmix.data.DataSource`; a :class:`robustmix.data.TensorSource` built from uint8
(N, C, H, W) images carries the classes, the image shape, the normalization (its training
images' per-channel mean and std) and the default augmentation. Use it without installing
anything (imported from the current directory)::

    robustmix train --dataset examples.npy_folder:npy_folder --data-dir my_npy_folder

or in a study's ``[train]`` section (``dataset = "examples.npy_folder:npy_folder"`` with
``data_dir``), or from a package of your own as an entry point in
``robustmix.datasets``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from robustmix.core.errors import UsageError
from robustmix.data import Augment, TensorSource


def npy_folder(*, data_dir: str, image_size: int | None = None,
               device: Any = "cpu") -> TensorSource:
    """The data set in ``data_dir`` (see the module), its images resized to
    ``image_size`` x ``image_size`` when given."""
    root = Path(data_dir)
    classes = _classes(root / "train")
    (x_train, y_train), (x_test, y_test) = (_split(root / split, classes)
                                            for split in ("train", "test"))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UsageError(f"{root}: train images are {tuple(x_train.shape[1:])} but test "
                         f"images {tuple(x_test.shape[1:])}; one shape throughout")
    if image_size is not None:
        x_train, x_test = _resized(x_train, image_size), _resized(x_test, image_size)
    side = min(x_train.shape[2:])
    return TensorSource(f"npy_folder:{root}", x_train, y_train, x_test, y_test,
                        num_classes=len(classes), device=device,
                        default_augment=Augment(pad=side // 8, flip=False))


def _classes(train: Path) -> list[str]:
    if not train.is_dir():
        raise UsageError(f"{train} is not a folder: a .npy folder holds train/<class>/*.npy "
                         "and test/<class>/*.npy")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise UsageError(f"{train} holds {len(classes)} class folder(s); a classifier needs "
                         "at least 2")
    return classes


def _split(folder: Path, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, C, H, W) images and int64 labels of one split's folder."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder: a .npy folder holds train/<class>/*.npy "
                         "and test/<class>/*.npy")
    foreign = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
    if foreign:
        raise UsageError(f"{folder}: class folder {foreign[0]!r} is not among the train "
                         f"split's ({', '.join(classes)})")
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).glob("*.npy")):
            images.append(_image(path, images[0].shape if images else None))
            labels.append(label)
    if not images:
        raise UsageError(f"{folder} holds no .npy images under its class folders")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


def _image(path: Path, shape: tuple[int, ...] | None) -> np.ndarray:
    """One image as uint8 (H, W, C)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UsageError(f"{path} is not a readable .npy array ({err})") from None
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype != np.uint8 or array.ndim != 3 or min(array.shape[:2]) < 1:
        raise UsageError(f"{path} holds a {array.dtype} array of shape {array.shape}; "
                         "accepted: uint8 (H, W) or (H, W, C)")
    if shape is not None and array.shape != shape:
        raise UsageError(f"{path} is {array.shape}, the images before it {shape}; one "
                         "shape throughout")
    return array


def _resized(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images resized to size x size (bilinear, antialiased when shrinking)."""
    if tuple(x.shape[2:]) == (size, size):
        return x
    shrink = size < min(x.shape[2:])
    resized = F.interpolate(x.float(), size=(size, size), mode="bilinear",
                            align_corners=False, antialias=shrink)
    return resized.round_().clamp_(0, 255).to(torch.uint8)
