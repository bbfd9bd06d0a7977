"""`evaluate_run`: generalization measurements of one trained run, into its directory.

Writes ``RUN_DIR/generalization.json``, ``gradient_profile.csv`` and ``regularizer.csv``
(atomically) and returns the JSON's content (non-finite numbers as null): ``run``, ``mix``,
``seed`` (the training seed), ``dataset``, ``device``, ``batch_size``, ``seconds``, and

- ``train`` / ``test``: accuracy and mean cross-entropy on the clean (unmixed,
  unaugmented) splits, through :func:`robustmix.models.accuracy.evaluate` (the path training uses);
  ``gap``: accuracy train − test, loss test − train;
- ``first_layer``: the norms of :mod:`robustmix.evaluations.first_layer`;
- ``input_gradient``: mean over the gradient subset of ‖∇ℓ_k‖₂ and ‖∇f_k‖₂
  (:mod:`robustmix.evaluations.gradients`; L2 norm per example, then the mean);
- ``gradient_profile``: the Figure-4 profiles and decay statistic of :mod:`robustmix.evaluations.profiles`;
- ``regularizer``: Q_A per mask distribution (:mod:`robustmix.evaluations.regularizer`);
- ``calibration``: the clean test set's ``ece``, ``nll``, ``brier`` and reliability table
  (:mod:`robustmix.evaluations.calibration`, where the binning is stated).

The gradient parts use the whole test set, or with ``n_examples`` a fixed subset, the same
for every model and seed and the same as the attack runner's
(:func:`robustmix.core.runs.test_subset`).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustmix.evaluations.calibration import calibration, predict
from robustmix.evaluations.first_layer import first_layer_norms
from robustmix.evaluations.gradients import input_gradients, l2_per_example
from robustmix.evaluations.profiles import (COLUMNS, DEFINITION, NORMALIZATION, OffsetTable,
                                  decay_statistic, profile_rows)
from robustmix.evaluations.regularizer import regularizer_table
from robustmix.core import checks as guards
from robustmix.core import runs
from robustmix.core.config import TrainConfig
from robustmix.core.devices import resolve_device
from robustmix.core.errors import ConfigError, UsageError
from robustmix.data import load_dataset, recorded_skips
from robustmix.mixing import is_data_dependent, sampler_of
from robustmix.mixing.puzzlemix import kernel_on_batches
from robustmix.models.accuracy import evaluate
from robustmix.models.weights import load_model

DEFAULT_Q_DRAWS = 512
KERNEL_DRAWS = 1024          # masks for c(p) of a data-dependent MSDA (PuzzleMix), on real batches
PROFILE_ELEMENTS = 1 << 22   # gradient-map pixels per pass of the offset loop (32 MiB in float64)


def evaluate_run(run_dir: str | Path, *, device: str = "auto", batch_size: int = 256,
                 n_examples: int | None = None, q_draws: int = DEFAULT_Q_DRAWS,
                 seed: int = 0, skip_bad_images: bool = False,
                 data_dir: str | None = None) -> dict[str, Any]:
    """Measure one run (see the module docstring); returns what it writes to generalization.json.

    ``run_dir`` is a finished run's directory (a str or path); ``batch_size``, ``q_draws``
    and ``n_examples`` (None: the whole test set) are positive integers, ``seed`` an
    integer >= 0, ``device`` "auto", "cpu", "cuda" or "cuda:N". A bad argument raises
    :class:`~robustmix.core.errors.ConfigError` (a ValueError) or a TypeError naming it;
    a missing, unfinished or damaged run a :class:`~robustmix.core.errors.UsageError`.
    An image folder leaves out the files the run left out, and with ``skip_bad_images``
    those that cannot be decoded now (then on fewer examples than the run was trained on).
    ``data_dir`` overrides the run's data directory.
    """
    device = _check_arguments(run_dir, batch_size=batch_size, q_draws=q_draws,
                              n_examples=n_examples, seed=seed, device=device)
    run = runs.RunDir(run_dir).open()
    model = load_model(run.path)
    config = TrainConfig.from_dict(run.train, source=str(run.config_path))
    data = load_dataset(config.dataset, image_size=config.image_size, device=device,
                        data_dir=config.data_dir if data_dir is None else data_dir,
                        skip_bad_images=skip_bad_images, holdout=config.holdout,
                        skipped=recorded_skips(run.config, str(run.config_path)), echo=print)
    _check_same_data(run, data)
    model = model.to(device).eval()
    started = time.perf_counter()

    clean = {split: _clean(model, data, split, batch_size, device)
             for split in ("train", "test")}
    x_test, y_test = data.eval_images("test", runs.test_subset(data.n_test, n_examples))
    gradients = gradient_measures(model, x_test, y_test, batch_size, device)
    train_images, train_labels = data.eval_images("train")
    q = _regularizer(config.mix, model, train_images, train_labels, q_draws, seed, device)
    kernel = _data_kernel(config, model, train_images, train_labels, seed, device)
    result = {
        "run": run.path.name, "mix": run.mix, "seed": run.seed,
        "dataset": run.dataset, "device": str(device), "batch_size": batch_size,
        "train": clean["train"], "test": clean["test"],
        "gap": {"accuracy": clean["train"]["accuracy"] - clean["test"]["accuracy"],
                "loss": clean["test"]["loss"] - clean["train"]["loss"],
                "definition": "accuracy: train - test; loss: test - train (clean splits)"},
        "first_layer": first_layer_norms(model.first_layer, model.std),
        **gradients, "regularizer": q,
        **({"mask_kernel": kernel} if kernel is not None else {}),
        "calibration": calibration(*predict(model, data.eval_batches("test", batch_size,
                                                                     device))),
        "seconds": time.perf_counter() - started,
    }
    result = _json_safe(result)
    _write(run, result)
    return result


def _clean(model, data, split: str, batch_size: int, device) -> dict[str, Any]:
    """Accuracy and mean loss on a clean split, through the path training evaluates with."""
    accuracy, loss = evaluate(model, data.eval_batches(split, batch_size, device))
    return {"accuracy": accuracy, "loss": loss,
            "n": data.n_train if split == "train" else data.n_test}


def _regularizer(mix, model, images, labels, draws: int, seed: int, device) -> dict:
    """Q_A per mask distribution (:mod:`robustmix.evaluations.regularizer`), with the run's settings."""
    return regularizer_table(model.first_layer, model.std, images, alpha=mix.alpha,
                             options={mix.mix: mix.options}, draws=draws, seed=seed,
                             device=device, model=model if labels is not None else None,
                             labels=labels)


def _data_kernel(config, model, images, labels, seed: int, device) -> dict | None:
    """c(p) of the run's own MSDA when its masks depend on the data (PuzzleMix): estimated
    on batches of the training images with the trained model's saliency; None otherwise."""
    sampler = sampler_of(config.mix)
    if not is_data_dependent(sampler) or labels is None:
        return None
    c = kernel_on_batches(sampler, model, images, labels, alpha=config.mix.alpha,
                          draws=KERNEL_DRAWS, batch_size=config.batch_size, seed=seed,
                          device=device)
    return {"c": c.tolist(), "draws": KERNEL_DRAWS, "batch_size": config.batch_size,
            "definition": "c(p) = E[(1 - M_u)(1 - M_u+p)], horizontal offsets p, averaged "
                          "over positions; masks drawn on training batches with this model's "
                          "saliency"}


def _check_arguments(run_dir, *, device, seed, n_examples, **positive) -> torch.device:
    """evaluate_run's arguments, checked before any file is read; returns the device."""
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run_dir must be a str or os.PathLike (a run directory), "
                        f"got {type(run_dir).__name__}")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str (auto, cpu, cuda, cuda:N), "
                        f"got {type(device).__name__}")
    for field, value in positive.items():
        _check_positive(field, value)
    if n_examples is not None:
        _check_positive("n_examples", n_examples)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError("seed", f"must be an integer >= 0, got {seed!r}")
    return _device(device)


def _device(name: str | torch.device) -> torch.device:
    try:
        device = resolve_device(str(name))
    except ConfigError:
        raise
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N, got {str(name)!r}")
    return device


def _check_positive(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(field, f"must be a positive integer, got {value!r}")


def _check_same_data(run, data) -> None:
    expected = run.dataset
    found = {"channels": data.channels, "height": data.height, "width": data.width}
    if not data.newly_skipped:  # files left out now (--skip-bad-images) make the splits smaller
        found.update(n_train=data.n_train, n_test=data.n_test)
    differ = [k for k, v in found.items() if expected.get(k) not in (None, v)]
    if differ:
        raise UsageError(f"{run.path}: the data set loaded now differs from the one it was "
                         f"trained on ({', '.join(f'{k} {expected[k]} then, {found[k]} now' for k in differ)})")


def _checked_examples(model, images, labels, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels checked as :func:`robustmix.attacks.robustness` checks them (uint8 images
    stay uint8: each batch is converted as it moves to the device)."""
    is_uint8 = isinstance(images, torch.Tensor) and images.dtype == torch.uint8
    first = guards.images("images", images[:1] if is_uint8 else images)
    images = images if is_uint8 else first
    with torch.no_grad():
        n_classes = model(images[:1].to(device).float().div(255 if is_uint8 else 1)).shape[1]
    return images, guards.class_labels("labels", labels, images.shape[0], n_classes, "images")


def gradient_measures(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      batch_size: int, device) -> dict[str, Any]:
    """Mean input-gradient norms and the gradient-distance profile over the given examples.

    Works on any ``model`` taking images in [0, 1] (a robustmix model, or an outside one
    through :func:`robustmix.wrap_model`), already on ``device``. ``images`` are (N, C, H, W)
    uint8 in 0..255 or floating in [0, 1]; ``labels`` (N,) class indices of the model's
    outputs; ``batch_size`` a positive integer. Returns the ``input_gradient`` and
    ``gradient_profile`` entries of generalization.json (see the module docstring).
    """
    _check_positive("batch_size", batch_size)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    was_training = model.training
    model.eval()  # examples must not interact (batch norm), see robustmix.evaluations.gradients
    try:
        images, labels = _checked_examples(model, images, labels, device)
        return _gradient_measures(model, images, labels, batch_size, device)
    finally:
        model.train(was_training)


def _gradient_measures(model, images, labels, batch_size: int, device) -> dict[str, Any]:
    height, width = images.shape[2], images.shape[3]
    table = OffsetTable(height, width, device)
    norms_loss, norms_logit, maps = [], [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        y = labels[start:start + batch_size].to(device)
        grad_loss, grad_logit = input_gradients(model, x, y)
        norms_loss.append(l2_per_example(grad_loss).cpu())
        norms_logit.append(l2_per_example(grad_logit).cpu())
        maps.append(grad_logit.sum(dim=1))
        # the offset loop runs once per PROFILE_ELEMENTS map pixels, not once per batch
        if sum(m.numel() for m in maps) >= PROFILE_ELEMENTS:
            table.add(torch.cat(maps))
            maps = []
    if maps:
        table.add(torch.cat(maps))
    profiles = table.profiles()
    return {
        "input_gradient": {
            "loss_l2_mean": float(torch.cat(norms_loss).mean()),
            "logit_l2_mean": float(torch.cat(norms_logit).mean()),
            "n_examples": int(images.shape[0]),
            "definition": "L2 norm per example of d CE(f(x),y)/dx and of d f_y(x)/dx "
                          "(x in [0,1]), then the mean over the examples"},
        "gradient_profile": {
            "normalization": NORMALIZATION, "definition": DEFINITION,
            "n_examples": int(images.shape[0]), "csv": runs.PROFILE_CSV,
            "decay": decay_statistic(profiles["radial"], height, width), **profiles},
    }


def _write(run: runs.RunDir, result: dict[str, Any]) -> None:
    profile = result["gradient_profile"]
    runs.write_csv(run.profile_path,
                   profile_rows({k: profile[k] for k in ("horizontal", "vertical", "radial")}),
                   COLUMNS)
    q = result["regularizer"]
    runs.write_csv(run.regularizer_path,
                   [{"mask": name, "q": f"{v['q']:.8g}", "q_se": f"{v['se']:.8g}",
                     "q_relative": _fmt(v["relative"])} for name, v in q["q"].items()]
                   + [{"mask": "reference (M = 0)", "q": f"{q['reference']['q']:.8g}",
                       "q_se": f"{q['reference']['se']:.8g}", "q_relative": "1"}],
                   ["mask", "q", "q_se", "q_relative"])
    runs.write_json(run.generalization_path, _json_safe(result))


def _fmt(value) -> str:
    return "" if value is None else f"{value:.8g}"


def _json_safe(value):
    """Non-finite floats become null, so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
