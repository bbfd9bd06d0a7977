"""The on-the-fly corruption suite: closed forms (identity at severity 0, the noise's stated
standard deviation and Poisson variance, constants kept by every spatial corruption), the
invariants (range, shape, dtype, determinism), JPEG error growing with severity, and a
trained digits model losing accuracy as the noise grows."""

import pytest
import torch

from robustmix.evaluations import corruptions as C
from robustmix.evaluations.corruptions import CORRUPTIONS, SEVERITIES, corrupt, generator_for

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def images(n=8, c=3, h=16, w=12, seed=0):
    return torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_zero_is_the_identity_and_every_severity_stays_an_image(name):
    x = images()
    assert corrupt(x, name, 0) is x
    for severity in SEVERITIES:
        y = corrupt(x, name, severity, generator_for(0, name, severity, "cpu"))
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert not torch.equal(y, x), f"{name} at severity {severity} changed nothing"
        again = corrupt(x, name, severity, generator_for(0, name, severity, "cpu"))
        assert torch.equal(y, again), "the same seed gives the same images"


def test_the_seed_decides_the_random_draws():
    x = images()
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "elastic"):
        a = corrupt(x, name, 3, generator_for(0, name, 3, "cpu"))
        b = corrupt(x, name, 3, generator_for(1, name, 3, "cpu"))
        assert not torch.equal(a, b), name


def test_gaussian_noise_has_the_stated_std_on_mid_grey():
    grey = torch.full((16, 3, 32, 32), 0.5)
    n = grey.numel()
    for severity, std in zip(SEVERITIES, CORRUPTIONS["gaussian_noise"].values):
        raw = C.gaussian_noise(grey, std, torch.Generator().manual_seed(severity)) - 0.5
        # the sample std's relative standard error is 1/sqrt(2n); allow 5 of them
        assert float(raw.std()) == pytest.approx(std, rel=5 / (2 * n) ** 0.5)
        assert abs(float(raw.mean())) < 5 * std / n ** 0.5


def test_shot_noise_keeps_the_mean_with_poisson_variance():
    grey = torch.full((16, 3, 32, 32), 0.5)
    n = grey.numel()
    for rate in CORRUPTIONS["shot_noise"].values:
        out = C.shot_noise(grey, rate, torch.Generator().manual_seed(0))
        variance = 0.5 / rate                      # Var[Poisson(0.5 r) / r]
        assert float(out.mean()) == pytest.approx(0.5, abs=5 * (variance / n) ** 0.5)
        assert float(out.var()) == pytest.approx(variance, rel=0.05)


def test_impulse_noise_sets_the_stated_share_to_black_or_white():
    grey = torch.full((16, 3, 32, 32), 0.5)
    n = grey.numel()
    for p in CORRUPTIONS["impulse_noise"].values:
        out = C.impulse_noise(grey, p, torch.Generator().manual_seed(0))
        black, white = float((out == 0).double().mean()), float((out == 1).double().mean())
        tolerance = 5 * (p / 2 * (1 - p / 2) / n) ** 0.5
        assert black == pytest.approx(p / 2, abs=tolerance)
        assert white == pytest.approx(p / 2, abs=tolerance)
        assert torch.all((out == 0) | (out == 1) | (out == 0.5))


@pytest.mark.parametrize("name", ["gaussian_blur", "motion_blur", "pixelate", "elastic"])
def test_spatial_corruptions_keep_a_constant_image(name):
    flat = torch.full((4, 3, 16, 16), 0.3)
    for severity in SEVERITIES:
        out = corrupt(flat, name, severity, generator_for(0, name, severity, "cpu"))
        torch.testing.assert_close(out, flat, atol=1e-6, rtol=0)


def test_contrast_and_brightness_closed_forms():
    x = images(c=1)
    for severity, factor in zip(SEVERITIES, CORRUPTIONS["contrast"].values):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        torch.testing.assert_close(corrupt(x, "contrast", severity),
                                   (factor * x + (1 - factor) * mean).clamp(0, 1))
    for severity, shift in zip(SEVERITIES, CORRUPTIONS["brightness"].values):
        torch.testing.assert_close(corrupt(x, "brightness", severity), (x + shift).clamp(0, 1))


def test_motion_blur_of_a_point_spreads_along_a_line_and_keeps_its_mass():
    point = torch.zeros(1, 1, 33, 33)
    point[..., 16, 16] = 1.0
    length = CORRUPTIONS["motion_blur"].values[-1] * 33
    out = C.motion_blur(point, CORRUPTIONS["motion_blur"].values[-1],
                        torch.Generator().manual_seed(0))
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    ys, xs = torch.nonzero(out[0, 0] > 1e-6, as_tuple=True)
    extent = max(int(ys.max() - ys.min()), int(xs.max() - xs.min()))
    assert length - 2 <= extent <= length + 2


def test_jpeg_error_grows_with_severity():
    # a smooth image with an edge: what JPEG keeps at high quality and loses at low
    h = w = 32
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    x = torch.stack([0.2 + 0.6 * xx * yy, (xx > 0.5).float() * 0.7 + 0.1, 0.5 + 0.3 * (xx - yy)])
    x = x[None].repeat(2, 1, 1, 1)
    errors = [float((corrupt(x, "jpeg", s) - x).square().mean()) for s in SEVERITIES]
    assert all(a < b for a, b in zip(errors, errors[1:])), errors


def test_the_table_has_five_values_per_corruption_and_bad_input_is_refused():
    assert all(len(c.values) == 5 for c in CORRUPTIONS.values())
    rows = C.parameter_table()
    assert [r[0] for r in rows] == list(CORRUPTIONS) and all(len(r) == 8 for r in rows)
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(images(), "fog", 1)
    with pytest.raises(ValueError, match="severity must be 0-5"):
        corrupt(images(), "jpeg", 6)
    with pytest.raises(ValueError, match="float"):
        corrupt(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "jpeg", 1)


def test_the_evaluate_guide_prints_the_table_that_applies_the_corruptions():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("readme_table", root / "docs" / "readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    guide = root / "docs" / "guide" / "evaluate.md"
    assert module.corruption_table() in guide.read_text(encoding="utf-8")
