"""The benchmarks in benchmarks/ still run: each one's run() on a tiny setting, on the CPU.

They return finite positive numbers under the keys their printouts and RESULTS.md use; the
pass counts of plain torchattacks match their closed form, and the host-side timm-style
mix of the baseline pipeline forms the labels its images imply.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (bench_attack, bench_corruptions, bench_mixing,  # noqa: E402
                        bench_puzzlemix, bench_shared, bench_study, bench_train)
from benchmarks.common import format_machine, summarize_us  # noqa: E402
from helpers import mini_study  # noqa: E402
from robustmix.core import runs  # noqa: E402
from robustmix.mixing import DATA_FREE_MIX_NAMES  # noqa: E402


# One torch thread: these check that the code runs, and on a loaded shared host two threads
# waiting on each other make the tiny settings ten times slower.
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def check_machine(info: dict) -> None:
    assert {"cpu", "logical_cores", "torch", "torch_threads", "device", "gpu",
            "load_average", "date"} <= info.keys()
    assert info["device"] == "cpu" and info["torch"] == torch.__version__
    assert "CPU:" in format_machine(info) and "load average" in format_machine(info)


def test_summary_of_known_times_in_microseconds():
    stats = summarize_us(np.array([1e-6, 2e-6, 3e-6, 4e-6, 5e-6]))
    assert stats["median_us"] == pytest.approx(3.0)
    assert stats["iqr_us"] == pytest.approx(2.0)  # 4 - 2 by linear interpolation
    assert stats["repeats"] == 5


@pytest.mark.slow
def test_bench_mixing_times_every_method_beside_torchvision():
    result = bench_mixing.run(batch_size=8, size=8, repeats=3, warmup=1, device="cpu")
    check_machine(result["machine"])
    expected = {f"robustmix:{m}:{p}" for m in DATA_FREE_MIX_NAMES for p in ("batch", "sample")}
    expected |= {"torchvision:MixUp", "torchvision:CutMix"}
    assert set(result["results"]) == expected
    for stats in result["results"].values():
        assert positive(stats["median_us"]) and stats["iqr_us"] >= 0
        assert stats["repeats"] == 3
    assert "torchvision  MixUp" in bench_mixing.format_results(result)


def test_bench_train_gives_both_pipelines_and_every_mixing_share():
    result = bench_train.run(steps=1, warmup=1, batch_size=4, device="cpu", arch="smallcnn",
                             n=16, workers=0, mix="cutmix", mix_repeats=2)
    check_machine(result["machine"])
    for key in ("robustmix_images_per_s", "baseline_images_per_s", "speedup"):
        assert positive(result[key]), key
    assert result["speedup"] == pytest.approx(
        result["robustmix_images_per_s"] / result["baseline_images_per_s"])
    assert result["robustmix_images_per_s"] == result["mixing"]["cutmix"]["images_per_s"]
    assert set(result["mixing"]) == set(DATA_FREE_MIX_NAMES)
    for row in result["mixing"].values():
        assert all(positive(row[k]) for k in ("mix_us", "step_ms", "images_per_s", "share"))
    settings = result["settings"]
    assert (settings["arch"], settings["batch_size"], settings["workers"]) == ("smallcnn", 4, 0)
    assert "(a) / (b)" in bench_train.format_results(result)


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_timm_style_mix_labels_match_the_pixels_taken(mix):
    batch = 6
    x = torch.arange(batch, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 8, 8).clone()
    y = torch.arange(batch)
    mixed, target = bench_train.timm_style_mix(x, y, mix, np.random.default_rng(3))
    own = target[torch.arange(batch), y]  # weight of each image's own label
    partner = target[torch.arange(batch), y.flip(0)]
    assert torch.allclose(target.sum(1), torch.ones(batch))
    assert torch.allclose(own + partner, torch.ones(batch))
    # Pixel mean = own·i + (1 − own)·(B − 1 − i): the label weight is the pixel share.
    expected = own * y + (1 - own) * y.flip(0)
    assert torch.allclose(mixed.mean(dim=(1, 2, 3)), expected, atol=1e-5)


@pytest.mark.slow
def test_bench_attack_counts_passes_of_both_ways():
    pytest.importorskip("torchattacks", reason="compares with plain torchattacks, an extra")
    steps, eps = 2, "2/255,8/255"
    result = bench_attack.run(epochs=1, eps=eps, pgd_steps=steps, batch_size=64,
                              n_examples=40, raw_repeats=2, device="cpu")
    check_machine(result["machine"])
    n, n_eps = 40, 2
    theirs, ours = result["independent"], result["sweep"]
    # One clean pass, then per ε: FGSM (1 + 1) and PGD (steps + 1), each evaluated once.
    assert theirs["forward_passes"] == n * (1 + n_eps * (steps + 3))
    assert theirs["backward_passes"] == n * n_eps * (1 + steps)
    assert 0 < ours["row_forward_passes"] <= ours["forward_passes"]
    assert 0 < ours["row_backward_passes"] == ours["backward_passes"]
    for key in ("pass_ratio", "sweep_passes_per_s", "raw_forward_backward_passes_per_s",
                "raw_forward_passes_per_s", "throughput_ratio", "expected_s", "efficiency"):
        assert positive(result[key]), key
    assert result["pass_ratio"] < 1
    assert len(ours["robust_acc"]["pgd"]) == len(theirs["robust_acc"]["pgd"]) == n_eps
    assert "sweep / independent" in bench_attack.format_results(result)


@pytest.mark.slow
def test_bench_puzzlemix_times_both_methods_and_every_part():
    result = bench_puzzlemix.run(setups=("digits",), steps=1, repeats=1, device="cpu")
    check_machine(result["machine"])
    numbers = result["setups"]["digits"]
    assert set(numbers["steps"]) == {"cutmix", "puzzlemix"}
    assert all(len(times) == 1 and positive(times[0]) for times in numbers["steps"].values())
    assert set(numbers["parts"]) == {"saliency", "masks (no transport)", "masks + transport"}
    for values in numbers["parts"].values():
        assert set(values) == {2, 4, 8, 16} and all(positive(v) for v in values.values())
    assert "puzzlemix / cutmix" in bench_puzzlemix.format_results(result)




def test_bench_study_reads_inline_and_pooled_log_lines():
    inline = "[1/2] train vanilla-s0 (elapsed 0:00)\n    test accuracy 97% (4.5 s)\n" \
             "[2/2] report report (elapsed 0:05)\n    wrote report.md (1.0 s)\n"
    pooled = "[1/3] train a-s0: test accuracy 97% (4.5 s; elapsed 0:05, about 0:09 left)\n" \
             "[2/3] train b-s0: test accuracy 96% (5.0 s; elapsed 0:05, about 0:04 left)\n" \
             "[3/3] attack a-s0: pgd 8/255 50.0% (2.0 s; elapsed 0:07)\n"
    assert bench_study.per_kind(inline) == {"train": 4.5, "report": 1.0}
    assert bench_study.per_kind(pooled) == {"train": 9.5, "attack": 2.0}


def tiny_study(tmp_path, out):
    """A one-run study of seconds, its config written to tmp_path/tiny.toml."""
    config = tmp_path / "tiny.toml"
    config.write_text(mini_study(
        tmp_path / out, methods=["vanilla"],
        train={"epochs": 1, "image_size": 8, "batch_size": 128},
        attack={"eps": "16/255", "pgd_steps": 1, "n_examples": 8, "autoattack_eps": "16/255",
                "autoattack_examples": 4}, evaluate={"n_examples": 8, "q_draws": 4}))
    return config


@pytest.mark.slow
def test_bench_study_reads_the_time_of_every_kind_of_step(tmp_path):
    config = tiny_study(tmp_path, "study")
    numbers = bench_study.run(tmp_path / "study", ["--config", str(config)])
    assert set(numbers["per_kind_s"]) == {"train", "attack", "autoattack", "evaluate",
                                          "corruptions", "report"}
    assert all(seconds >= 0 for seconds in numbers["per_kind_s"].values())
    assert positive(numbers["total_s"])
    assert numbers["total_s"] >= sum(numbers["per_kind_s"].values())
    assert (tmp_path / "study" / "report.md").is_file()


@pytest.mark.slow
def test_bench_corruptions_times_both_steps(tmp_path):
    from robustmix.core.config import TrainConfig
    from robustmix.training.trainer import train

    run = tmp_path / "run"
    train(TrainConfig(epochs=1, batch_size=128, image_size=8, device="cpu"), run, progress=False)
    result = bench_corruptions.run(str(run), repeats=1, n_examples=8, q_draws=8)
    check_machine(result["machine"])
    assert positive(result["seconds"]["evaluate"]) and positive(result["seconds"]["corruptions"])
    assert result["ratio"] == pytest.approx(
        result["seconds"]["corruptions"] / result["seconds"]["evaluate"])


@pytest.mark.slow
def test_bench_shared_times_the_study_beside_its_own_neighbour_and_stops_it(tmp_path):
    config = tiny_study(tmp_path, "unused")
    result = bench_shared.run(tmp_path, ["--config", str(config), "--seeds", "0,1"], at=3.0)
    check_machine(result["machine"])
    for name in bench_shared.SCENARIOS:
        assert positive(result[name]["total_s"])
        assert (tmp_path / name / "report.md").is_file()
        # the automatic choice, though this test chose 1 thread for itself
        assert result[name]["threads"].endswith("--threads N or ROBUSTMIX_THREADS=N to choose")
        steps = sum(result[name]["step_threads"].values())
        assert steps == len(runs.read_csv(tmp_path / name / "steps.csv")) > 0
        if name != "quiet":
            assert result["ratios"][name] == pytest.approx(
                result[name]["total_s"] / result["quiet"]["total_s"])
    assert positive(result["busy"]["neighbour_cpu_s"])   # it ran, and was reaped
    assert result["quiet"]["neighbour_cpu_s"] == 0.0
    assert "target: at most 2" in bench_shared.format_results(result, [])


@pytest.mark.slow
def test_bench_calibration_prints_a_table_per_family_and_candidate(capsys):
    from benchmarks import bench_calibration
    bench_calibration.main(["--studies", "40", "--path-studies", "2"])
    out = capsys.readouterr().out
    families = ["(a) gap", "(c) profile", "(d) own mask", "(e) regularizer",
                "corruption accuracy", "calibration (ECE)", "(b) primary"]
    assert all(f"\n{family}: studies with a false verdict" in out for family in families)
    rows = [line for line in out.splitlines() if line.startswith("| t, 3 df |")]
    assert len(rows) == len(bench_calibration.CANDIDATES) * (len(families) + 1)
    assert out.count("prediction_table, ") == 2 and "capped" in out.splitlines()[0]
