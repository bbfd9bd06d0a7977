"""The MSDAs as mask samplers: ranges, means, shapes, the kernel c(p), and the mixing function."""

import math

import numpy as np
import pytest
import torch

from robustmix.app import cli
from robustmix.core import methods
from robustmix.core.errors import ConfigError, UsageError
from robustmix.mixing import (DATA_FREE_MIX_NAMES, MIX_NAMES, is_data_dependent, MixConfig, Mixer, cutmix_mask, gmix_mask, hmix_mask,
                              make_sampler, mask_kernel, mix, mixup_mask)

H, W = 12, 20  # non-square on purpose


def draw(mix_name, n, *, alpha=1.0, size=(H, W), seed=0, **kw):
    rng = np.random.default_rng(seed)
    lam = torch.tensor(rng.beta(alpha, alpha, size=n), dtype=torch.float32)
    return lam, make_sampler(mix_name, **kw)(lam, *size, rng, "cpu")


def cutmix_expected_mean(height, width, grid=20000):
    """E[mean M] of clipped CutMix with λ ~ U(0,1), by quadrature over λ and exact centres.

    Independent of the sampler: the box's clipped extent along one axis, averaged over the
    uniform centre, times the same along the other axis (centres are independent).
    """
    lam = (np.arange(grid) + 0.5) / grid

    def mean_extent(size):
        side = np.floor(size * np.sqrt(1 - lam))[:, None]
        centre = np.arange(size)[None, :]
        start = centre - np.floor(side / 2)
        extent = np.clip(start + side, 0, size) - np.clip(start, 0, size)
        return extent.mean(axis=1)

    return 1 - np.mean(mean_extent(height) * mean_extent(width)) / (height * width)


def test_every_registered_method_has_a_sampler_of_its_kind():
    assert cli.MIX_NAMES == MIX_NAMES == methods.names()[:len(MIX_NAMES)]
    for name in MIX_NAMES:
        method = methods.get(name)
        assert is_data_dependent(make_sampler(name)) == method.data_dependent, name
        assert method.builtin and method.path == f"robustmix.mixing.registry:{name}"
    builtin = {methods.get(name).colour for name in MIX_NAMES}
    assert len(builtin) == len(MIX_NAMES) and not builtin & set(methods.PALETTE)


@pytest.mark.parametrize("name", DATA_FREE_MIX_NAMES)  # puzzlemix: tests/test_puzzlemix.py
def test_masks_lie_in_unit_interval_with_the_contract_shape(name):
    lam, mask = draw(name, 500)
    assert mask.shape == (500, 1, H, W)
    assert mask.dtype == torch.float32
    assert mask.min() >= 0 and mask.max() <= 1


@pytest.mark.parametrize("name", DATA_FREE_MIX_NAMES)
def test_label_weight_is_the_mask_mean(name):
    batch, classes = 16, 10
    rng = np.random.default_rng(1)
    x = torch.rand(batch, 3, H, W)
    labels = torch.arange(batch) % classes
    y = torch.nn.functional.one_hot(labels, classes).float()
    mixer = Mixer(MixConfig(mix=name, lam_per="sample", pairing="shuffle"))
    mask, partner = mixer.draw(batch, H, W, rng, "cpu")
    x_mixed, y_mixed = mix(x, y, mask, partner)
    weight = mask.mean(dim=(1, 2, 3))
    expected_x = mask * x + (1 - mask) * x[partner]
    torch.testing.assert_close(x_mixed, expected_x)
    torch.testing.assert_close(y_mixed.sum(1), torch.ones(batch))
    differs = labels != labels[partner]
    own = y_mixed[torch.arange(batch), labels]
    torch.testing.assert_close(own[differs], weight[differs])


def test_mixup_mean_is_lambda_and_its_average_is_half():
    lam, mask = draw("mixup", 20000)
    torch.testing.assert_close(mask.mean(dim=(1, 2, 3)), lam)
    assert abs(mask.mean().item() - 0.5) < 0.01  # SE of the mean ≈ 0.002


@pytest.mark.parametrize("r", [0.0, 0.25, 0.5, 1.0])
def test_hmix_mean_is_exactly_lambda(r):
    lam, mask = draw("hmix", 2000, hmix_r=r)
    # Exact up to float32 rounding: w = λ / outside fraction (2 roundings) and a float32 mean
    # of 240 values, which torch sums with several accumulators (error ~u*log2(240) ~ 8u,
    # u = 2^-24, in any lane order): ~10u ~ 6e-7 for λ <= 1. We saw 2.4e-7 (4 ulps).
    torch.testing.assert_close(mask.mean(dim=(1, 2, 3)), lam, atol=2e-6, rtol=0)


def test_hmix_with_r_zero_is_mixup():
    lam = torch.rand(64)
    a = hmix_mask(0.0)(lam, H, W, np.random.default_rng(0), "cpu")
    b = mixup_mask(lam, H, W, np.random.default_rng(0), "cpu")
    torch.testing.assert_close(a, b, atol=1e-7, rtol=0)


def test_hmix_box_is_zero_and_the_rest_is_constant():
    lam = torch.full((50,), 0.3)
    mask = hmix_mask(0.5)(lam, 32, 32, np.random.default_rng(3), "cpu")
    for m in mask[:, 0]:
        outside = m[m > 0]
        assert torch.allclose(outside, outside[0].expand_as(outside))
        assert outside[0] <= 1


def test_cutmix_mask_is_one_axis_aligned_box():
    lam, mask = draw("cutmix", 300, size=(16, 24))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    for m, l in zip(mask[:, 0], lam):
        hole = (m == 0).nonzero()
        if len(hole) == 0:
            continue
        (r0, c0), (r1, c1) = hole.min(0).values, hole.max(0).values
        box = m[r0:r1 + 1, c0:c1 + 1]
        assert (box == 0).all(), "the zeros must fill their bounding box"
        assert (m == 0).sum() == box.numel()
        # never larger than the nominal side ⌊H√(1−λ)⌋
        assert r1 - r0 + 1 <= math.floor(16 * math.sqrt(1 - l))
        assert c1 - c0 + 1 <= math.floor(24 * math.sqrt(1 - l))


def test_cutmix_unclipped_box_has_the_nominal_side():
    # λ chosen so that the side is odd (⌊32·√0.51⌋ = 22 ... and 21 for 0.56): no row lost
    for value in (0.49, 0.56):
        lam = torch.tensor([value])

        class Centre:  # a centre in the middle, so nothing is clipped
            def integers(self, low, high, size):
                return np.full(size, high // 2)

        mask = cutmix_mask(lam, 32, 32, Centre(), "cpu")[0, 0]
        side = math.floor(32 * math.sqrt(1 - value))
        assert (mask == 0).sum().item() == side * side


def test_cutmix_mean_with_clipping_matches_quadrature():
    # With clipping E[mean M] is not E[λ] = 0.5: about 0.69 on 32×32 with α = 1.
    expected = cutmix_expected_mean(32, 32)
    assert 0.68 < expected < 0.71
    _, mask = draw("cutmix", 20000, size=(32, 32))
    assert abs(mask.mean().item() - expected) < 0.01  # SE ≈ 0.002
    expected_ns = cutmix_expected_mean(H, W)
    _, mask = draw("cutmix", 20000)
    assert abs(mask.mean().item() - expected_ns) < 0.01


def test_gmix_mean_is_lambda_away_from_borders():
    class Centre:
        def integers(self, low, high, size):
            return np.full(size, high // 2)

    # σ = √(λ′/2π)·H: the half side is ~4σ for λ′ <= 0.1, so the truncated mass is negligible
    # (for λ′ = 0.3 it is 2.3σ and the mean falls ~1% short of λ even on large images).
    for value in (0.05, 0.1, 0.9, 0.95):
        mask = gmix_mask(torch.tensor([value]), 96, 96, Centre(), "cpu")
        assert abs(mask.mean().item() - value) < 1e-3
        # the bump sits on the minority image: M is smallest (λ > .5) or largest at the centre
        centre = mask[0, 0, 48, 48].item()
        assert centre == pytest.approx(0.0 if value > 0.5 else 1.0)


def test_stochastic_is_mixup_or_cutmix_per_mask():
    lam, mask = draw("stochastic", 400, switch_prob=0.5)
    flat = (mask.flatten(1) == mask.flatten(1)[:, :1]).all(1)
    binary = ((mask == 0) | (mask == 1)).flatten(1).all(1)
    assert (flat | binary).all()
    share = (~flat).float().mean().item()  # boxes that are not flat: CutMix
    assert 0.4 < share < 0.6
    _, all_cut = draw("stochastic", 50, switch_prob=1.0)
    assert ((all_cut == 0) | (all_cut == 1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixup", "cutmix", "hmix", pytest.param("gmix", marks=pytest.mark.slow),
                                  "stochastic"])
def test_per_sample_and_per_batch_agree_in_distribution(name):
    batch, draws = 8, 3000
    per_batch = Mixer(MixConfig(mix=name, lam_per="batch"))
    per_sample = Mixer(MixConfig(mix=name, lam_per="sample"))
    rng_b, rng_s = np.random.default_rng(0), np.random.default_rng(1)
    batch_masks = torch.cat([per_batch.draw(batch, H, W, rng_b, "cpu")[0]
                             for _ in range(draws)])
    sample_masks = torch.cat([per_sample.draw(batch, H, W, rng_s, "cpu")[0]
                              for _ in range(draws // batch)])
    assert batch_masks.shape[0] == draws and sample_masks.shape[0] == draws // batch * batch
    # Kolmogorov-Smirnov distance of the mask means (critical value at 0.1%: ~0.05)
    a, b = batch_masks.mean((1, 2, 3)), sample_masks.mean((1, 2, 3))
    grid = torch.cat([a, b]).sort().values
    cdf_a = torch.searchsorted(a.sort().values, grid, right=True) / len(a)
    cdf_b = torch.searchsorted(b.sort().values, grid, right=True) / len(b)
    assert (cdf_a - cdf_b).abs().max() < 0.05
    torch.testing.assert_close(batch_masks.mean(0), sample_masks.mean(0), atol=0.04, rtol=0)


def test_pairings_and_mix_prob():
    rng = np.random.default_rng(0)
    mask, partner = Mixer(MixConfig(mix="mixup")).draw(6, H, W, rng, "cpu")
    assert partner.tolist() == [5, 4, 3, 2, 1, 0] and mask.shape[0] == 1
    _, partner = Mixer(MixConfig(mix="mixup", pairing="shuffle")).draw(50, H, W, rng, "cpu")
    assert sorted(partner.tolist()) == list(range(50))
    mask, _ = Mixer(MixConfig(mix="cutmix", mix_prob=0.0, lam_per="sample")).draw(
        50, H, W, rng, "cpu")
    assert (mask == 1).all()
    masks = [Mixer(MixConfig(mix="mixup", mix_prob=0.3)).draw(4, H, W, rng, "cpu")[0]
             for _ in range(2000)]
    unmixed = np.mean([bool((m == 1).all()) for m in masks])
    assert abs(unmixed - 0.7) < 0.04


def test_mixer_is_deterministic_and_vanilla_is_identity():
    x, y = torch.rand(8, 1, H, W), torch.eye(10)[torch.arange(8)]
    mixer = Mixer(MixConfig(mix="gmix", lam_per="sample", pairing="shuffle"))
    a = mixer(x, y, np.random.default_rng(5))
    b = mixer(x, y, np.random.default_rng(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    same = Mixer(MixConfig(mix="vanilla"))(x, y, np.random.default_rng(5))
    assert same[0] is x and same[1] is y


def test_kernel_of_mixup_is_flat_at_the_second_moment():
    for alpha in (1.0, 2.0):
        kernel = mask_kernel(mixup_mask, (8, 16), alpha=alpha, draws=4096)
        second_moment = 0.25 + 1 / (4 * (2 * alpha + 1))  # E[(1−λ)²], λ ~ Beta(α, α)
        assert kernel.shape == (16,)
        assert np.ptp(kernel) < 1e-9  # the same value at every offset
        assert abs(kernel[0] - second_moment) < 0.02  # SE ≈ 0.005


def test_kernel_of_cutmix_falls_from_its_hole_fraction_to_zero():
    kernel = mask_kernel(cutmix_mask, 32, draws=4096)
    assert np.all(np.diff(kernel) < 0), "c(p) must fall with the offset"
    assert kernel[-1] == 0.0  # a box never spans the whole width (λ > 0 a.s.)
    assert abs(kernel[0] - (1 - cutmix_expected_mean(32, 32))) < 0.015
    hmix = mask_kernel(make_sampler("hmix"), 32, draws=4096)
    # HMix lies in between: it falls with p (its box) but not to 0 (its Mixup part)
    assert np.all(np.diff(hmix) < 0) and hmix[-1] > 0.1 * hmix[0]


def test_invalid_settings_are_refused():
    with pytest.raises(ConfigError, match="^mix must be one of vanilla, .*, got 'foo'"):
        make_sampler("foo")
    with pytest.raises(ConfigError, match="^alpha must be > 0"):
        MixConfig(mix="mixup", alpha=0).validate()
    with pytest.raises(ConfigError, match=r"^hmix_r must lie in \[0, 1\]"):
        MixConfig(mix="hmix", options={"hmix_r": 1.5}).validate()
    with pytest.raises(ConfigError, match=r"^options 'hmix_r' is not an option of cutmix"):
        MixConfig(mix="cutmix", options={"hmix_r": 0.5}).validate()
    with pytest.raises(ConfigError, match=r"^switch_prob must be a number, got 'x'"):
        make_sampler("stochastic", switch_prob="x")
    with pytest.raises(ValueError, match="at least 2"):
        Mixer(MixConfig(mix="mixup"))(torch.rand(1, 1, 4, 4), torch.eye(2)[:1],
                                      np.random.default_rng(0))
    with pytest.raises(ValueError, match="batch_size, classes"):
        mix(torch.rand(4, 1, 4, 4), torch.arange(4), torch.ones(1, 1, 4, 4), torch.arange(4))
