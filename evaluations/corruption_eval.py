"""`evaluate_corruptions`: a trained run's accuracy and calibration under common corruptions.

Writes ``RUN_DIR/corruptions.csv`` (atomically): one row per corruption and severity, after a
``clean`` row (severity 0), with the examples used, accuracy, ECE, NLL and Brier score
(:mod:`robustmix.evaluations.calibration`). Where the images come from:

- **CIFAR-10-C / CIFAR-100-C** when the run's data set is cifar10 / cifar100 and
  ``DATA_DIR/CIFAR-10-C/`` (``CIFAR-100-C/``) exists: ``<corruption>.npy`` of uint8
  (5·n_test, H, W, C) images, severity s in rows (s−1)·n_test … s·n_test − 1, and
  ``labels.npy``, which must be the test labels five times over. The 15 standard corruptions
  must all be there and sound (a missing, truncated or foreign file is a UsageError naming
  it: never a silently shorter benchmark); the 4 extras are used when present. Summary:
  the mean accuracy over the 15 × 5 standard cells and the unnormalized mean corruption
  error (100 − that mean, in %), the extras' mean apart.
- **the on-the-fly suite** (:mod:`robustmix.evaluations.corruptions`) otherwise, on the device, a
  generator per corruption and severity seeded from ``seed``.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustmix.evaluations.calibration import calibration
from robustmix.evaluations.corruptions import CORRUPTIONS, SEVERITIES, corrupt, generator_for
from robustmix.evaluations.generalization import _check_arguments, _check_same_data
from robustmix.core import runs
from robustmix.core.config import TrainConfig
from robustmix.core.errors import UsageError
from robustmix.data import load_dataset, recorded_skips
from robustmix.models.weights import load_model

BENCHMARKS = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C"}
STANDARD = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
            "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
            "elastic_transform", "pixelate", "jpeg_compression")
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
BENCHMARK_SIZE = (32, 32)
SUITE = "on-the-fly"
COLUMNS = ["corruption", "severity", "source", "set", "n_examples", "accuracy", "ece", "nll",
           "brier", "seed"]


def evaluate_corruptions(run_dir: str | Path, *, device: str = "auto", batch_size: int = 256,
                         n_examples: int | None = None, seed: int = 0,
                         data_dir: str | None = None) -> dict[str, Any]:
    """Measure one run under corruptions (module docstring); returns the rows and summary.

    Arguments are checked as :func:`robustmix.evaluations.evaluate_run` checks them, before the run
    is read; an image folder leaves out the files the run left out."""
    device = _check_arguments(run_dir, device=device, seed=seed, n_examples=n_examples,
                              batch_size=batch_size)
    run = runs.RunDir(run_dir).open()
    config = TrainConfig.from_dict(run.train, source=str(run.config_path))
    root = data_dir if data_dir is not None else config.data_dir
    data = load_dataset(config.dataset, data_dir=root, image_size=config.image_size,
                        device="cpu", skipped=recorded_skips(run.config, str(run.config_path)),
                        holdout=config.holdout)
    _check_same_data(run, data)
    indices = runs.test_subset(data.n_test, n_examples)
    images, labels = data.eval_images("test", indices)
    release = BENCHMARKS.get(run.dataset.get("name"))
    folder = Path(root) / release if release else None
    benchmark = release if folder is not None and folder.is_dir() else None
    files = check_benchmark(folder, data.tensors("test")[1], images.shape[1:]) \
        if benchmark else None
    model = load_model(run.path).to(device).eval()
    started = time.perf_counter()
    measure = functools.partial(_measure, model, batch_size=batch_size, device=device)
    rows = [_row("clean", 0, "test set", "clean", measure(images, labels), seed)]
    if files is None:
        for name in CORRUPTIONS:
            for severity in SEVERITIES:
                g = generator_for(seed, name, severity, device)
                cell = measure(images, labels, corruption=(name, severity, g))
                rows.append(_row(name, severity, SUITE, "suite", cell, seed))
    else:
        for name, (array, kind) in files.items():
            for severity in SEVERITIES:
                cell = measure(_benchmark_images(array, severity, data.n_test, indices), labels)
                rows.append(_row(name, severity, benchmark, kind, cell, seed))
    runs.write_csv(run.corruptions_path, rows, COLUMNS)
    return {"run": run.path.name, "source": benchmark or SUITE, "rows": rows,
            **summarize(rows), "seconds": time.perf_counter() - started,
            "note": None if benchmark or folder is None else
            f"{folder} not found: the on-the-fly suite was used, not {release}"}


def _row(name: str, severity: int, source: str, kind: str, c: dict, seed: int) -> dict:
    return {"corruption": name, "severity": severity, "source": source, "set": kind,
            "n_examples": c["n"], "accuracy": f"{c['accuracy']:.8g}", "ece": f"{c['ece']:.8g}",
            "nll": f"{c['nll']:.8g}", "brier": f"{c['brier']:.8g}", "seed": seed}


def summarize(rows: list[dict]) -> dict[str, float | None]:
    """Mean accuracy (%) over the corrupted cells of each set: ``mean_accuracy`` over the
    standard -C cells or the on-the-fly suite, ``mce_unnormalized`` = 100 − it (for a -C
    benchmark only), ``extra_mean_accuracy`` over the -C extras (None when absent)."""
    def mean(kind: str) -> float | None:
        values = [float(r["accuracy"]) for r in rows if r["set"] == kind]
        return 100 * float(np.mean(values)) if values else None
    main = mean("standard")
    return {"mean_accuracy": main if main is not None else mean("suite"),
            "mce_unnormalized": None if main is None else 100 - main,
            "extra_mean_accuracy": mean("extra")}


@torch.no_grad()
def _measure(model, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, device,
             corruption: tuple | None = None) -> dict:
    """Calibration (and accuracy) of the model on uint8 ``images``, in batches on the
    device; ``corruption`` = (name, severity, generator) corrupts each batch there first."""
    logits = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device).float().div_(255)
        if corruption is not None:
            x = corrupt(x, *corruption)
        logits.append(model(x).float().cpu())
    return calibration(torch.cat(logits), labels.cpu())


def _benchmark_images(array: np.ndarray, severity: int, n_test: int,
                      indices: np.ndarray) -> torch.Tensor:
    """The chosen test examples at ``severity``, as uint8 (N, C, H, W)."""
    block = np.asarray(array[(severity - 1) * n_test + indices])
    return torch.from_numpy(block).permute(0, 3, 1, 2).contiguous()


def check_benchmark(folder: Path, test_labels: torch.Tensor, image_shape: tuple
                    ) -> dict[str, tuple[np.ndarray, str]]:
    """The -C files of ``folder``, memory-mapped and checked: every standard corruption and
    the extras present, each uint8 (5·n_test, H, W, C) for the test set's (C, H, W), and
    labels.npy equal to the test labels five times over. A missing, truncated or foreign
    file is a UsageError naming it."""
    n = int(test_labels.shape[0])
    channels, height, width = (int(v) for v in image_shape)
    if (height, width) != BENCHMARK_SIZE:
        raise UsageError(f"{folder}: this run's images are {height}×{width}, the benchmark's "
                         f"{BENCHMARK_SIZE[0]}×{BENCHMARK_SIZE[1]}; give a --data-dir "
                         f"without {folder.name}/ to use the on-the-fly suite")
    labels = _load(folder / "labels.npy", folder)
    expected = np.tile(test_labels.cpu().numpy(), len(SEVERITIES))
    if labels.shape != expected.shape or not np.issubdtype(labels.dtype, np.integer) \
            or not np.array_equal(labels, expected):
        raise UsageError(f"{folder / 'labels.npy'}: not the test set's labels five times over "
                         f"(expected {expected.shape[0]} integer labels, found {labels.dtype} "
                         f"{labels.shape}); a foreign or damaged file: download it again")
    shape = (len(SEVERITIES) * n, height, width, channels)
    files = {}
    for name in STANDARD + EXTRA:
        path = folder / f"{name}.npy"
        if name in EXTRA and not path.exists():
            continue
        array = _load(path, folder)
        if array.dtype != np.uint8 or array.shape != shape:
            raise UsageError(f"{path}: expected uint8 images of shape {shape} (5 severities × "
                             f"the {n} test images), found {array.dtype} {array.shape}; a "
                             "truncated or foreign file: download it again")
        files[name] = (array, "standard" if name in STANDARD else "extra")
    return files


def _load(path: Path, folder: Path) -> np.ndarray:
    if not path.is_file():
        raise UsageError(f"{path} not found: {folder.name} needs labels.npy and the 15 "
                         f"standard corruptions ({', '.join(STANDARD)})")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
        raise UsageError(f"{path}: not a readable .npy file ({reason}); a truncated or "
                         "damaged download: download it again") from None
