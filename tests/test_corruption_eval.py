"""`evaluate_corruptions` and `robustmix evaluate --corruptions`: a trained digits model
under the on-the-fly suite, and CIFAR-10-C read from (tiny, faked) .npy files, checked."""

import shutil

import numpy as np
import pytest
import torch

from robustmix.evaluations.corruption_eval import (COLUMNS, STANDARD, check_benchmark,
                                         evaluate_corruptions, summarize)
from robustmix.evaluations.corruptions import CORRUPTIONS, SEVERITIES
from helpers import assert_one_line_error, run_cli
from robustmix.core import runs
from robustmix.core.config import TrainConfig
from robustmix.core.errors import UsageError
from robustmix.data import load_dataset
from robustmix.models.accuracy import evaluate
from robustmix.models.weights import load_model
from robustmix.training.trainer import train
from test_data import _skip_cifar_checksums, _write_cifar10

pytestmark = pytest.mark.usefixtures("torch_one_thread")
NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")


N_SUBSET = 200   # the digits study's evaluation subset


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A digits model trained to ~97% test accuracy (3 epochs), and the suite on 200 of its
    test images."""
    run = tmp_path_factory.mktemp("corrupt") / "vanilla"
    train(TrainConfig(epochs=3, batch_size=64, image_size=8, seed=0, device="cpu"), run,
          progress=False)
    return run, evaluate_corruptions(run, device="cpu", n_examples=N_SUBSET)


@pytest.mark.slow
def test_the_suite_writes_one_row_per_cell_after_the_clean_row(digits_run):
    run, result = digits_run
    rows = runs.read_csv(run / runs.CORRUPTIONS)
    assert list(rows[0]) == COLUMNS and len(rows) == 1 + len(CORRUPTIONS) * len(SEVERITIES)
    assert (rows[0]["corruption"], rows[0]["severity"]) == ("clean", "0")
    assert [(r["corruption"], int(r["severity"])) for r in rows[1:]] == \
        [(n, s) for n in CORRUPTIONS for s in SEVERITIES]
    assert {r["n_examples"] for r in rows} == {str(N_SUBSET)} and result["source"] == "on-the-fly"
    # the clean row is the accuracy of the training's evaluation path on the same subset
    data = load_dataset("digits", image_size=8)
    x, y = data.eval_images("test", runs.test_subset(data.n_test, N_SUBSET))
    accuracy, loss = evaluate(load_model(run), [(x.float() / 255, y)])
    assert float(rows[0]["accuracy"]) == pytest.approx(accuracy, abs=1e-8)
    assert float(rows[0]["nll"]) == pytest.approx(loss, rel=1e-5)
    suite = [float(r["accuracy"]) for r in rows[1:]]
    assert result["mean_accuracy"] == pytest.approx(100 * np.mean(suite), rel=1e-7)
    assert result["mce_unnormalized"] is None and result["note"] is None
    for r in rows:
        assert 0 <= float(r["ece"]) <= 1 and float(r["nll"]) >= 0


@pytest.mark.slow
def test_accuracy_falls_as_the_noise_grows(digits_run):
    run, _ = digits_run
    rows = runs.read_csv(run / runs.CORRUPTIONS)
    clean = float(rows[0]["accuracy"])
    assert clean > 0.9, "the model is trained"
    for name in NOISE:
        acc = [float(r["accuracy"]) for r in rows if r["corruption"] == name]
        assert acc[-1] < acc[0] and acc[-1] < clean, (name, acc)
        # non-increasing up to sampling noise: 3 binomial standard errors at p = 1/2
        margin = 3 * (0.25 / N_SUBSET) ** 0.5
        assert all(b <= a + margin for a, b in zip(acc, acc[1:])), (name, acc)


@pytest.mark.slow
def test_the_same_seed_writes_the_same_file_and_a_subset_is_honoured(digits_run, tmp_path):
    run, _ = digits_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    first = evaluate_corruptions(copy, device="cpu", n_examples=40, batch_size=17)
    again = evaluate_corruptions(copy, device="cpu", n_examples=40, batch_size=17)
    assert first["rows"] == again["rows"] and {r["n_examples"] for r in first["rows"]} == {40}
    other = evaluate_corruptions(copy, device="cpu", n_examples=40, batch_size=17, seed=1)
    assert other["rows"] != first["rows"]
    with pytest.raises(UsageError, match="^n_examples must be a positive integer"):
        evaluate_corruptions(copy, n_examples=0)


def test_summary_of_a_benchmark():
    rows = ([{"set": "clean", "accuracy": "0.9"}]
            + [{"set": "standard", "accuracy": str(a)} for a in (0.5, 0.7)]
            + [{"set": "extra", "accuracy": "0.2"}])
    s = summarize(rows)
    assert s["mean_accuracy"] == pytest.approx(60.0)
    assert s["mce_unnormalized"] == pytest.approx(40.0)
    assert s["extra_mean_accuracy"] == pytest.approx(20.0)


# ---------------------------------------------------------------------- CIFAR-10-C, faked


N_TEST = 3


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("cifar")
    _write_cifar10(data, n_per_batch=2, n_test=N_TEST)
    run = tmp_path_factory.mktemp("cifar-run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        _skip_cifar_checksums(mp)
        train(TrainConfig(dataset="cifar10", data_dir=str(data), epochs=1, batch_size=4,
                          device="cpu"), run, progress=False)
    return run, data


def write_benchmark(root, *, extras=("saturate",), seed=0):
    """CIFAR-10-C as released, shrunk: (5·n_test, 32, 32, 3) uint8 per corruption."""
    folder = root / "CIFAR-10-C"
    folder.mkdir(exist_ok=True)
    test_labels = load_dataset("cifar10", data_dir=str(root)).tensors("test")[1].numpy()
    np.save(folder / "labels.npy", np.tile(test_labels, 5).astype(np.uint8))
    rng = np.random.default_rng(seed)
    for name in STANDARD + tuple(extras):
        np.save(folder / f"{name}.npy",
                rng.integers(0, 256, (5 * N_TEST, 32, 32, 3), dtype=np.uint8))
    return folder


@pytest.fixture
def benchmark(cifar_run, tmp_path, monkeypatch):
    run, data = cifar_run
    _skip_cifar_checksums(monkeypatch)
    root = tmp_path / "data"
    shutil.copytree(data, root)
    mine = tmp_path / "run"
    shutil.copytree(run, mine)
    return mine, root, write_benchmark(root)


def test_cifar10_c_is_used_when_present_and_scored_as_the_benchmark(benchmark):
    run, root, folder = benchmark
    result = evaluate_corruptions(run, device="cpu", data_dir=str(root))
    rows = runs.read_csv(run / runs.CORRUPTIONS)
    assert result["source"] == "CIFAR-10-C" and len(rows) == 1 + 16 * 5
    assert [r["corruption"] for r in rows[1::5]] == list(STANDARD) + ["saturate"]
    standard = [float(r["accuracy"]) for r in rows if r["set"] == "standard"]
    assert len(standard) == 75
    assert result["mean_accuracy"] == pytest.approx(100 * np.mean(standard), rel=1e-7)
    assert result["mce_unnormalized"] == pytest.approx(100 - result["mean_accuracy"])
    # one cell by hand: fog at severity 4 is rows 9..11 of fog.npy
    images = torch.from_numpy(np.load(folder / "fog.npy")[3 * N_TEST:4 * N_TEST])
    labels = load_dataset("cifar10", data_dir=str(root)).tensors("test")[1]
    model = load_model(run)
    with torch.no_grad():
        logits = model(images.permute(0, 3, 1, 2).float() / 255)
    fog4 = next(r for r in rows if r["corruption"] == "fog" and r["severity"] == "4")
    assert float(fog4["accuracy"]) == pytest.approx(
        float((logits.argmax(1) == labels).double().mean()), abs=1e-8)
    assert float(fog4["nll"]) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits.double(), labels)), rel=1e-5)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _foreign_shape(path):
    np.save(path, np.zeros((5 * N_TEST, 28, 28, 3), dtype=np.uint8))


def _foreign_labels(path):
    labels = np.load(path)
    labels[0] = (labels[0] + 1) % 10
    np.save(path, labels)


@pytest.mark.parametrize("file, damage, fragment", [
    ("fog.npy", lambda p: p.unlink(), "not found"),
    ("contrast.npy", _truncate, "truncated"),
    ("pixelate.npy", _foreign_shape, "expected uint8 images of shape (15, 32, 32, 3)"),
    ("saturate.npy", _foreign_shape, "expected uint8 images"),
    ("labels.npy", _foreign_labels, "not the test set's labels"),
])
def test_a_missing_truncated_or_foreign_file_is_one_line_and_exit_2(
        benchmark, capsys, file, damage, fragment):
    run, root, folder = benchmark
    damage(folder / file)
    code, _, err = run_cli(capsys, "evaluate", run, "--corruptions", "--device", "cpu",
                           "--data-dir", root)
    assert_one_line_error(code, err, str(folder / file), fragment)
    assert not (run / runs.CORRUPTIONS).exists() and not (run / runs.GENERALIZATION).exists()


def test_without_the_benchmark_folder_the_suite_runs_and_says_so(benchmark, capsys):
    run, root, folder = benchmark
    shutil.rmtree(folder)
    code, out, err = run_cli(capsys, "evaluate", run, "--corruptions", "--device",
                             "cpu", "--data-dir", root, "--corruption-examples", "2",
                             "--q-draws", "8")
    assert code == 0, err
    assert "CIFAR-10-C not found: the on-the-fly suite was used" in out
    rows = runs.read_csv(run / runs.CORRUPTIONS)
    assert {r["source"] for r in rows[1:]} == {"on-the-fly"} and rows[0]["n_examples"] == "2"
    assert "calibration" in runs.read_json(run / runs.GENERALIZATION)


def test_a_run_at_another_image_size_is_told_the_benchmark_does_not_fit(benchmark):
    _, root, folder = benchmark
    labels = load_dataset("cifar10", data_dir=str(root)).tensors("test")[1]
    assert len(check_benchmark(folder, labels, (3, 32, 32))) == 16
    with pytest.raises(UsageError, match=r"images are 16×16, the benchmark's 32×32"):
        check_benchmark(folder, labels, (3, 16, 16))
