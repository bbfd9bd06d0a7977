""":func:`load_dataset`: a data set by name (digits, the torchvision sets, image folders) or
a plug-in's.

A data set of one's own is a plug-in (:mod:`robustmix.core.plugins`), given as
``package.module:factory`` or as the name of an entry point in the group
``robustmix.datasets``. Its factory is called as ``factory(data_dir=..., image_size=...,
device=...)``: ``data_dir`` is ``--data-dir`` (where its files are), ``image_size`` the side
asked for (None: its own), ``device`` where a :class:`TensorSource` keeps its tensors. It
returns a :class:`~robustmix.data.sources.DataSource`, most simply a
:class:`~robustmix.data.sources.TensorSource` built from uint8 (N, C, H, W) images and
int64 labels, which carries what robustmix needs of a data set: its number of classes
(labels outside them are refused), its image shape, its normalization (the per-channel
mean and std of its training images) and its default augmentation. The factory reads and
checks its own on-disk format and refuses what it cannot read with a one-line
:class:`UsageError`; any other exception it raises is reported in one line too.
``examples/npy_folder.py`` reads a folder of ``.npy`` images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from robustmix.core import plugins
from robustmix.core.errors import UsageError
from robustmix.data.augment import Augment
from robustmix.data.folders import FOLDER_DEFAULT_SIZE, FolderSource
from robustmix.data.sources import DataSource, TensorSource
from robustmix.data.torchvision_sets import _TORCHVISION, _load_torchvision

DATASET_NAMES = ("digits", "cifar10", "cifar100", "svhn", "mnist", "fashionmnist")
"""Names accepted by :func:`load_dataset`, besides ``imagefolder:PATH``."""

DIGITS_TEST_SIZE = 397               # sklearn digits: 1,797 images -> 1,400 train / 397 test
DIGITS_DEFAULT_SIZE = 16
MIN_IMAGE_SIZE = 8


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


def load_dataset(spec: str, *, data_dir: str = "data", image_size: int | None = None,
                 download: bool = False, device: Any = "cpu",
                 num_workers: int | None = None, skip_bad_images: bool = False,
                 skipped: Sequence[str] = (), holdout: int = 0,
                 echo: Callable[[str], None] | None = None) -> DataSource:
    """The dataset named by ``spec``: one of :data:`DATASET_NAMES` or ``imagefolder:PATH``.

    ``image_size`` (>= 8) resizes square images once at load (digits default 16, folders 224,
    torchvision sets their native size). Tensor datasets are kept on ``device``.
    ``num_workers`` is the image-folder DataLoader's (None: 0 for small folders, else
    min(4, CPUs)). Nothing is downloaded unless ``download``.

    An image folder is checked first (:mod:`robustmix.data.image_check`): files that cannot
    be decoded are a :class:`BadImagesError`, or with ``skip_bad_images`` are left out;
    ``skipped`` (a run's recorded paths) are left out unchecked. ``echo`` receives the one
    line that says what was left out. ``holdout`` > 0 sets that many training examples
    aside as the split ``"holdout"`` (:meth:`DataSource.hold_out`, a fixed choice).
    """
    data = _load(spec, data_dir=data_dir, image_size=image_size, download=download,
                 device=device, num_workers=num_workers, skip_bad_images=skip_bad_images,
                 skipped=skipped, echo=echo)
    if holdout:
        data.hold_out(holdout)
    return data


def _load(spec: str, *, data_dir, image_size, download, device, num_workers, skip_bad_images,
          skipped, echo) -> DataSource:
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
                            num_workers=num_workers, skip_bad_images=skip_bad_images,
                            skipped=skipped, echo=echo)
    if spec == "digits":
        return _load_digits(image_size, device)
    if spec in _TORCHVISION:
        return _load_torchvision(spec, data_dir, image_size, download, device)
    factory = plugins.resolve(plugins.DATA_SET, spec, _PLUGINS, _adopt,
                              valid=f"{', '.join(DATASET_NAMES)}, imagefolder:PATH")
    return _plugin(spec, factory, data_dir=data_dir, image_size=image_size, device=device)


_PLUGINS: dict[str, Callable[..., DataSource]] = {}   # plug-ins' factories, by their text


def _adopt(factory: Any, text: str) -> Callable[..., DataSource]:
    """A plug-in data set's factory, checked against its contract and kept."""
    if not callable(factory):
        raise plugins.PluginError(f"is a {type(factory).__name__}, not a factory (a callable "
                                  "(data_dir, image_size, device) -> DataSource)")
    if not plugins.takes(factory, data_dir="data", image_size=None, device="cpu"):
        raise plugins.PluginError("its factory must take the keywords data_dir, image_size "
                                  "and device")
    _PLUGINS[text] = factory
    return factory


def _plugin(spec: str, factory: Callable[..., DataSource], *, data_dir: str,
            image_size: int | None, device: Any) -> DataSource:
    """The data set a plug-in's factory returns, checked: a DataSource of the size asked."""
    data = plugins.call(plugins.DATA_SET, spec, factory, data_dir=data_dir,
                        image_size=image_size, device=device)
    if not isinstance(data, DataSource):
        raise plugins.failure(plugins.DATA_SET, spec, f"its factory returned a "
                              f"{type(data).__name__}, not a robustmix.data.DataSource "
                              "(e.g. a TensorSource)")
    if image_size is not None and (data.height, data.width) != (image_size, image_size):
        raise plugins.failure(plugins.DATA_SET, spec, f"its factory returned "
                              f"{data.height}x{data.width} images, not the "
                              f"{image_size}x{image_size} asked for")
    return data


SKIPPED_KEY = "skipped_images"  # in config.json's "dataset" section


def recorded_skips(config: Mapping[str, Any], source: str) -> tuple[str, ...]:
    """The image files a run left out when it started (config.json's
    ``dataset.skipped_images``; none for runs that left out nothing)."""
    dataset = config.get("dataset", {})
    value = dataset.get(SKIPPED_KEY, []) if isinstance(dataset, Mapping) else []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{source}: dataset.{SKIPPED_KEY} must be a list of paths, "
                         f"got {str(value)[:40]}")
    return tuple(value)


# (train, test) examples of each torchvision set as published
EXPECTED_SIZES = {"cifar10": (50000, 10000), "cifar100": (50000, 10000),
                  "svhn": (73257, 26032), "mnist": (60000, 10000),
                  "fashionmnist": (60000, 10000)}


def check_available(spec: str, *, data_dir: str = "data", skip_bad_images: bool = False
                    ) -> str | None:
    """Why the data set ``spec`` cannot be trained on now (one line), or None when it can:
    present, readable, with the published number of examples and every class (a
    torchvision set), or every image decodable (a folder, unless ``skip_bad_images``).
    Reads the whole data set once (an image folder's check is cached); downloads nothing."""
    if spec == "digits":  # embedded in scikit-learn
        return None
    try:
        data = load_dataset(spec, data_dir=data_dir, skip_bad_images=skip_bad_images)
    except UsageError as error:
        return str(error)
    expected = EXPECTED_SIZES.get(spec)
    if expected is not None and (data.n_train, data.n_test) != expected:
        return (f"{spec} in {data_dir}: {data.n_train} train / {data.n_test} test images, "
                f"expected {expected[0]} / {expected[1]}; the files are incomplete or not "
                f"{spec}")
    if isinstance(data, TensorSource):
        classes = int(torch.unique(data.tensors("train")[1]).numel())
        if classes != data.num_classes:
            return (f"{spec} in {data_dir}: the training images hold {classes} of its "
                    f"{data.num_classes} classes; the files are incomplete or not {spec}")
    return None
