"""PuzzleMix: block masks from a graph cut, transport, the Mixer path, saliency, kernel, training."""

import itertools
import math

import numpy as np
import pytest
import torch

from helpers import interrupted_at
from robustmix.mixing import puzzlemix as pm
from robustmix.core import runs
from robustmix.core.errors import ConfigError, UsageError
from robustmix.mixing import (DATA_FREE_MIX_NAMES, MIX_NAMES, MaskDraw, MixConfig, Mixer,
                              cutmix_mask, make_sampler, mask_kernel, mix)

pytest.importorskip("gco")

H, W = 16, 32  # non-square on purpose; every n in {2, 4, 8, 16} tiles it


def smooth_saliency(batch, height=H, width=W, seed=0):
    """Positive saliency with a few hot spots, like a real input-gradient map."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, height // 4, width // 4, generator=g) ** 4
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear",
                                           align_corners=False).squeeze(1) + 1e-3


def block_view(mask, blocks):
    """(B, n, h, n, w) view of (B, 1, H, W) masks split into n × n blocks."""
    b, _, height, width = mask.shape
    return mask.view(b, blocks, height // blocks, blocks, width // blocks)


def is_block_constant(mask, blocks):
    view = block_view(mask, blocks)
    return bool((view == view[:, :, :1, :, :1]).all())


def test_official_defaults_and_the_config_agree():
    sampler = pm.PuzzleMix()
    assert (sampler.beta, sampler.gamma, sampler.eta, sampler.transport) == (1.2, 0.5, 0.2, True)
    assert (sampler.neigh_size, sampler.n_labels, sampler.t_eps, sampler.t_size) == (4, 3, 0.8, -1)
    config = MixConfig(mix="puzzlemix").options
    assert (config["puzzle_beta"], config["puzzle_gamma"], config["puzzle_eta"],
            config["puzzle_transport"]) == (sampler.beta, sampler.gamma, sampler.eta,
                                            sampler.transport)
    built = make_sampler("puzzlemix", **MixConfig(mix="puzzlemix", options={
        "puzzle_beta": 0.7, "puzzle_transport": False}).options)
    assert isinstance(built, pm.PuzzleMix) and built.beta == 0.7 and not built.transport
    assert MIX_NAMES[:len(DATA_FREE_MIX_NAMES)] == DATA_FREE_MIX_NAMES
    assert "puzzlemix" in MIX_NAMES and "puzzlemix" not in DATA_FREE_MIX_NAMES
    assert pm.block_counts(16, 32) == (2, 4, 8, 16) and pm.block_counts(28, 28) == (2, 4)


@pytest.mark.parametrize("blocks", [2, 4, 8, 16])
@pytest.mark.parametrize("n_labels", [2, 3])
def test_masks_are_constant_per_block_on_the_label_levels_and_their_mean_is_the_label_weight(
        blocks, n_labels):
    batch, classes = 12, 10
    x = torch.rand(batch, 3, H, W)
    partner = torch.randperm(batch, generator=torch.Generator().manual_seed(blocks))
    saliency = smooth_saliency(batch, seed=blocks)
    lam = torch.from_numpy(np.random.default_rng(blocks).beta(1, 1, batch)).float()
    sampler = pm.PuzzleMix(n_labels=n_labels)
    draw = sampler.cut(lam, x, x[partner], saliency, saliency[partner], blocks)
    mask = draw.mask
    assert mask.shape == (batch, 1, H, W) and mask.dtype == torch.float32
    assert is_block_constant(mask, blocks)
    levels = set(mask.unique().tolist())
    assert levels <= {k / (n_labels - 1) for k in range(n_labels)}
    if n_labels == 2:
        assert levels <= {0.0, 1.0}  # binary per block
    labels = torch.arange(batch) % classes
    y = torch.nn.functional.one_hot(labels, classes).float()
    x_mixed, y_mixed = mix(draw.x, y, mask, partner, partner_x=draw.partner_x)
    torch.testing.assert_close(x_mixed, mask * draw.x + (1 - mask) * draw.partner_x)
    differs = labels != labels[partner]
    own = y_mixed[torch.arange(batch), labels]
    torch.testing.assert_close(own[differs], mask.mean(dim=(1, 2, 3))[differs])


def test_the_sampler_draws_the_block_count_from_2_4_8_16_and_the_masks_follow_it(monkeypatch):
    seen = []
    real_cut = pm.PuzzleMix.cut

    def spy(self, lam, x, partner_x, saliency, partner_saliency, blocks):
        draw = real_cut(self, lam, x, partner_x, saliency, partner_saliency, blocks)
        seen.append((blocks, draw.mask))
        return draw

    monkeypatch.setattr(pm.PuzzleMix, "cut", spy)
    sampler, rng = pm.PuzzleMix(transport=False), np.random.default_rng(0)
    x, saliency = torch.rand(4, 1, H, W), smooth_saliency(4)
    for _ in range(24):
        sampler(torch.tensor([0.5]), x, x.flip(0), rng, saliency=saliency,
                partner_saliency=saliency.flip(0))
    assert {blocks for blocks, _ in seen} == {2, 4, 8, 16}
    assert all(is_block_constant(mask, blocks) for blocks, mask in seen)
    coarse = [mask for blocks, mask in seen if blocks == 2]
    assert any(not is_block_constant(mask, 1) for mask in coarse)  # masks do mix images


@pytest.mark.parametrize("blocks", [2, 4, 8])
def test_the_graph_cut_keeps_the_block_where_one_image_is_salient(blocks):
    batch = 4
    x = torch.rand(batch, 3, H, W)
    hot = torch.full((batch, H, W), 1e-4)
    bh, bw = H // blocks, W // blocks
    spots = [(0, 0), (blocks - 1, blocks - 1), (blocks // 2, 1), (1, blocks // 2)]
    for k, (r, c) in enumerate(spots):
        hot[k, r * bh:(r + 1) * bh, c * bw:(c + 1) * bw] = 1.0
    flat = torch.ones(batch, H, W)
    sampler = pm.PuzzleMix(transport=False)
    # own image salient in one block; λ = 0.3 favours the partner everywhere else
    mask = sampler.cut(torch.tensor([0.3]), x, x.flip(0), hot, flat, blocks).mask
    # partner salient in one block; λ = 0.7 favours the own image everywhere else
    covered = sampler.cut(torch.tensor([0.7]), x, x.flip(0), flat, hot, blocks).mask
    for k, (r, c) in enumerate(spots):
        block = (slice(r * bh, (r + 1) * bh), slice(c * bw, (c + 1) * bw))
        assert (mask[k, 0][block] == 1).all()      # kept from the own image
        assert (covered[k, 0][block] == 0).all()   # taken from the partner
    assert mask.mean() < 0.5 < covered.mean()


def test_transport_moves_a_covered_salient_block_into_view():
    blocks, batch = 4, 2
    bh, bw = H // blocks, W // blocks
    x = torch.rand(batch, 1, H, W) * 0.5
    x[:, :, :bh, :bw] = 0.9                        # the salient block's content, at (0, 0)
    partner_x = torch.rand(batch, 1, H, W) * 0.5
    own_s = torch.full((batch, H, W), 0.2)
    own_s[:, :bh, :bw] = 1.0
    partner_s = torch.full((batch, H, W), 1e-6)
    partner_s[:, :bh, :bw] = 2.0                   # the partner wins block (0, 0)
    lam = torch.tensor([0.5])
    still = pm.PuzzleMix(transport=False).cut(lam, x, partner_x, own_s, partner_s, blocks)
    moved = pm.PuzzleMix(transport=True).cut(lam, x, partner_x, own_s, partner_s, blocks)
    torch.testing.assert_close(moved.mask, still.mask)   # transport never changes the mask
    assert (still.mask[:, 0, :bh, :bw] == 0).all() and (still.mask[:, 0, bh:, :] == 1).all()
    shown = mix(moved.x, torch.eye(batch), moved.mask, torch.arange(batch),
                partner_x=moved.partner_x)[0]
    hidden = mix(still.x, torch.eye(batch), still.mask, torch.arange(batch),
                 partner_x=still.partner_x)[0]
    assert not (hidden == 0.9).any()               # without transport the block is covered
    for k in range(batch):
        view = shown[k, 0].view(blocks, bh, blocks, bw)
        found = [(r, c) for r, c in itertools.product(range(blocks), repeat=2)
                 if (view[r, :, c, :] == 0.9).all()]
        assert found and max(abs(r) + abs(c) for r, c in found) == 1   # a neighbour of (0, 0)


@pytest.mark.parametrize("grid", [2, 4, 8])
def test_the_transport_plan_is_a_partial_permutation_that_fills_every_shown_block(grid):
    g = torch.Generator().manual_seed(grid)
    batch = 32
    keep = torch.rand(batch, grid, grid, generator=g) < 0.5
    saliency = torch.rand(batch, grid, grid, generator=g) ** 3
    saliency = saliency / saliency.sum(dim=(1, 2), keepdim=True)
    source = pm.transport_plan(keep, saliency, 0.8)
    assert source.shape == (batch, grid * grid)
    for k in range(batch):
        used = source[k][source[k] >= 0]
        assert len(used.unique()) == len(used)                       # each block at most once
        assert (source[k][keep[k].flatten()] >= 0).all()             # shown blocks all filled
    identity = pm.transport_plan(torch.ones(batch, grid, grid, dtype=torch.bool), saliency, 0.8)
    assert (identity == torch.arange(grid * grid)).all()  # nothing to uncover: nothing moves
    images = torch.rand(batch, 2, 8 * grid, 8 * grid, generator=g)
    moved = pm.move_blocks(images, source, (grid, grid))
    k, target = 0, int(torch.nonzero(source[0] >= 0)[0])
    s, b = int(source[k, target]), 8
    torch.testing.assert_close(
        moved[k, :, (target // grid) * b:(target // grid + 1) * b, (target % grid) * b:(target % grid + 1) * b],
        images[k, :, (s // grid) * b:(s // grid + 1) * b, (s % grid) * b:(s % grid + 1) * b])


def test_boundary_differences_match_a_direct_computation():
    g = torch.Generator().manual_seed(1)
    own, partner = torch.rand(2, 3, 16, 24, generator=g), torch.rand(2, 3, 16, 24, generator=g)
    blocks, size = 4, 2                       # blocks of 4 × 6 pixels, neighbourhoods of 2 × 2
    vertical, horizontal = pm.boundary_differences(own, partner, blocks, neigh_size=size)
    sources = (partner, own)
    bh, bw = 4, 6
    for a, b in itertools.product(range(2), repeat=2):
        for r in range(blocks - 1):
            for c in range(blocks):
                y = (r + 1) * bh
                diffs = [(sources[a][:, :, y - size:y, x:x + size].mean(dim=(2, 3)) -
                          sources[b][:, :, y:y + size, x:x + size].mean(dim=(2, 3))).abs().mean(1)
                         for x in range(c * bw, (c + 1) * bw, size)]
                torch.testing.assert_close(vertical[:, a, b, r, c], torch.stack(diffs).mean(0))
        for r in range(blocks):
            for c in range(blocks - 1):
                x = (c + 1) * bw
                diffs = [(sources[a][:, :, y:y + size, x - size:x].mean(dim=(2, 3)) -
                          sources[b][:, :, y:y + size, x:x + size].mean(dim=(2, 3))).abs().mean(1)
                         for y in range(r * bh, (r + 1) * bh, size)]
                torch.testing.assert_close(horizontal[:, a, b, r, c], torch.stack(diffs).mean(0))


def test_two_label_graph_cut_finds_the_minimum_energy():
    rng = np.random.default_rng(3)
    blocks, eta = 3, 0.2
    for trial in range(5):
        cost_own, cost_partner = rng.random((blocks, blocks)), rng.random((blocks, blocks))
        edge_v = rng.random((blocks - 1, blocks)) * 0.3
        edge_h = rng.random((blocks, blocks - 1)) * 0.3
        lam = float(rng.uniform(0.1, 0.9))
        found = pm.graph_cut(cost_own, cost_partner, edge_v, edge_h, lam, n_labels=2, eta=eta)
        prior = eta * pm.label_prior(lam, 2) / blocks ** 2   # [mask 1, mask 0]

        def energy(m):
            unary = (m * cost_own + (1 - m) * cost_partner + np.where(m == 1, prior[0], prior[1]))
            return unary.sum() + (edge_v * (m[1:] != m[:-1])).sum() + \
                (edge_h * (m[:, 1:] != m[:, :-1])).sum()

        best = min(energy(np.array(bits, float).reshape(blocks, blocks))
                   for bits in itertools.product((0, 1), repeat=blocks * blocks))
        assert set(np.unique(found)) <= {0.0, 1.0}
        assert energy(found) == pytest.approx(best, abs=1e-4)


def test_the_label_prior_is_binomial_with_mean_lambda():
    for lam in (0.2, 0.5, 0.9):
        probabilities = np.exp(-pm.label_prior(lam, 3)) - pm.PRIOR_EPS
        np.testing.assert_allclose(probabilities, [lam ** 2, 2 * lam * (1 - lam), (1 - lam) ** 2],
                                   atol=1e-7)
        levels = np.array([1.0, 0.5, 0.0])
        assert (probabilities * levels).sum() == pytest.approx(lam, abs=1e-6)


def onehot(labels, classes=10):
    return torch.nn.functional.one_hot(labels, classes).float()


def test_the_mixer_forms_puzzlemix_batches_through_mix_with_one_saliency_call(monkeypatch):
    batch = 10
    g = torch.Generator().manual_seed(0)
    x, labels = torch.rand(batch, 3, H, W, generator=g), torch.arange(batch) % 10
    y = onehot(labels)
    calls = []

    def saliency_fn(images, targets):
        calls.append(images)
        return images.mean(dim=1) + 0.01

    mixer = Mixer(MixConfig(mix="puzzlemix", lam_per="sample", pairing="shuffle"))
    assert mixer.needs_data and mixer.needs_saliency
    draws = []
    real = mixer.sampler

    def spy(*args, **kwargs):
        draws.append((args, kwargs, real(*args, **kwargs)))
        return draws[-1][2]

    mixer.sampler = spy
    spy.needs_data = spy.needs_saliency = True
    x_mixed, y_mixed = mixer(x, y, np.random.default_rng(4), saliency_fn=saliency_fn)
    assert len(calls) == 1 and torch.equal(calls[0], x)
    (lam, own, partner_x, _), kwargs, draw = draws[0]
    torch.testing.assert_close(kwargs["saliency"], x.mean(dim=1) + 0.01)
    assert lam.shape == (batch,) and torch.equal(own, x)
    expected_x, expected_y = mix(draw.x, y, draw.mask, _partner_of(x, partner_x),
                                 partner_x=draw.partner_x)
    torch.testing.assert_close(x_mixed, expected_x)
    torch.testing.assert_close(y_mixed, expected_y)
    again = Mixer(MixConfig(mix="puzzlemix", lam_per="sample", pairing="shuffle"))(
        x, y, np.random.default_rng(4), saliency_fn=saliency_fn)
    assert torch.equal(again[0], x_mixed) and torch.equal(again[1], y_mixed)


def _partner_of(x, partner_x):
    """The partner indices: which image of the batch each partner image is."""
    flat, other = x.flatten(1), partner_x.flatten(1)
    return torch.cdist(other, flat).argmin(dim=1)


def test_unmixed_samples_stay_untouched_and_unmixed_batches_cost_no_saliency_pass():
    batch = 16
    x, y = torch.rand(batch, 1, H, W), onehot(torch.arange(batch) % 10)
    calls = []

    def saliency_fn(images, targets):
        calls.append(1)
        return images.mean(dim=1) + 0.01

    half = Mixer(MixConfig(mix="puzzlemix", lam_per="sample", mix_prob=0.5))
    x_mixed, y_mixed = half(x, y, np.random.default_rng(1), saliency_fn=saliency_fn)
    rng = np.random.default_rng(1)
    rng.beta(1, 1, batch)
    applied = torch.from_numpy(rng.random(batch) < 0.5)
    assert 0 < applied.sum() < batch
    assert torch.equal(x_mixed[~applied], x[~applied]) and torch.equal(y_mixed[~applied], y[~applied])
    assert not torch.equal(x_mixed[applied], x[applied])
    never = Mixer(MixConfig(mix="puzzlemix", mix_prob=0.0))
    assert never(x, y, np.random.default_rng(1), saliency_fn=saliency_fn)[0] is x
    assert len(calls) == 1
    with pytest.raises(TypeError, match="saliency"):
        Mixer(MixConfig(mix="puzzlemix"))(x, y, np.random.default_rng(1))


def test_the_plain_sampler_contract_refuses_puzzlemix_with_a_pointer():
    sampler = make_sampler("puzzlemix")
    with pytest.raises(TypeError, match="kernel_on_batches"):
        sampler(torch.tensor([0.5]), 8, 8, np.random.default_rng(0), "cpu")
    with pytest.raises(TypeError, match="kernel_on_batches"):
        mask_kernel(sampler, 8)
    with pytest.raises(TypeError, match="Mixer"):
        Mixer(MixConfig(mix="puzzlemix")).draw(4, 8, 8, np.random.default_rng(0), "cpu")
    with pytest.raises(UsageError, match="no such n divides"):
        sampler(torch.tensor([0.5]), torch.rand(2, 1, 9, 9), torch.rand(2, 1, 9, 9),
                np.random.default_rng(0), saliency=torch.rand(2, 9, 9),
                partner_saliency=torch.rand(2, 9, 9))
    for bad in (dict(puzzle_beta=-1.0), dict(puzzle_eta=math.nan), dict(puzzle_gamma=-0.1)):
        with pytest.raises(ConfigError, match="^puzzle_(beta|eta|gamma) must be"):
            MixConfig(mix="puzzlemix", options=bad).validate()


class TinyNet(torch.nn.Module):
    def __init__(self, channels=1, classes=10):
        super().__init__()
        self.register_buffer("std", torch.full((1, channels, 1, 1), 0.5))
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, classes)

    def forward(self, x):
        h = torch.relu(self.norm(self.conv(x / self.std)))
        return self.head(h.mean(dim=(2, 3)))


def test_input_saliency_is_the_gradient_norm_in_eval_mode_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = TinyNet()
    model.train()
    x, labels = torch.rand(6, 1, 8, 8), torch.arange(6) % 10
    running = model.norm.running_mean.clone()
    saliency = pm.input_saliency(model, x, labels)
    assert model.training and torch.equal(model.norm.running_mean, running)
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    inputs = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(inputs), labels).backward()
    expected = (inputs.grad * 0.5).abs().squeeze(1)   # one channel: the norm is |g · std|
    torch.testing.assert_close(saliency, expected)
    torch.testing.assert_close(pm.input_saliency(model, x, onehot(labels)), saliency)


def test_kernel_on_batches_agrees_with_mask_kernel_for_a_data_free_sampler():
    class BatchCutMix:  # CutMix dressed as a data-dependent sampler
        needs_data, needs_saliency = True, False

        def __call__(self, lam, x, partner_x, rng, *, saliency=None, partner_saliency=None):
            return MaskDraw(cutmix_mask(lam, x.shape[2], x.shape[3], rng, x.device), x, partner_x)

    images, labels = torch.randint(0, 256, (200, 1, 12, 12), dtype=torch.uint8), \
        torch.arange(200) % 10
    on_batches = pm.kernel_on_batches(BatchCutMix(), None, images, labels, draws=6000,
                                      batch_size=50, seed=1)
    reference = mask_kernel(cutmix_mask, 12, draws=20000, seed=2)
    assert on_batches.shape == (12,)
    np.testing.assert_allclose(on_batches, reference, atol=0.012)   # MC error ≈ 0.004


def test_puzzlemix_kernel_on_real_digits_is_a_proper_kernel():
    from robustmix.data import load_dataset

    images, labels = load_dataset("digits").tensors("train")
    torch.manual_seed(0)
    kernel = pm.kernel_on_batches(pm.PuzzleMix(), TinyNet(), images, labels, draws=256,
                                  batch_size=64, seed=0)
    assert kernel.shape == (images.shape[3],) and np.isfinite(kernel).all()
    assert 0.05 < kernel[0] < 0.95
    assert (kernel <= kernel[0] + 1e-9).all() and (kernel >= 0).all()
    assert kernel[1] > kernel[-1]   # block masks: near pixels share the hole more often


def test_pair_deltas_without_transport_are_the_papers_perturbation():
    torch.manual_seed(0)
    model, batch = TinyNet(), 6
    x_i, x_j = torch.rand(batch, 1, H, W), torch.rand(batch, 1, H, W)
    y_i, y_j = torch.arange(batch) % 10, (torch.arange(batch) + 3) % 10
    lam = torch.full((batch,), 0.4)
    sampler = pm.PuzzleMix(transport=False)
    delta = pm.pair_deltas(sampler, model, x_i, y_i, x_j, y_j, lam, np.random.default_rng(2))
    saliency = pm.input_saliency(model, torch.cat([x_i, x_j]), torch.cat([y_i, y_j]))
    draw = sampler(lam, x_i, x_j, np.random.default_rng(2), saliency=saliency[:batch],
                   partner_saliency=saliency[batch:])
    torch.testing.assert_close(delta, (1 - draw.mask) * (x_j - x_i))
    moved = pm.pair_deltas(pm.PuzzleMix(), model, x_i, y_i, x_j, y_j, lam,
                           np.random.default_rng(2))
    assert moved.shape == delta.shape and torch.isfinite(moved).all()


@pytest.fixture(scope="module")
def puzzlemix_run(tmp_path_factory):
    from robustmix.core.config import TrainConfig
    from robustmix.training.trainer import train

    config = TrainConfig(epochs=2, batch_size=64, seed=0, log_interval=5,
                         mix=MixConfig(mix="puzzlemix"))
    out = tmp_path_factory.mktemp("runs") / "puzzlemix"
    return config, out, train(config, out, progress=False)


@pytest.mark.slow
def test_short_digits_training_with_puzzlemix_beats_chance_by_a_wide_margin(puzzlemix_run):
    config, out, result = puzzlemix_run
    assert result.test_acc > 0.6  # chance is 0.1
    saved = runs.read_json(out / runs.CONFIG)["train"]["mix"]
    assert saved["mix"] == "puzzlemix" and saved["options"]["puzzle_beta"] == 1.2


@pytest.mark.slow
def test_a_killed_puzzlemix_run_resumes_to_the_same_weights(puzzlemix_run, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from robustmix import data as data_module
    from robustmix.training import trainer as train_module
    from robustmix.training.trainer import train

    config, reference, _ = puzzlemix_run
    killed = tmp_path / "killed"
    monkeypatch.setattr(train_module, "load_dataset",  # as the loop looks it up
                        interrupted_at(data_module.load_dataset))
    with pytest.raises(KeyboardInterrupt):
        train(config, killed, progress=False)
    monkeypatch.undo()
    assert train(config, killed, resume=True, progress=False).resumed_from == 1
    a, b = load_file(str(reference / runs.WEIGHTS)), load_file(str(killed / runs.WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_image_size_without_whole_blocks_is_refused_before_anything_is_written(tmp_path):
    from robustmix.core.config import TrainConfig
    from robustmix.training.trainer import train

    config = TrainConfig(epochs=1, image_size=9, mix=MixConfig(mix="puzzlemix"))
    with pytest.raises(UsageError, match="no such n divides 9x9"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / runs.CONFIG).exists()
