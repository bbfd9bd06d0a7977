"""Tests for robustmix.data: datasets on disk in their real formats, and batch augmentation.

Nothing is downloaded: torchvision data sets are written here, tiny, in the formats
torchvision reads; where torchvision verifies md5 checksums, only the test bypasses them.
"""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image

from robustmix.data import (
    DATASET_NAMES,
    Augment,
    FolderSource,
    TensorSource,
    batch_crop,
    batch_resized_crop,
    draw_resized_crop_boxes,
    load_dataset,
)
from robustmix.core.errors import UsageError


# --------------------------------------------------------------------------- helpers


def _source(n: int = 60, channels: int = 3, size: int = 12, seed: int = 0) -> TensorSource:
    """Random uint8 images whose label is their own index, so batches reveal the indices."""
    gen = torch.Generator().manual_seed(seed)
    x_train = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen)
    x_test = torch.randint(0, 256, (7, channels, size, size), dtype=torch.uint8, generator=gen)
    return TensorSource("toy", x_train, torch.arange(n), x_test, torch.arange(7),
                        num_classes=n)


def _epoch(source, seed: int, batch_size: int, augment: Augment):
    return list(source.train_batches(np.random.default_rng(seed), batch_size, "cpu", augment))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# --------------------------------------------------------------------------- digits


def test_digits_split_sizes_range_and_shape(digits) -> None:
    x_train, y_train = digits.tensors("train")
    x_test, y_test = digits.tensors("test")
    assert (digits.n_train, digits.n_test) == (1400, 397)
    assert x_train.shape == (1400, 1, 16, 16) and x_test.shape == (397, 1, 16, 16)
    assert x_train.dtype == torch.uint8 and y_train.dtype == torch.int64
    assert int(x_train.min()) == 0 and int(x_train.max()) == 255
    assert (digits.num_classes, digits.channels, digits.height, digits.width) == (10, 1, 16, 16)
    # Digits must not be mirrored; pad is size // 8.
    assert digits.default_augment == Augment(pad=2, flip=False)
    # The mean/std are those of the train images in [0, 1]. Both sides are float64 (the
    # loader sums in float64): they differ by float64 rounding, ~1e-16 of E[x^2] even after
    # E[x^2] - mean^2 cancels. A float32 reference would carry a sum of 358,400 terms whose
    # error depends on the CPU's reduction order and vector width.
    unit = x_train.double() / 255
    assert digits.mean[0] == pytest.approx(unit.mean().item(), abs=1e-9)
    assert digits.std[0] == pytest.approx(unit.std(unbiased=False).item(), abs=1e-9)


def test_digits_split_is_stratified_and_fixed(digits) -> None:
    _, y_train = digits.tensors("train")
    _, y_test = digits.tensors("test")
    all_counts = np.bincount(np.concatenate([y_train.numpy(), y_test.numpy()]), minlength=10)
    test_counts = np.bincount(y_test.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - all_counts * 397 / 1797) <= 1)
    again = load_dataset("digits")
    for split in ("train", "test"):
        assert torch.equal(again.tensors(split)[0], digits.tensors(split)[0])
        assert torch.equal(again.tensors(split)[1], digits.tensors(split)[1])


def test_digits_image_size() -> None:
    big = load_dataset("digits", image_size=24)
    assert big.tensors("train")[0].shape == (1400, 1, 24, 24)
    assert (big.height, big.width, big.default_augment.pad) == (24, 24, 3)


def test_bad_names_and_sizes() -> None:
    with pytest.raises(UsageError, match=r"unknown dataset 'imagenet'; valid: digits, cifar10"):
        load_dataset("imagenet")
    assert set(DATASET_NAMES) >= {"digits", "cifar10", "svhn", "mnist"}
    with pytest.raises(UsageError, match="image size must be an integer >= 8"):
        load_dataset("digits", image_size=4)
    with pytest.raises(UsageError, match="crop scale"):
        Augment(pad=0, flip=False, crop_scale=(0.5, 0.2))
    with pytest.raises(UsageError, match="padding"):
        Augment(pad=-1, flip=False)


# --------------------------------------------------------------------------- CIFAR-10


def _write_cifar10(root, n_per_batch: int = 2, n_test: int = 3, seed: int = 0):
    """cifar-10-batches-py/ as torchvision reads it: pickled dicts of (n, 3072) uint8 rows."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows, labels = [], []
    for name, n in [*[(f"data_batch_{i}", n_per_batch) for i in range(1, 6)], ("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        lab = [int(v) for v in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": lab}, f, protocol=2)
        rows.append(data)
        labels.append(lab)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2)
    return np.concatenate(rows[:5]), sum(labels[:5], []), rows[5], labels[5]


def _skip_cifar_checksums(monkeypatch) -> None:
    # The files are ours, not the official ones: accept them as present (test only).
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda path, md5=None: os.path.isfile(path))


def test_cifar10_round_trips_pixels(tmp_path, monkeypatch) -> None:
    rows, labels, test_rows, test_labels = _write_cifar10(tmp_path)
    # One known pixel: image 3 (data_batch_2, row 1), green channel, y=5, x=7.
    rows[3, 1 * 1024 + 5 * 32 + 7] = 201
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as f:
        pickle.dump({"data": rows[2:4], "labels": labels[2:4]}, f, protocol=2)
    _skip_cifar_checksums(monkeypatch)
    source = load_dataset("cifar10", data_dir=str(tmp_path))
    x, y = source.tensors("train")
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.uint8
    assert int(x[3, 1, 5, 7]) == 201
    assert torch.equal(x, torch.from_numpy(rows.reshape(10, 3, 32, 32)))
    assert y.tolist() == labels
    x_test, y_test = source.tensors("test")
    assert torch.equal(x_test, torch.from_numpy(test_rows.reshape(3, 3, 32, 32)))
    assert y_test.tolist() == test_labels
    assert source.default_augment == Augment(pad=4, flip=True)
    assert source.num_classes == 10
    small = load_dataset("cifar10", data_dir=str(tmp_path), image_size=16)
    assert small.tensors("test")[0].shape == (3, 3, 16, 16)


def test_cifar10_refuses_unchecked_and_missing_files(tmp_path) -> None:
    _write_cifar10(tmp_path)
    with pytest.raises(UsageError, match="checksum") as info:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert "cifar-10-batches-py" in str(info.value) and "\n" not in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="not found") as info:
        load_dataset("cifar10", data_dir=str(empty))
    message = str(info.value)
    assert os.path.join(str(empty), "cifar-10-batches-py") in message
    assert "data_batch_1..5" in message and "--download" in message


def test_cifar10_garbage_that_passes_the_check_is_a_usage_error(tmp_path, monkeypatch) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    _skip_cifar_checksums(monkeypatch)
    with pytest.raises(UsageError, match="could not read cifar10"):
        load_dataset("cifar10", data_dir=str(tmp_path))


# --------------------------------------------------------------------------- MNIST, SVHN


def _write_idx(path, array: np.ndarray) -> None:
    """The big-endian idx format: 0x0000 08 ndim, then each dimension, then the bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_raw_idx_files(tmp_path, name, folder) -> None:
    rng = np.random.default_rng(1)
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    train = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    train[2, 3, 20] = 77
    _write_idx(raw / "train-images-idx3-ubyte", train)
    _write_idx(raw / "train-labels-idx1-ubyte", np.array([3, 1, 4, 1, 5]))
    _write_idx(raw / "t10k-images-idx3-ubyte", test)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.array([9, 2, 6, 5]))
    source = load_dataset(name, data_dir=str(tmp_path))
    x, y = source.tensors("train")
    assert x.shape == (5, 1, 28, 28) and int(x[2, 0, 3, 20]) == 77
    assert torch.equal(x[:, 0], torch.from_numpy(train)) and y.tolist() == [3, 1, 4, 1, 5]
    assert torch.equal(source.tensors("test")[0][:, 0], torch.from_numpy(test))
    assert source.default_augment == Augment(pad=3, flip=False)
    # A truncated image file is refused in one line naming the data set.
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    with pytest.raises(UsageError, match=f"could not read {name}"):
        load_dataset(name, data_dir=str(tmp_path))


def test_svhn_mat_files(tmp_path, monkeypatch) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(2)
    arrays = {}
    for split, n in (("train", 4), ("test", 3)):
        images = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # (H, W, C, N) as SVHN
        labels = np.array([[10], [1], [9], [4]][:n], dtype=np.uint8)     # 10 is the digit 0
        scipy_io.savemat(tmp_path / f"{split}_32x32.mat", {"X": images, "y": labels})
        arrays[split] = images
    with pytest.raises(UsageError, match="checksum"):
        load_dataset("svhn", data_dir=str(tmp_path))
    monkeypatch.setattr(torchvision.datasets.SVHN, "_check_integrity", lambda self: True)
    source = load_dataset("svhn", data_dir=str(tmp_path))
    x, y = source.tensors("train")
    assert x.shape == (4, 3, 32, 32)
    assert int(x[2, 1, 5, 9]) == int(arrays["train"][5, 9, 1, 2])
    assert torch.equal(x, torch.from_numpy(arrays["train"]).permute(3, 2, 0, 1))
    assert y.tolist() == [0, 1, 9, 4]
    assert source.default_augment == Augment(pad=4, flip=False)


# --------------------------------------------------------------------------- image folders


def _write_folder(root, train_per_class: int = 3, val_per_class: int = 2):
    """Solid-colour 40x40 PNGs (each image its own colour), 2 classes."""
    colours = {}
    k = 0
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label, cls in enumerate(("ant", "bee")):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                colour = (10 * k + 5, 255 - 10 * k, 100 + label * 50)
                Image.new("RGB", (40, 40), colour).save(root / split / cls / f"{i}.png")
                colours[(split, colour)] = label
                k += 1
    return colours


def test_imagefolder_batches(tmp_path) -> None:
    colours = _write_folder(tmp_path)
    source = load_dataset(f"imagefolder:{tmp_path}", image_size=32)
    assert isinstance(source, FolderSource)
    assert (source.num_classes, source.n_train, source.n_test) == (2, 6, 4)
    assert source.default_augment.crop_scale == (0.08, 1.0) and source.default_augment.flip
    batches = list(source.train_batches(np.random.default_rng(0), 4, "cpu",
                                        source.default_augment))
    assert len(batches) == 1  # 6 images, batch 4, drop_last
    x, y = batches[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    # Solid images stay solid under crop and flip: each one is a train image's colour.
    for image, label in zip(x, y):
        colour = tuple(int(round(float(v) * 255)) for v in image[:, 0, 0])
        assert colours[("train", colour)] == int(label)
    seen = []
    for xb, yb in source.eval_batches("test", 3, "cpu"):
        assert xb.shape[1:] == (3, 32, 32)
        for image, label in zip(xb, yb):
            colour = tuple(int(round(float(v) * 255)) for v in image[:, 0, 0])
            assert colours[("val", colour)] == int(label)
            seen.append(colour)
    val_colours = sorted(c for split, c in colours if split == "val")
    assert sorted(seen) == val_colours  # every val image exactly once
    x_val, y_val = source.tensors("test")
    assert x_val.shape == (4, 3, 32, 32) and x_val.dtype == torch.uint8
    assert y_val.tolist() == [0, 0, 1, 1]


def test_imagefolder_epochs_do_not_depend_on_workers(tmp_path) -> None:
    # Striped images so that crops and flips show.
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(4):
                pixels = np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    spec = f"imagefolder:{tmp_path}"
    serial = load_dataset(spec, image_size=16, num_workers=0)
    parallel = load_dataset(spec, image_size=16, num_workers=2)
    aug = Augment(pad=0, flip=True, crop_scale=(0.2, 1.0))
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = list(serial.train_batches(np.random.default_rng(5), 4, "cpu", aug))
    b = list(parallel.train_batches(np.random.default_rng(5), 4, "cpu", aug))
    c = list(serial.train_batches(np.random.default_rng(6), 4, "cpu", aug))
    assert torch.equal(torch.get_rng_state(), torch_state)  # global RNGs untouched
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert len(a) == 2
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_imagefolder_errors(tmp_path) -> None:
    with pytest.raises(UsageError, match="no train/ folder"):
        load_dataset(f"imagefolder:{tmp_path}")
    _write_folder(tmp_path)
    (tmp_path / "val" / "wasp").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "val" / "wasp" / "0.png")
    with pytest.raises(UsageError, match="classes not in train/: wasp"):
        load_dataset(f"imagefolder:{tmp_path}")
    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "val" / "a").mkdir(parents=True)
    with pytest.raises(UsageError, match="image folder"):
        load_dataset(f"imagefolder:{empty}")


# --------------------------------------------------------------------------- augmentation


def test_no_augmentation_is_the_permuted_images() -> None:
    source = _source()
    x_all, _ = source.tensors("train")
    for x, y in _epoch(source, 0, 20, Augment(pad=0, flip=False)):
        assert torch.equal(x, _unit(x_all[y]))


def test_each_epoch_is_a_permutation() -> None:
    source = _source(n=60)
    seen = torch.cat([y for _, y in _epoch(source, 0, 20, Augment(pad=2, flip=True))])
    assert sorted(seen.tolist()) == list(range(60))
    assert seen.tolist() != list(range(60))  # shuffled
    batches = _epoch(source, 1, 25, Augment())
    assert len(batches) == 2 == source.batches_per_epoch(25)  # drop_last
    seen = torch.cat([y for _, y in batches])
    assert len(set(seen.tolist())) == 50
    with pytest.raises(UsageError, match="larger than the training set"):
        _epoch(source, 0, 61, Augment())


def test_same_seed_same_batches() -> None:
    source = _source()
    aug = Augment(pad=3, flip=True)
    a, b, c = _epoch(source, 7, 16, aug), _epoch(source, 7, 16, aug), _epoch(source, 8, 16, aug)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][1], c[0][1])
    # The epoch's draws are taken when train_batches is called, not as batches are consumed.
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    source.train_batches(rng1, 16, "cpu", aug)
    list(source.train_batches(rng2, 16, "cpu", aug))
    assert rng1.integers(2**62) == rng2.integers(2**62)


def test_pad_crop_is_a_shifted_copy() -> None:
    source = _source(size=10)
    pad = 2
    x_all, _ = source.tensors("train")
    padded = torch.nn.functional.pad(x_all, (pad,) * 4)
    plain = _epoch(source, 4, 30, Augment(pad=0, flip=False))
    cropped = _epoch(source, 4, 30, Augment(pad=pad, flip=False))
    offsets = set()
    for (_, y_plain), (x, y) in zip(plain, cropped):
        assert torch.equal(y, y_plain)  # the crop does not change the permutation
        for image, index in zip(x, y):
            matches = [(oy, ox) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
                       if torch.equal(image, _unit(padded[index, :, oy:oy + 10, ox:ox + 10]))]
            assert len(matches) == 1
            offsets.add(matches[0])
    assert len(offsets) > 10  # offsets vary over the 25 possible


def test_batch_crop_extreme_offsets() -> None:
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.uint8).reshape(2, 1, 3, 3)
    out = batch_crop(x, torch.tensor([[0, 0], [2, 2]]), pad=1)
    assert torch.equal(out[0, 0], torch.tensor([[0, 0, 0], [0, 0, 1], [0, 3, 4]], dtype=torch.uint8))
    assert torch.equal(out[1, 0], torch.tensor([[13, 14, 0], [16, 17, 0], [0, 0, 0]],
                                               dtype=torch.uint8))


def test_flip_is_an_exact_mirror() -> None:
    source = _source(n=200)
    x_all, _ = source.tensors("train")
    flipped = 0
    for x, y in _epoch(source, 0, 50, Augment(pad=0, flip=True)):
        for image, index in zip(x, y):
            original = _unit(x_all[index])
            if torch.equal(image, original.flip(2)):
                flipped += 1
            else:
                assert torch.equal(image, original)
    assert 60 <= flipped <= 140


def test_resized_crop_of_the_whole_image_is_the_image() -> None:
    source = _source(size=16)
    x_all, _ = source.tensors("train")
    for x, y in _epoch(source, 0, 20, Augment(pad=0, flip=False, crop_scale=(1.0, 1.0))):
        assert x.shape == (20, 3, 16, 16)
        torch.testing.assert_close(x, _unit(x_all[y]), atol=1e-5, rtol=0)


def test_resized_crop_shapes_range_and_change() -> None:
    source = _source(size=16)
    x_all, _ = source.tensors("train")
    batches = _epoch(source, 0, 20, Augment(pad=0, flip=True, crop_scale=(0.2, 0.5)))
    for x, y in batches:
        assert x.shape == (20, 3, 16, 16) and x.dtype == torch.float32
        assert float(x.min()) >= 0 and float(x.max()) <= 1
        assert not torch.allclose(x, _unit(x_all[y]), atol=0.05)


def test_resized_crop_boxes_follow_torchvision() -> None:
    rng = np.random.default_rng(0)
    boxes = draw_resized_crop_boxes(rng, 4000, 30, 40, (0.1, 0.6))
    top, left, h, w = boxes.T
    assert np.all((top >= 0) & (left >= 0) & (top + h <= 30) & (left + w <= 40) & (h > 0) & (w > 0))
    area = h * w / (30 * 40)
    assert area.min() > 0.08 and area.max() < 0.65  # rounding lets it stray a little
    assert np.all((w / h > 0.7) & (w / h < 1.45))
    assert area.mean() == pytest.approx(0.35, abs=0.02)  # uniform area scale
    # Scale 0.9-1 on a wide image rarely fits: fallback is the ratio-clamped centre crop.
    wide = draw_resized_crop_boxes(rng, 50, 10, 40, (0.99, 1.0))
    assert np.all(wide == np.array([0, (40 - 13) // 2, 10, 13]))  # h=10, w=round(10*4/3)


def test_batch_resized_crop_matches_torchvision_resize() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 3, 20, 24), dtype=torch.uint8, generator=gen)
    boxes = torch.from_numpy(draw_resized_crop_boxes(np.random.default_rng(1), 5, 20, 24,
                                                     (0.1, 0.9)))
    out = batch_resized_crop(x, boxes, (20, 24))
    for image, (top, left, h, w), result in zip(x, boxes.tolist(), out):
        expected = TF.resized_crop(image.float(), top, left, h, w, [20, 24], antialias=False)
        torch.testing.assert_close(result, expected, atol=1e-3, rtol=0)


def test_eval_batches_cover_the_split_in_order() -> None:
    source = _source(n=23)
    batches = list(source.eval_batches("train", 10, "cpu"))
    assert [len(y) for _, y in batches] == [10, 10, 3]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(23))
    x_all, _ = source.tensors("train")
    assert torch.equal(torch.cat([x for x, _ in batches]), _unit(x_all))
    assert torch.cat([y for _, y in source.eval_batches("test", 4, "cpu")]).tolist() == list(range(7))
    with pytest.raises(UsageError, match="unknown split 'val'"):
        source.eval_batches("val", 4, "cpu")
