"""evaluate_run and its parts: closed forms for the profile and Q, and agreement with training."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from robustmix.evaluations import evaluate_run
from robustmix.evaluations.generalization import gradient_measures
from robustmix.evaluations.profiles import COLUMNS
from robustmix.evaluations.regularizer import first_layer_energy, regularizer_table
from robustmix.core import runs
from robustmix.core.errors import UsageError
from robustmix.core.config import TrainConfig
from robustmix.models.weights import load_model
from robustmix.training.trainer import train


class LinearClassifier(nn.Module):
    """Logit of class c is <w_c, x>: the input gradient of the true-class logit is w_y."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return torch.einsum("nchw,kchw->nk", x, self.weight)


def closed_form_profiles(maps: np.ndarray) -> dict:
    """mean / max of |g(v) g(v+p)| by loops over half-plane offsets, straight from the maps."""
    n, h, w = maps.shape
    table = {}
    for dy in range(h):
        for dx in range(-(w - 1), w):
            if dy == 0 and dx < 0:
                continue
            products = [abs(maps[k, r, c] * maps[k, r + dy, c + dx])
                        for k in range(n) for r in range(h - dy) for c in range(w)
                        if 0 <= c + dx < w]
            table[dy, dx] = (sum(products), max(products), len(products))
    radial: dict[int, list] = {}
    for (dy, dx), (total, peak, count) in table.items():
        entry = radial.setdefault(int(round(math.hypot(dy, dx))), [0.0, 0.0, 0])
        entry[0] += total
        entry[1] = max(entry[1], peak)
        entry[2] += count
    return {
        "horizontal": [(table[0, dx][0] / table[0, dx][2], table[0, dx][1]) for dx in range(w)],
        "vertical": [(table[dy, 0][0] / table[dy, 0][2], table[dy, 0][1]) for dy in range(h)],
        "radial": [(radial[r][0] / radial[r][2], radial[r][1]) for r in sorted(radial)],
    }


def test_gradient_profile_of_a_linear_model_is_the_closed_form_on_its_weights(monkeypatch):
    from robustmix.evaluations import generalization

    monkeypatch.setattr(generalization, "PROFILE_ELEMENTS", 100)  # several passes to merge
    gen = torch.Generator().manual_seed(0)
    classes, channels, h, w = 3, 2, 5, 6
    weight = torch.randn(classes, channels, h, w, generator=gen)
    x = torch.rand(11, channels, h, w, generator=gen)
    y = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2, 1, 1])
    # batch 4: the table is accumulated over three chunks (4, 4, 3 maps of 5×6)
    result = gradient_measures(LinearClassifier(weight), x, y, batch_size=4, device="cpu")

    maps = weight.double().sum(dim=1).numpy()[y.numpy()]       # g_k = Σ_c w_{y_k}
    expected = closed_form_profiles(maps)
    profile = result["gradient_profile"]
    for direction, pairs in expected.items():
        mean, peak = np.array(pairs).T
        assert profile[direction]["mean_abs"] == pytest.approx(mean, rel=1e-5)
        assert profile[direction]["max_abs"] == pytest.approx(peak, rel=1e-5)
        assert profile[direction]["max_abs_over_p0"] == pytest.approx(peak / peak[0], rel=1e-5)
        assert profile[direction]["mean_abs_over_p0"] == pytest.approx(mean / mean[0], rel=1e-5)
    assert len(profile["radial"]["offset"]) == round(math.hypot(h - 1, w - 1)) + 1
    radial_mean = np.array(expected["radial"])[:, 0]
    assert profile["decay"]["value"] == pytest.approx(radial_mean[2] / radial_mean[0], rel=1e-5)
    # ‖∇f_y‖ = ‖w_y‖ exactly; the mean of the per-example norms, not the norm of the mean
    norms = weight.double().flatten(1).norm(dim=1)[y]
    assert result["input_gradient"]["logit_l2_mean"] == pytest.approx(float(norms.mean()), rel=1e-6)
    assert result["input_gradient"]["n_examples"] == 11


def mixup_closed_form(images: torch.Tensor, a: torch.Tensor, std: torch.Tensor) -> float:
    """E_{i≠j} ‖Σ_c a_c (x_j − x_i)_c / s_c‖² over all ordered pairs of distinct images."""
    x = images.double() / 255 * (a / std).double().view(1, -1, 1, 1)
    z = x.sum(dim=1).flatten(1)                             # the 1×1 conv's output per image
    n = z.shape[0]
    total = 2 * n * z.square().sum() - 2 * z.sum(dim=0).square().sum()
    return float(total / (n * (n - 1)))


def test_q_of_a_known_1x1_first_layer_matches_the_mixup_closed_form():
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (40, 2, 5, 5), generator=gen, dtype=torch.uint8)
    layer = nn.Conv2d(2, 1, kernel_size=1, bias=False)
    a = torch.tensor([0.7, -1.3])
    std = torch.tensor([0.25, 0.5])
    with torch.no_grad():
        layer.weight.copy_(a.view(1, 2, 1, 1))
    alpha = 0.5
    q = regularizer_table(layer, std, images, alpha=alpha, draws=6000, seed=3,
                          masks=("vanilla", "mixup", "cutmix"))

    pair_energy = mixup_closed_form(images, a, std)
    one_minus_lam_sq = (alpha + 1) / (2 * (2 * alpha + 1))  # E[(1−λ)²] for λ ~ Beta(α, α)
    mixup = q["q"]["mixup"]
    assert abs(mixup["q"] - one_minus_lam_sq * pair_energy) < 4 * mixup["se"]
    assert abs(q["reference"]["q"] - pair_energy) < 4 * q["reference"]["se"]
    # same pairs in both: the ratio only carries the λ noise (sd of (1−λ)² ≈ 0.33 / √6000)
    assert mixup["relative"] == pytest.approx(one_minus_lam_sq, abs=0.02)
    assert q["q"]["vanilla"] == {"q": 0.0, "se": 0.0, "relative": 0.0}
    # a box mask removes part of the difference: strictly between 0 and the whole of it
    assert 0 < q["q"]["cutmix"]["q"] < q["reference"]["q"]


def test_q_uses_the_hole_1_minus_m_of_the_training_sampler():
    """On flat images δ is the same at every pixel, so Q_cutmix / Q_ref = E[mean(1 − M)] = c(0):
    about 0.3 with the border clipping (E[mean M] ≈ 0.7), which tells 1 − M from M."""
    from robustmix.mixing import make_sampler, mask_kernel

    levels = torch.arange(0, 256, 8, dtype=torch.uint8)
    images = levels.view(-1, 1, 1, 1).expand(-1, 1, 12, 12).contiguous()
    layer = nn.Conv2d(1, 1, kernel_size=1, bias=False)
    q = regularizer_table(layer, torch.tensor([0.5]), images, draws=2000, seed=0,
                          masks=("cutmix",))
    hole = mask_kernel(make_sampler("cutmix"), 12, draws=2000, seed=1)[0]
    assert 0.2 < hole < 0.4
    assert q["q"]["cutmix"]["relative"] == pytest.approx(hole, abs=0.03)


def test_q_draws_do_not_depend_on_which_masks_are_evaluated():
    gen = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (30, 1, 8, 8), generator=gen, dtype=torch.uint8)
    layer = nn.Conv2d(1, 4, kernel_size=3, padding=1, bias=False)
    std = torch.tensor([0.3])
    alone = regularizer_table(layer, std, images, draws=300, masks=("gmix",), seed=5)
    together = regularizer_table(layer, std, images, draws=300, seed=5)
    assert alone["q"]["gmix"] == together["q"]["gmix"]
    other_seed = regularizer_table(layer, std, images, draws=300, masks=("gmix",), seed=6)
    assert other_seed["q"]["gmix"]["q"] != alone["q"]["gmix"]["q"]


def test_first_layer_energy_is_the_difference_of_the_layer_on_two_normalized_inputs():
    from robustmix.models import build_model

    torch.manual_seed(0)
    model = build_model("smallcnn", num_classes=10, in_channels=3, mean=[0.4, 0.5, 0.6],
                        std=[0.2, 0.3, 0.25]).eval()
    x_i, x_j = torch.rand(2, 4, 3, 9, 9).unbind(0)
    conv = model.first_layer
    normalized = [(x - model.mean) / model.std for x in (x_i, x_j)]
    direct = (torch.nn.functional.conv2d(normalized[1], conv.weight, None, conv.stride,
                                         conv.padding)
              - torch.nn.functional.conv2d(normalized[0], conv.weight, None, conv.stride,
                                           conv.padding))
    energy = first_layer_energy(conv, model.std, x_j - x_i)
    assert energy.numpy() == pytest.approx(direct.detach().double().square().sum(dim=(1, 2, 3)).numpy(),
                                           rel=1e-5)


# ---------------------------------------------------------------------- on a trained run


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "vanilla"
    train(TrainConfig(epochs=1, batch_size=128, seed=0), run, progress=False)
    # the batches training evaluated in (2 × 128), so each argmax is the same computation
    result = evaluate_run(run, device="cpu", n_examples=64, q_draws=128, batch_size=256)
    return run, result


@pytest.mark.slow
def test_clean_accuracy_and_gap_agree_with_training(evaluated):
    run, result = evaluated
    last = runs.read_csv(run / runs.METRICS)[-1]
    assert result["test"]["accuracy"] == pytest.approx(float(last["test_acc"]), abs=1e-6)
    assert result["test"]["loss"] == pytest.approx(float(last["test_loss"]), abs=1e-5)
    assert (result["train"]["n"], result["test"]["n"]) == (1400, 397)
    assert result["gap"]["accuracy"] == result["train"]["accuracy"] - result["test"]["accuracy"]
    assert result["gap"]["loss"] == result["test"]["loss"] - result["train"]["loss"]
    for key in ("loss_l2_mean", "logit_l2_mean"):
        assert math.isfinite(result["input_gradient"][key]) and result["input_gradient"][key] > 0
    assert result["input_gradient"]["n_examples"] == 64


@pytest.mark.slow
def test_clean_calibration_agrees_with_the_clean_test_numbers(evaluated):
    # two paths: the calibration pass's accuracy and NLL are evaluate()'s accuracy and loss
    _, result = evaluated
    c = result["calibration"]
    assert c["n"] == result["test"]["n"] == sum(c["reliability"]["count"])
    assert c["accuracy"] == pytest.approx(result["test"]["accuracy"], abs=1e-12)
    assert c["nll"] == pytest.approx(result["test"]["loss"], rel=1e-5)
    assert 0 <= c["ece"] <= 1 and 0 <= c["brier"] <= 2 and c["bins"] == 15


@pytest.mark.slow
def test_first_layer_norms_are_those_of_the_loaded_weight(evaluated):
    run, result = evaluated
    weight = load_model(run).first_layer.weight.detach()
    norms = result["first_layer"]
    assert norms["frobenius"] == pytest.approx(float(torch.linalg.norm(weight)), rel=1e-6)
    assert norms["shape"] == list(weight.shape)
    per_offset = np.array(norms["per_offset"])
    assert per_offset.shape == tuple(weight.shape[2:])
    assert float((per_offset ** 2).sum()) == pytest.approx(norms["frobenius"] ** 2, rel=1e-9)


@pytest.mark.slow
def test_files_written_match_the_returned_dict(evaluated):
    run, result = evaluated
    assert runs.read_json(run / "generalization.json") == json.loads(json.dumps(result))
    rows = runs.read_csv(run / "gradient_profile.csv")
    assert list(rows[0]) == COLUMNS
    horizontal = [r for r in rows if r["direction"] == "horizontal"]
    assert len(horizontal) == 16 and float(horizontal[0]["max_abs_over_p0"]) == 1.0
    assert [float(r["max_abs"]) for r in horizontal] == pytest.approx(
        result["gradient_profile"]["horizontal"]["max_abs"], rel=1e-6)
    assert "max_abs(p) / max_abs(p=0)" in result["gradient_profile"]["normalization"]
    q_rows = {r["mask"]: r for r in runs.read_csv(run / "regularizer.csv")}
    assert float(q_rows["vanilla"]["q"]) == 0.0
    assert float(q_rows["cutmix"]["q"]) == pytest.approx(
        result["regularizer"]["q"]["cutmix"]["q"], rel=1e-6)
    assert result["regularizer"]["draws"] == 128 and result["regularizer"]["alpha"] == 1.0


@pytest.mark.slow
def test_bad_input_is_one_line_usage_error(evaluated, tmp_path):
    run, _ = evaluated
    with pytest.raises(UsageError, match="not found") as missing:
        evaluate_run(tmp_path / "nowhere")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in (runs.CONFIG, runs.METRICS):
        shutil.copy(run / name, unfinished / name)
    with pytest.raises(UsageError, match="model.safetensors is missing") as no_weights:
        evaluate_run(unfinished)
    with pytest.raises(UsageError, match="^q_draws must be a positive integer"):
        evaluate_run(run, q_draws=0)
    for error in (missing, no_weights):
        assert "\n" not in str(error.value)
