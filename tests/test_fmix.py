"""The worked example of a plugin, examples/fmix.py (FMix, Harris et al. 2020): its masks,
and the whole road a user's method takes, from an empty folder through train, attack,
evaluate and report on the command line."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robustmix.mixing import mask_kernel, sample_lam

ROOT = Path(__file__).resolve().parent.parent   # examples/ is not installed: found from here


@pytest.fixture
def fmix_module():   # per test: what its import registers is gone after the test
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    import examples.fmix

    return examples.fmix


def draw(module, batch, height, width, seed, decay_power=3.0, lam=None):
    rng = np.random.default_rng(seed)
    lam = torch.from_numpy(rng.random(batch) if lam is None else np.asarray(lam, float))
    return lam, module.fmix(decay_power=decay_power)(lam.float(), height, width, rng, "cpu")


@pytest.mark.parametrize("size", [(8, 8), (7, 12), (32, 32)])
def test_masks_are_binary_and_keep_lambda_of_the_pixels_within_one(fmix_module, size):
    height, width = size
    lams = np.concatenate([[0.0, 1.0, 0.5, 1 / 3], np.random.default_rng(1).random(60)])
    lam, mask = draw(fmix_module, len(lams), height, width, seed=2, lam=lams)
    assert mask.shape == (len(lams), 1, height, width) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    kept = mask.sum(dim=(1, 2, 3)).double()
    exact = lam.float().double() * height * width   # the sampler sees λ as float32
    assert ((kept - exact).abs() < 1).all()          # rounded to a neighbouring whole pixel
    assert kept[0] == 0 and kept[1] == height * width


def test_the_same_generator_gives_the_same_masks(fmix_module):
    _, first = draw(fmix_module, 16, 9, 11, seed=4)
    _, again = draw(fmix_module, 16, 9, 11, seed=4)
    _, other = draw(fmix_module, 16, 9, 11, seed=5)
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("width", [10, 11])   # with and without a Nyquist column
def test_the_noise_has_the_papers_spectrum(fmix_module, width):
    """Between the DC and Nyquist columns the real FFT of the grey image returns the drawn
    spectrum exactly: (a + ib) / max(|f|, 1/max(H, W))^δ."""
    height, delta = 8, 2.5
    grey = fmix_module.low_frequency_noise(3, height, width, delta, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    shape = (3, height, width // 2 + 1)
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    f = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :])
    drawn = (a + 1j * b) / np.maximum(f, 1 / max(height, width)) ** delta
    inner = slice(1, (width + 1) // 2)
    assert np.allclose(np.fft.rfft2(grey)[..., inner], drawn[..., inner], rtol=1e-10,
                       atol=1e-10 * np.abs(drawn).max())


def test_a_faster_decay_gives_smoother_masks(fmix_module):
    def boundary(mask):   # share of horizontally adjacent pixel pairs that differ
        return float((mask[..., 1:] != mask[..., :-1]).float().mean())

    _, rough = draw(fmix_module, 200, 32, 32, seed=3, decay_power=0.0)
    _, smooth = draw(fmix_module, 200, 32, 32, seed=3, decay_power=3.0)
    assert boundary(smooth) < 0.5 * boundary(rough)


def test_its_kernel_at_zero_is_the_expected_hole_one_half(fmix_module):
    """Binary masks: c(0) = E[mean(1 − M)] = E[1 − λ] = 1/2 for α = 1, the rounding being
    unbiased. Per mask 1 − mean M has variance 1/12 (λ's) plus at most 1/(4N²) (rounding)."""
    draws, pixels = 4000, 16 * 16
    c = mask_kernel(fmix_module.fmix(), 16, draws=draws, seed=1)
    se = math.sqrt(1 / 12 + 1 / (4 * pixels ** 2)) / math.sqrt(draws)
    assert abs(c[0] - 0.5) < 4 * se


def test_bad_decay_power_is_refused_naming_it(fmix_module):
    from robustmix.core.errors import ConfigError

    for bad in (-1.0, math.nan, "3", True):
        with pytest.raises(ConfigError, match="^decay_power must be a finite number >= 0"):
            fmix_module.fmix(decay_power=bad)


def kernel_by_hand(module, size: int, draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """c(p) from the plugin's own masks, directly: per mask the mean over positions of
    (1 − M_u)(1 − M_{u+p}); returns its mean and sample std over the masks."""
    rng = np.random.default_rng(seed)
    sampler = module.fmix()
    lam = torch.from_numpy(sample_lam(rng, 1.0, draws)).float()
    hole = 1 - sampler(lam, size, size, rng, "cpu")[:, 0].double().numpy()
    per_mask = np.stack([(hole[:, :, :size - p] * hole[:, :, p:]).mean(axis=(1, 2))
                         for p in range(size)], axis=1)
    return per_mask.mean(axis=0), per_mask.std(axis=0, ddof=1)


def robustmix(cwd: Path, *argv: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "robustmix", *argv], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_fmix_from_an_empty_folder_through_train_attack_evaluate_report(fmix_module,
                                                                        tmp_path):
    for mix in ("examples.fmix:fmix", "vanilla"):
        robustmix(tmp_path, "train", "--quiet", "--mix", mix, "--epochs", "1",
                  "--image-size", "8")
    robustmix(tmp_path, "attack", "--quiet", "--eps", "8/255,32/255", "--attacks",
              "fgsm,pgd", "--pgd-steps", "3", "--n-examples", "24")
    robustmix(tmp_path, "evaluate", "--n-examples", "24", "--q-draws", "32")
    robustmix(tmp_path, "report")
    robustmix(tmp_path, "masks", "--mix", "examples.fmix:fmix", "--size", "8", "--kernel",
              "k.csv", "--draws", "4000")

    run = tmp_path / "runs" / "digits-smallcnn-fmix-s0"
    mix = json.loads((run / "config.json").read_text())["train"]["mix"]
    assert (mix["mix"], mix["factory"], mix["options"]) == \
        ("fmix", "examples.fmix:fmix", {"decay_power": 3.0})
    attacked = {r["attack"] for r in csv.DictReader((run / "robustness.csv").open())}
    assert {"fgsm", "pgd"} <= attacked
    for name in ("digits-smallcnn-fmix-s0", "digits-smallcnn-vanilla-s0"):
        q = json.loads((tmp_path / "runs" / name / "generalization.json").read_text())
        assert "fmix" in q["regularizer"]["q"], name   # every model on fmix's masks
    report = (tmp_path / "report" / "report.md").read_text()
    for line in ("| fmix vs vanilla, pgd |", "| fmix vs every other model on the fmix mask |",
                 "| fmix vs vanilla on the fmix mask |"):
        assert line in report, line

    # c(p) as the report drew it (2048 masks at the data's 8×8) and as `masks --kernel`
    # wrote it (4000), each against 20000 masks drawn here: independent estimates, so their
    # difference has standard error sd·√(1/n₁ + 1/n₂); 4 of those, per offset
    mc, sd = kernel_by_hand(fmix_module, 8, 20000, seed=11)
    rows = [r for r in csv.DictReader((tmp_path / "report" / "mask_kernels.csv").open())
            if r["method"] == "fmix"]
    reported = np.array([float(r["c"]) for r in sorted(rows, key=lambda r: int(r["offset"]))])
    written = np.array([float(r["c"]) for r in csv.DictReader((tmp_path / "k.csv").open())])
    for estimate, n in ((reported, 2048), (written, 4000)):
        assert estimate.shape == (8,)
        assert (np.abs(estimate - mc) < 4 * sd * np.sqrt(1 / n + 1 / 20000)).all(), \
            (estimate, mc)
