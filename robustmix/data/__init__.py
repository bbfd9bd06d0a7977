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

The modules, by topic: :mod:`~robustmix.data.augment` (the batched augmentation ops),
:mod:`~robustmix.data.sources` (:class:`DataSource`, :class:`TensorSource`),
:mod:`~robustmix.data.folders` (:class:`FolderSource`), :mod:`~robustmix.data.image_check`
(the check for files that cannot be decoded, cached), :mod:`~robustmix.data.torchvision_sets`
(CIFAR, SVHN, MNIST from their files), :mod:`~robustmix.data.downloads` (what a failed
download was) and :mod:`~robustmix.data.loading`
(:func:`load_dataset`, :func:`check_available`).
"""

from robustmix.data.augment import (RESIZED_CROP_RATIO, RESIZED_CROP_TRIES, Augment,
                                    batch_crop, batch_flip, batch_resized_crop,
                                    draw_resized_crop_boxes)
from robustmix.data.folders import (FOLDER_DEFAULT_SIZE, IMAGENET_MEAN, IMAGENET_STD,
                                    FolderSource, LazyImages)
from robustmix.data.image_check import BadImagesError, UnreadableImage, find_bad_images
from robustmix.data.loading import (DATASET_NAMES, DIGITS_DEFAULT_SIZE, DIGITS_TEST_SIZE,
                                    MIN_IMAGE_SIZE, check_available, load_dataset,
                                    recorded_skips)
from robustmix.data.sources import DataSource, TensorSource

__all__ = [
    "Augment", "BadImagesError", "DATASET_NAMES", "DIGITS_DEFAULT_SIZE", "DIGITS_TEST_SIZE",
    "DataSource", "FOLDER_DEFAULT_SIZE", "FolderSource", "IMAGENET_MEAN", "IMAGENET_STD",
    "LazyImages", "MIN_IMAGE_SIZE", "RESIZED_CROP_RATIO", "RESIZED_CROP_TRIES", "TensorSource",
    "UnreadableImage", "batch_crop", "batch_flip", "batch_resized_crop", "check_available",
    "draw_resized_crop_boxes", "find_bad_images", "load_dataset", "recorded_skips",
]
