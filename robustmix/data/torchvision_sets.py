"""The torchvision data sets (CIFAR-10/100, SVHN, MNIST, Fashion-MNIST) read from their
on-disk formats, torchvision's checksum checks kept, into :class:`TensorSource`."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robustmix.core.errors import UsageError
from robustmix.data.augment import Augment
from robustmix.data.downloads import download_problem
from robustmix.data.image_check import one_line as _one_line
from robustmix.data.sources import _CHUNK, TensorSource


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
    """(x_train, y_train, x_test, y_test) through torchvision, its checksum checks kept.

    A failure is one line: with ``download``, what went wrong with the download (no
    network, a partial download, a checksum mismatch, a foreign file:
    :func:`robustmix.data.downloads.download_problem`); else which files are missing or
    do not pass the checks."""
    # torchvision (about 1 s to import) loads only for the data sets that need it
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TORCHVISION[name][0])
    try:
        data = _read_splits(name, cls, root, download)
    except Exception as error:  # noqa: BLE001 - any failure while reading is the files' fault
        problem = download_problem(name, cls, root, error) if download else None
        raise UsageError(problem or _read_problem(name, root, download, error)) from None
    where = _folder(name, root)
    for split, (x, y) in zip(("train", "test"), data):
        if x.dtype != torch.uint8 or x.ndim != 4 or y.shape != (x.shape[0],):
            raise UsageError(f"{name} {split} files in {os.path.join(where, '')} hold "
                             f"{x.dtype} {tuple(x.shape)} images and {tuple(y.shape)} labels; "
                             f"the files are not {name}")
    (x_train, y_train), (x_test, y_test) = data
    return x_train, y_train, x_test, y_test


def _folder(name: str, root: str) -> str:
    folder = _TORCHVISION[name][3]
    return os.path.join(root, folder) if folder else root


def _read_splits(name: str, cls, root: str, download: bool) -> list[tuple[Tensor, Tensor]]:
    """The (images, labels) of train and test as torchvision reads them."""
    if name == "svhn":
        train, test = (cls(root, split=split, download=download) for split in ("train", "test"))
        return [(torch.from_numpy(np.ascontiguousarray(d.data)),  # already (N, C, H, W)
                 torch.from_numpy(np.asarray(d.labels, dtype=np.int64))) for d in (train, test)]
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
    return data


def _read_problem(name: str, root: str, download: bool, error: BaseException) -> str:
    """Why the files in ``root`` could not be read (missing, failed checksums, garbage)."""
    _, _, _, _, files, described = _TORCHVISION[name]
    where = _folder(name, root)
    if not isinstance(error, RuntimeError):
        action = "download or read" if download else "read"
        return (f"could not {action} {name} from {os.path.join(where, '')}: "
                f"{_one_line(error)}; the files are corrupt or not {name}")
    # torchvision's one message for absent files and failed md5 checks.
    missing = [f for f in files if not os.path.isfile(os.path.join(where, f))]
    tried = f"download failed ({_one_line(error)}); " if download else ""
    if missing:
        return (f"{name} not found in {os.path.join(root, '')}: {tried}expected "
                f"{os.path.join(where, '')} ({described}) as torchvision writes it; pass "
                f"--download to fetch it, or --data-dir to point at it")
    return (f"{name} files in {os.path.join(where, '')} failed torchvision's checksum check "
            f"(corrupt, truncated or not the official files; {_one_line(error)}); delete them "
            f"and pass --download, or point --data-dir at good copies")


def _load_torchvision(name: str, data_dir: str, image_size: int | None, download: bool,
                      device: Any) -> TensorSource:
    _, num_classes, flip, *_ = _TORCHVISION[name]
    x_train, y_train, x_test, y_test = _read_torchvision(name, data_dir, download)
    if image_size is not None:
        x_train, x_test = _resize_uint8(x_train, image_size), _resize_uint8(x_test, image_size)
    size = x_train.shape[2]
    return TensorSource(name, x_train, y_train, x_test, y_test, num_classes=num_classes,
                        default_augment=Augment(pad=size // 8, flip=flip), device=device)
