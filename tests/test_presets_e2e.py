"""Every preset but digits, end to end on a CPU, shrunk in size only (issue 33).

Each test writes synthetic data in the real on-disk format (CIFAR's python pickles as
torchvision reads them, CIFAR-10-C / CIFAR-100-C ``.npy`` files, an ImageNet-style class
folder), writes the preset as a study TOML with only its sizes changed (epochs, images,
examples, methods and seeds; :data:`SIZES`), checks that the file differs from the preset in
those keys alone, and runs ``robustmix study --config`` in this process. torchvision's md5
check still runs on the pickles: the test swaps the official checksums for those of the
files it wrote (and the published image counts for its own), the tables the checks read.

The attacked test examples are of classes no run trained on (_test_labels): an attack
searches only the examples a model gets right, minutes each on a CPU.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets

from robustmix.app.cli import main
from robustmix.app.presets import PAPER, PRESETS
from robustmix.app.study_config import StudyConfig, load_config, to_dict, to_toml
from robustmix.core import runs
from robustmix.data import check_available, load_dataset, loading
from robustmix.data.sources import holdout_indices
from robustmix.evaluations.corruption_eval import BENCHMARKS, EXTRA, STANDARD

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

# What each test changes in its preset: sizes only. The data sets are small (SHAPES), so
# every count of images shrinks with them; the batch sizes fit those counts; PuzzleMix
# stays among the methods where the preset has it (its training path differs).
_CIFAR_SIZES = {
    "methods": ["vanilla", "puzzlemix"], "seeds": [0],
    "train": {"epochs": 1, "batch_size": 8, "holdout": 4},
    "attack": {"n_examples": 4, "autoattack_examples": 4, "batch_size": 4},
    "evaluate": {"n_examples": 5, "q_draws": 4},
}
SIZES = {
    "cifar10-robustness": _CIFAR_SIZES,
    "cifar100-table2": _CIFAR_SIZES,
    "imagenet100-scenarios": {
        "train": {"image_size": 32, "epochs": 1, "batch_size": 4, "holdout": 2,
                  "warmup_epochs": 0.05},   # the preset's 5% of the epochs
        "attack": {"n_examples": 4, "batch_size": 4},
        "evaluate": {"n_examples": 6, "q_draws": 4},
    },
}
# (training images, test images) of each synthetic data set; every class in training
SHAPES = {"cifar10-robustness": (40, 10), "cifar100-table2": (120, 10),
          "imagenet100-scenarios": (24, 8)}


# --------------------------------------------------------------------------- the config


def _merged(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict):
            _merged(base[key], value)
        else:
            base[key] = value
    return base


def _flat(values: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _study_file(tmp_path: Path, name: str) -> Path:
    """The preset as TOML with its sizes changed (SIZES), checked to differ in them alone
    (the options of the methods it leaves out are not in it)."""
    values = _merged(copy.deepcopy(PRESETS[name]), SIZES[name])
    path = tmp_path / f"{name}.toml"
    path.write_text(to_toml(StudyConfig.from_dict(values, source=name)))
    run = load_config(None, str(path))
    ran, preset = _flat(to_dict(run)), _flat(to_dict(load_config(name, None)))
    preset = {key: value for key, value in preset.items() if not key.startswith(
        "train.options.") or key.split(".")[2] in run.methods}
    changed = {key for key in ran.keys() | preset.keys() if ran.get(key) != preset.get(key)}
    assert changed == set(_flat(SIZES[name])), changed ^ set(_flat(SIZES[name]))
    return path


# --------------------------------------------------------------------------- the data


def _images(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    """uint8 (N, side, side, 3) noise: nothing in an image tells its class."""
    return np.clip(rng.normal(128, 40, (n, side, side, 3)), 0, 255).astype(np.uint8)


def _train_labels(rng: np.random.Generator, n: int, classes: int, held: int) -> np.ndarray:
    """The training labels: the classes 1..held only in the held-out images
    (sources.holdout_indices: never trained on), every other class once, the rest class 0.
    Every class is there (the loader checks it)."""
    labels = np.zeros(n, np.int64)
    out = holdout_indices(n, held)
    labels[out] = 1 + np.arange(held)
    rest = np.setdiff1d(np.arange(n), out)
    once = np.arange(held + 1, classes)
    labels[rest] = rng.permutation(np.concatenate([once, np.zeros(rest.size - once.size,
                                                                  np.int64)]))
    return labels


def _test_labels(n: int, n_attacked: int, held: int) -> np.ndarray:
    """The test labels: where the attacks look (runs.test_subset), the classes no run
    trained on (1..held); class 0 elsewhere.

    An attack searches only the examples the model gets right, and each one costs minutes
    on a CPU (APGD-T's 9 targets × 100 steps at every ε, AutoAttack, the diagnostics); a
    model never shown a class has no reason to name it. Nothing the test asserts hangs on
    this: it sets the time."""
    labels = np.zeros(n, np.int64)
    attacked = runs.test_subset(n, n_attacked)
    labels[attacked] = 1 + np.arange(attacked.size) % held
    return labels


def _rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # CIFAR's CHW rows


def _pickle(path: Path, values: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(values, handle, protocol=2)


def _write_cifar(root: Path, name: str, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``root/cifar-10-batches-py/`` or ``root/cifar-100-python/`` (preset ``name``'s) as
    torchvision reads them; returns the test images (N, 32, 32, 3) and labels, in order."""
    dataset = PRESETS[name]["train"]["dataset"]
    classes = 10 if dataset == "cifar10" else 100
    n_train, n_test = SHAPES[name]
    held = SIZES[name]["train"]["holdout"]
    y_train = _train_labels(rng, n_train, classes, held)
    y_test = _test_labels(n_test, SIZES[name]["attack"]["n_examples"], held)
    x_train, x_test = _images(rng, n_train, 32), _images(rng, n_test, 32)
    if dataset == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i, part in enumerate(np.array_split(np.arange(n_train), 5), 1):
            _pickle(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5",
                                                  "data": _rows(x_train[part]),
                                                  "labels": y_train[part].tolist()})
        _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1",
                                        "data": _rows(x_test), "labels": y_test.tolist()})
        _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)],
                                          "num_vis": 3072})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            _pickle(folder / split, {"filenames": [f"{split}{i}.png" for i in range(len(y))],
                                     "batch_label": split, "fine_labels": y.tolist(),
                                     "coarse_labels": (y // 5).tolist(), "data": _rows(x)})
        _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                                  "coarse_label_names": [f"c{i}" for i in range(20)]})
    return x_test, y_test


def _use_our_checksums(monkeypatch, dataset: str, root: Path) -> None:
    """torchvision's md5 table for the data set (CIFAR10's or CIFAR100's class attributes),
    each file's md5 that of the file written here; torchvision still checks every file."""
    cls = torchvision.datasets.CIFAR10 if dataset == "cifar10" else torchvision.datasets.CIFAR100
    folder = root / cls.base_folder

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(cls, "train_list", [[name, md5(name)] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, md5(name)] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(cls.meta["filename"])})


def _write_corruptions(root: Path, dataset: str, x_test: np.ndarray, y_test: np.ndarray
                       ) -> str:
    """``root/CIFAR-10-C/`` (or -100-C): the 15 standard corruptions and one extra, each
    5 severities of the test images, and labels.npy; brightness is the test images
    unchanged at every severity (so its accuracy is the clean one), the others a noise
    that grows with the severity. Returns the identity corruption's name."""
    folder = root / BENCHMARKS[dataset]
    folder.mkdir()
    rng = np.random.default_rng(7)
    np.save(folder / "labels.npy", np.tile(y_test, 5))
    for name in (*STANDARD, EXTRA[0]):
        blocks = [x_test if name == "brightness" else
                  np.clip(x_test + rng.normal(0, 12 * s, x_test.shape), 0, 255).astype(np.uint8)
                  for s in range(1, 6)]
        np.save(folder / f"{name}.npy", np.concatenate(blocks))
    return "brightness"


def _write_folder(root: Path, name: str, rng: np.random.Generator) -> None:
    """An ImageNet-style folder, ``root/train/<class>/*.png`` and ``root/val/<class>/*.png``,
    of noise images of another size than the study's. The loader lists the images class
    by class, so the classes are blocks of that order: each held-out training image a
    class of its own (never trained on, as in _train_labels), the images between them the
    others; the validation images where the attacks look of those classes (_test_labels)."""
    from PIL import Image

    n_train, n_test = SHAPES[name]
    held = holdout_indices(n_train, SIZES[name]["train"]["holdout"])
    y_train = np.cumsum([i == 0 or i in held or i - 1 in held for i in range(n_train)]) - 1
    unseen = set(y_train[held])
    attacked = runs.test_subset(n_test, SIZES[name]["attack"]["n_examples"])
    y_val = [0]
    for i in range(1, n_test):   # the loader's order: never a smaller class
        y_val.append(min(c for c in range(y_train[-1] + 1) if c >= y_val[-1]
                         and (c in unseen) == (i in attacked)))
    for split, labels in (("train", y_train), ("val", y_val)):
        for i, label in enumerate(labels):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_images(rng, 1, 40)[0, :, :36]).save(folder / f"{split}_{i:03d}.png")


def _check_never_trained_on(spec: str, data_dir: str, name: str) -> None:
    """As the loader reads the data: the attacked examples' classes are held out, and
    no held-out class is in the training images."""
    data = load_dataset(spec, data_dir=data_dir, image_size=8,
                        holdout=SIZES[name]["train"]["holdout"])
    attacked = runs.test_subset(data.n_test, SIZES[name]["attack"]["n_examples"])
    unseen = set(data.tensors("holdout")[1].tolist())
    assert set(data.tensors("test")[1][attacked].tolist()) <= unseen
    assert not unseen & set(data.tensors("train")[1].tolist())


# --------------------------------------------------------------------------- the studies


def _run(path: Path) -> None:
    assert main(["study", "--quiet", "--threads", "1", "--config", str(path)]) == 0


def _cifar_study(tmp_path: Path, monkeypatch, name: str
                 ) -> tuple[Path, str, np.ndarray, np.ndarray]:
    """The CIFAR preset ``name`` run on its synthetic data: its output folder, the
    identity corruption and the test images and labels."""
    dataset = PRESETS[name]["train"]["dataset"]
    monkeypatch.chdir(tmp_path)
    root = tmp_path / PRESETS[name]["train"]["data_dir"]
    x_test, y_test = _write_cifar(root, name, np.random.default_rng(0))
    assert "checksum" in check_available(dataset, data_dir=str(root)), \
        "torchvision's md5 check refuses files that are not the official ones"
    _use_our_checksums(monkeypatch, dataset, root)
    monkeypatch.setitem(loading.EXPECTED_SIZES, dataset, SHAPES[name])
    assert check_available(dataset, data_dir=str(root)) is None
    _check_never_trained_on(dataset, str(root), name)
    identity = _write_corruptions(root, dataset, x_test, y_test)
    _fewer_puzzlemix_kernel_draws(monkeypatch)
    _run(_study_file(tmp_path, name))
    return tmp_path / PRESETS[name]["out"], identity, x_test, y_test


def _fewer_puzzlemix_kernel_draws(monkeypatch) -> None:
    """PuzzleMix's c(p) from 16 masks, not 1,024: each needs the model's saliency (a
    forward and backward pass), minutes on a CPU. A size, like the others, but a constant
    of the evaluation rather than a key of the study."""
    from robustmix.evaluations import generalization

    monkeypatch.setattr(generalization, "KERNEL_DRAWS", 16)


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _run_names(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "runs").iterdir())


def _check_robustbench(out: Path, name: str) -> None:
    """A model card per run, its accuracies those of the run's robustness.csv."""
    preset = PRESETS[name]
    attack = {**preset["attack"], **SIZES[name]["attack"]}
    cards = sorted(p.stem for p in (out / "robustbench").glob("*.json"))
    assert cards == _run_names(out) and cards
    assert "In RobustBench's form" in (out / "report.md").read_text()
    for run in cards:
        card = json.loads((out / "robustbench" / f"{run}.json").read_text())
        rows = _csv(out / "runs" / run / "robustness.csv")
        assert card["dataset"] == preset["train"]["dataset"].lower()
        assert card["architecture"] == {"preactresnet18": "PreActResNet-18",
                                        "resnet50": "ResNet-50"}[preset["train"]["arch"]]
        assert card["threat_model"] == "Linf" and card["leaderboard"] is False
        auto = [r for r in rows if r["attack"] == "autoattack"]
        if attack["autoattack"]:
            row, = auto
            assert (row["eps"], int(row["n_examples"])) == (attack["autoattack_eps"],
                                                             attack["autoattack_examples"])
            assert card["autoattack_acc"] == f"{100 * float(row['robust_acc']):.2f}"
            assert card["clean_acc"] == f"{100 * float(row['clean_acc']):.2f}"
            assert (card["eps"], card["n_examples"]) == (row["eps"], int(row["n_examples"]))
            assert f"{row['n_examples']} test examples, not the 10,000" in card["leaderboard_note"]
        else:
            assert not auto and card["autoattack_acc"] == ""
            assert "no full standard AutoAttack ran" in card["leaderboard_note"]


def _check_corruptions(out: Path, name: str, identity: str, x_test: np.ndarray,
                       y_test: np.ndarray) -> None:
    """Per run, every cell of the -C benchmark from its files: the 15 standard corruptions
    and the extra at 5 severities after the clean row, on the evaluated examples; the clean
    accuracy is the run's model's on those (measured here), and so is the identity
    corruption's at every severity."""
    dataset = PRESETS[name]["train"]["dataset"]
    n = SIZES[name]["evaluate"]["n_examples"]
    evaluated = runs.test_subset(len(y_test), n)
    for run in _run_names(out):
        rows = _csv(out / "runs" / run / "corruptions.csv")
        clean, *cells = rows
        assert (clean["corruption"], clean["severity"], clean["source"]) == ("clean", "0",
                                                                             "test set")
        assert float(clean["accuracy"]) == pytest.approx(
            _accuracy(out / "runs" / run, x_test[evaluated], y_test[evaluated]), abs=1e-7)
        assert [(r["corruption"], int(r["severity"])) for r in cells] == \
            [(c, s) for c in (*STANDARD, EXTRA[0]) for s in range(1, 6)]
        assert {r["source"] for r in cells} == {BENCHMARKS[dataset]}
        assert {r["n_examples"] for r in rows} == {str(n)}
        assert [r["set"] for r in cells] == ["standard"] * 75 + ["extra"] * 5
        same = [r["accuracy"] for r in cells if r["corruption"] == identity]
        assert same == [clean["accuracy"]] * 5
    report = (out / "report.md").read_text()
    assert f"Images: {BENCHMARKS[dataset]} (the 15 standard corruptions" in report


def _accuracy(run_dir: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """The run's model's accuracy on uint8 (N, H, W, C) images."""
    import torch

    from robustmix.models.weights import load_model

    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        predicted = load_model(run_dir).eval()(x).argmax(1).numpy()
    return float(np.mean(predicted == labels))


def _check_attacks(out: Path, name: str) -> None:
    """Every run met the preset's attacks at every ε of its grid, on the examples asked."""
    attack = {**PRESETS[name]["attack"], **SIZES[name]["attack"]}
    wanted = {(a, eps, str(attack["n_examples"])) for a in attack["attacks"]
              for eps in attack["eps"].split(",")}
    for run in _run_names(out):
        rows = _csv(out / "runs" / run / "robustness.csv")
        assert wanted <= {(r["attack"], r["eps"], r["n_examples"]) for r in rows}, run
        assert all(float(r["robust_acc"]) <= float(r["clean_acc"]) for r in rows), run


def _check_autoattack_rows(out: Path, name: str) -> None:
    """The report's robustness table: an autoattack cell for every method at AutoAttack's
    ε, none at the other ε."""
    config = load_config(name, None)
    methods = SIZES[name].get("methods", PRESETS[name]["methods"])
    lines = (out / "report.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| ε | examples | method |"))
    column = [cell.strip() for cell in header.split("|")].index("autoattack")
    for eps in config.attack.eps.split(","):
        for method in methods:
            row, = [line for line in lines if line.startswith(f"| {eps} | ")
                    and f"| {method} |" in line]
            cell = row.split("|")[column].strip()
            assert (cell != "–") == (eps == config.attack.autoattack_eps), row


def _check_paper_table(out: Path, name: str) -> None:
    """paper_comparison.csv and the report's section: the paper's number and the run's
    final test accuracy (metrics.csv) for every method run, "not run" for the others."""
    paper = PAPER[PRESETS[name]["paper"]]
    rows = {row["method"]: row for row in _csv(out / "paper_comparison.csv")}
    ran = {}
    for run in _run_names(out):
        key = run.rsplit("-s", 1)[0]
        for variant in PRESETS[name].get("variants", {}):
            if key.startswith(variant + "-"):
                key = f"{variant}/{key[len(variant) + 1:]}"
        final = _csv(out / "runs" / run / "metrics.csv")[-1]
        ran[key] = 100 * float(final["test_acc"])
    assert set(rows) == set(ran) and set(ran) <= set(paper["rows"])
    report = (out / "report.md").read_text()
    assert f"## Beside the paper: {paper['title']}" in report
    for key, reference in paper["rows"].items():
        if key in ran:
            assert float(rows[key]["paper"]) == reference and rows[key]["n"] == "1"
            assert float(rows[key]["measured_mean"]) == pytest.approx(ran[key], abs=1e-4)
            assert f"| {key} | {reference:.2f} | {ran[key]:.2f} ± nan (1) |" in report
        else:
            assert f"| {key} | {reference:.2f} | not run | - |" in report


def test_cifar10_robustness(tmp_path, monkeypatch):
    out, *corrupted = _cifar_study(tmp_path, monkeypatch, "cifar10-robustness")
    _check_attacks(out, "cifar10-robustness")
    _check_autoattack_rows(out, "cifar10-robustness")
    _check_corruptions(out, "cifar10-robustness", *corrupted)
    _check_robustbench(out, "cifar10-robustness")
    assert not (out / "paper_comparison.csv").exists()


def test_cifar100_table2(tmp_path, monkeypatch):
    out, *corrupted = _cifar_study(tmp_path, monkeypatch, "cifar100-table2")
    _check_attacks(out, "cifar100-table2")
    _check_autoattack_rows(out, "cifar100-table2")
    _check_corruptions(out, "cifar100-table2", *corrupted)
    _check_robustbench(out, "cifar100-table2")
    _check_paper_table(out, "cifar100-table2")


def test_imagenet100_scenarios(tmp_path, monkeypatch):
    name = "imagenet100-scenarios"
    monkeypatch.chdir(tmp_path)
    spec = PRESETS[name]["train"]["dataset"]
    _write_folder(tmp_path / spec.split(":", 1)[1], name, np.random.default_rng(0))
    _check_never_trained_on(spec, ".", name)   # the folder is its path
    _run(_study_file(tmp_path, name))
    out = tmp_path / PRESETS[name]["out"]
    runs_ = [f"{v}-{m}-s0" for v in PRESETS[name]["variants"] for m in PRESETS[name]["methods"]]
    assert _run_names(out) == sorted(runs_)
    for run in runs_:
        config = json.loads((out / "runs" / run / "config.json").read_text())
        variant = run.rsplit("-", 2)[0]
        assert config["train"]["crop_scale"] == PRESETS[name]["variants"][variant]["crop_scale"]
        assert not (out / "runs" / run / "corruptions.csv").exists()
    _check_attacks(out, name)
    _check_robustbench(out, name)
    _check_paper_table(out, name)
