"""PuzzleMix (Kim, Choo, Song, ICML 2020) as a mask sampler that looks at the batch.

For a pair (x_i, x_j) with saliency maps s_i, s_j (the norm over channels of the input
gradient of the loss on the clean batch) and λ, PuzzleMix

1. splits the image into n × n blocks, n drawn once per batch from {2, 4, 8, 16};
2. chooses a mask level m_b ∈ {0, 1/(L−1), …, 1} for every block b (L = ``n_labels``,
   3 by default: m ∈ {0, ½, 1}) by a graph cut that minimizes

       Σ_b [ m_b ŝ_j(b) + (1 − m_b) ŝ_i(b) ]                      saliency thrown away
     + η/n² Σ_b −log Binom(l_b; L−1, 1−λ)                          label prior (mean ≈ λ)
     + Σ_{b~b'} (β′ + γβ′ d_{bb'}) (l_b − l_b')² / (L−1)²          mask and data smoothness

   with ŝ the block means of s normalized to sum 1 per image, l_b = (L−1)(1 − m_b) the
   label index, β′ = β / n / 16, and d the mean absolute pixel difference across the block
   boundary for the sources on either side (decomposed into unary and edge terms as the
   official code does);
3. optionally transports blocks: the salient blocks of x_i that the mask would cover are
   moved to uncovered positions near them (and likewise for x_j under 1 − M), by the
   official code's greedy auction on the cost ε·‖b − b'‖²/(n−1)² − ŝ(b)·[M(b') > 0].

The mixed image is x̃ = M ⊙ T_i(x_i) + (1 − M) ⊙ T_j(x_j) and the label weight is the mean of
M, so the sampler returns the mask together with the two (transported) images and
:func:`robustmix.mixing.mix` forms x̃ and ỹ from them, as for every other MSDA.

Followed from the official code (``snu-mllab/PuzzleMix``, ``mixup.py``: ``mixup_process``,
``mixup_graph``, ``graphcut_multi``, ``neigh_penalty``, ``mask_transport``,
``transport_image``; ``main.py`` for the defaults): the defaults β = 1.2, γ = 0.5, η = 0.2,
``neigh_size`` = 4, ``n_labels`` = 3, transport on, ``t_eps`` = 0.8, ``t_size`` = −1 (transport
at the graph-cut resolution); one block count per batch from 2^U{1..4}; the saliency
‖∂L/∂x‖ over channels of the mean cross-entropy on the clean batch, with the model in eval
mode (the official default ``clean_lam`` = 0) and the gradient taken with respect to the
normalized input (scaled by the model's ``std``); ŝ normalized per image; the β′ scaling,
the pairwise decomposition, the binomial prior, the (i − j)² label cost and the α-β swap of
``gco``; the transport's cost matrix, ``n`` auction rounds and plan application; the label
weight is the mean of the final mask.

Changed or simplified, on purpose:

- Images need not be square: n × n blocks of (H/n) × (W/n) pixels; n is drawn among the
  counts in {2, 4, 8, 16} that divide both sides (all four for 16, 32 and 224 pixels).
  The boundary pooling size is gcd(min(neigh_size, block sides), block sides) so that it
  tiles a block exactly (the official code silently misaligns otherwise).
- The graph cut is given int32 costs scaled by 1000·n²·(L−1)² with rounding (the official
  code truncates and mixes float and int arrays, which gco-wrapper 3.x reads as float
  energies and rescales by 10⁵, overflowing int32); edge weights are clipped at 0.
- In the transport auction a column is won only by a row that bid on it (the official
  ``(plan * cost).min(-2)`` lets a non-bidding row "win" a column whose bids all cost ≥ 0,
  which can leave a kept block empty); ``t_eps`` must be > 0 so the auction has no ties.
- Adversarial noise (``adv_p``), ``clean_lam`` > 0 and the ``in_batch`` multi-pass options
  are not implemented. λ per batch or per sample and the pairing follow ``--lam-per`` and
  ``--pairing`` of robustmix (the official code draws one λ per batch and a random
  permutation as partner).

The graph cuts run on the host in one gco call per batch: the B grids are stacked into one
graph with no edges between them, which solves the B problems independently, with the masks
of per-sample calls and faster than them (benchmarks/RESULTS.md, under this module's name).
Everything else (pooling, boundary terms, transport) is batched tensor work on the batch's
device.
The only random draw is the block count, taken from the NumPy generator passed in, so the
same seed gives the same masks on any device (the cut itself is deterministic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustmix.core import checks as guards
from robustmix.core.errors import ConfigError, UsageError
from robustmix.mixing.samplers import (DataDependentSampler, MaskDraw, _check_kernel_args,
                                       _is_int, kernel_sums, mix, sample_lam)

BLOCK_COUNTS = (2, 4, 8, 16)   # n × n blocks, n drawn per batch (official: 2 ** randint(1, 5))
PRIOR_EPS = 1e-8               # inside the prior's log, as the official code
COST_UNIT = 1000               # int32 energy units per unit cost, times n² (official large_val)
INT32_MAX = np.iinfo(np.int32).max


def block_counts(height: int, width: int) -> tuple[int, ...]:
    """The block counts n ∈ {2, 4, 8, 16} whose n × n blocks tile an H × W image exactly."""
    return tuple(n for n in BLOCK_COUNTS if height % n == 0 and width % n == 0)


def block_saliency(saliency: Tensor, grid: int | tuple[int, int]) -> Tensor:
    """Per-block mean of (B, H, W) saliency on a grid of blocks, normalized to sum 1 per image.

    An image whose saliency is zero everywhere gets zero for every block.
    """
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    height, width = saliency.shape[-2:]
    pooled = F.avg_pool2d(saliency.float().unsqueeze(1), (height // rows, width // cols))
    pooled = pooled.squeeze(1)
    return pooled / pooled.sum(dim=(1, 2), keepdim=True).clamp_min(1e-30)


def boundary_differences(own: Tensor, partner: Tensor, blocks: int,
                         neigh_size: int) -> tuple[Tensor, Tensor]:
    """The data term d of the official ``neigh_penalty`` for every block edge and source pair.

    Returns (vertical (B, 2, 2, n−1, n), horizontal (B, 2, 2, n, n−1)); index [a, b] is the
    source of the upper/left block (a) and of the lower/right one (b), 0 = partner, 1 = own.
    d is the mean over channels and along the edge of |strip above − strip below|, each
    strip the mean of a ``size`` × ``size`` neighbourhood on its side of the boundary.
    """
    batch, channels, height, width = own.shape
    block_h, block_w = height // blocks, width // blocks
    size = math.gcd(math.gcd(min(neigh_size, block_h, block_w), block_h), block_w)
    both = torch.stack([partner, own], dim=1).flatten(0, 1).float()
    pooled = F.avg_pool2d(both, size).view(batch, 2, channels, height // size, width // size)
    k_h, k_w = block_h // size, block_w // size
    upper, lower = pooled[..., k_h - 1:-1:k_h, :], pooled[..., k_h::k_h, :]
    left, right = pooled[..., k_w - 1:-1:k_w], pooled[..., k_w::k_w]
    vertical = (upper[:, :, None] - lower[:, None]).abs().mean(dim=3)
    horizontal = (left[:, :, None] - right[:, None]).abs().mean(dim=3)
    vertical = vertical.view(batch, 2, 2, blocks - 1, blocks, k_w).mean(dim=-1)
    horizontal = horizontal.view(batch, 2, 2, blocks, k_h, blocks - 1).mean(dim=-2)
    return vertical, horizontal


def cut_terms(own_saliency: Tensor, partner_saliency: Tensor, vertical: Tensor,
              horizontal: Tensor, beta: float, gamma: float) -> tuple[Tensor, ...]:
    """Unary costs of taking each block from x_i (``cost_own``) or x_j (``cost_partner``) and
    the edge weights, from the pairwise costs p_ab = βγ·d_ab as the official code splits them:
    each block takes half of p summed over its neighbour's source, the edge keeps
    (p_10 + p_01 − p_11 − p_00)/2 + β. ``beta`` is the already scaled β′ = β/n/16.
    """
    p_v, p_h = beta * gamma * vertical, beta * gamma * horizontal
    cost_own, cost_partner = partner_saliency.clone(), own_saliency.clone()
    cost_own[:, :-1, :] += (p_v[:, 1, 0] + p_v[:, 1, 1]) / 2
    cost_partner[:, :-1, :] += (p_v[:, 0, 1] + p_v[:, 0, 0]) / 2
    cost_own[:, 1:, :] += (p_v[:, 0, 1] + p_v[:, 1, 1]) / 2
    cost_partner[:, 1:, :] += (p_v[:, 1, 0] + p_v[:, 0, 0]) / 2
    cost_own[:, :, :-1] += (p_h[:, 1, 0] + p_h[:, 1, 1]) / 2
    cost_partner[:, :, :-1] += (p_h[:, 0, 1] + p_h[:, 0, 0]) / 2
    cost_own[:, :, 1:] += (p_h[:, 0, 1] + p_h[:, 1, 1]) / 2
    cost_partner[:, :, 1:] += (p_h[:, 1, 0] + p_h[:, 0, 0]) / 2
    edge_v = (p_v[:, 1, 0] + p_v[:, 0, 1] - p_v[:, 1, 1] - p_v[:, 0, 0]) / 2 + beta
    edge_h = (p_h[:, 1, 0] + p_h[:, 0, 1] - p_h[:, 1, 1] - p_h[:, 0, 0]) / 2 + beta
    return cost_own, cost_partner, edge_v, edge_h


def label_prior(lam: float, n_labels: int) -> np.ndarray:
    """−log of the binomial probability of each label: label l (mask level 1 − l/(L−1)) has
    probability C(L−1, l) λ^(L−1−l) (1−λ)^l, so the prior's mean mask is λ."""
    trials = n_labels - 1
    labels = np.arange(n_labels)
    pmf = np.array([math.comb(trials, int(l)) for l in labels]) * \
        lam ** (trials - labels) * (1.0 - lam) ** labels
    return -np.log(pmf + PRIOR_EPS)


def _int32(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), -INT32_MAX, INT32_MAX).astype(np.int32)


def graph_cuts(cost_own: np.ndarray, cost_partner: np.ndarray, edge_v: np.ndarray,
               edge_h: np.ndarray, lam: np.ndarray, *, n_labels: int, eta: float) -> np.ndarray:
    """The mask levels (B, n, n) in {0, 1/(L−1), …, 1} of B pairs, by α-β swap (gco).

    For each pair minimizes Σ_b [m_b c_own(b) + (1 − m_b) c_partner(b) + η/n² prior_λ(l_b)]
    + Σ_edges w (l_b − l_b')²/(L−1)², with l_b = (L−1)(1 − m_b) (see :func:`cut_terms`).
    The B grids are stacked into one (B·n) × n grid whose edges between grids weigh 0, so
    one call to gco solves B independent problems (the energy is a sum over the grids and a
    swap move factors over them) without a Python-level loop.
    """
    try:
        # only PuzzleMix needs it, and it may be missing: the error below says what to install
        import gco  # gco-wrapper; note: importing it sets numpy.int/float/bool if absent
    except ImportError:
        raise UsageError("puzzlemix needs the graph-cut package gco-wrapper: "
                         "pip install gco-wrapper") from None
    batch, blocks = cost_own.shape[:2]
    trials = n_labels - 1
    levels = 1.0 - np.arange(n_labels) / trials                      # label l -> mask level
    prior = np.stack([label_prior(float(v), n_labels) for v in lam]) * eta / blocks ** 2
    unary = levels * cost_own[..., None] + (1.0 - levels) * cost_partner[..., None] + \
        prior[:, None, None, :]
    unit = COST_UNIT * blocks ** 2                       # energy units, as the official code
    labels = np.arange(n_labels)
    smooth = ((labels[:, None] - labels[None, :]) ** 2).astype(np.int32)
    between = np.zeros((batch, 1, blocks))                # no edges from one grid to the next
    stacked_v = np.concatenate([np.maximum(edge_v, 0.0), between], axis=1)
    stacked_v = stacked_v.reshape(batch * blocks, blocks)[:-1]
    stacked_h = np.maximum(edge_h, 0.0).reshape(batch * blocks, blocks - 1)
    cut = gco.cut_grid_graph(_int32(unit * trials ** 2 * unary.reshape(batch * blocks, blocks,
                                                                        n_labels)),
                             smooth, _int32(unit * stacked_v), _int32(unit * stacked_h),
                             algorithm="swap")
    return levels[np.asarray(cut).reshape(batch, blocks, blocks)]


def graph_cut(cost_own: np.ndarray, cost_partner: np.ndarray, edge_v: np.ndarray,
              edge_h: np.ndarray, lam: float, *, n_labels: int, eta: float) -> np.ndarray:
    """:func:`graph_cuts` of a single pair: mask levels (n, n)."""
    return graph_cuts(cost_own[None], cost_partner[None], edge_v[None], edge_h[None],
                      np.array([lam]), n_labels=n_labels, eta=eta)[0]


def transport_plan(keep: Tensor, saliency: Tensor, eps: float) -> Tensor:
    """The official greedy transport of blocks, as the source block shown at each target.

    ``keep`` (B, R, C) says where the mask shows this image (M > 0), ``saliency`` (B, R, C)
    its normalized block saliency. Moving block s to t costs ε·‖s − t‖²/(max(R, C) − 1)²
    − ŝ(s)·keep(t). Each round every block bids for its cheapest target, each target goes to
    its cheapest bidder (the lowest index among equals), and a losing bid costs 1 more in the
    next rounds; max(R, C) rounds, the last round's winners stand. Returns (B, R·C) long:
    the source of each target in row-major block order, −1 where no block moves in. A target
    that the mask shows always gets a block; blocks that lose their last bid are dropped.
    """
    batch, rows, cols = keep.shape
    count = rows * cols
    index = torch.arange(count, device=keep.device)
    r, c = index // cols, index % cols
    distance = ((r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2).float()
    distance = distance / max(max(rows, cols) - 1, 1) ** 2
    cost = torch.baddbmm((eps * distance).expand(batch, count, count),
                         saliency.reshape(batch, count, 1).float(),
                         keep.reshape(batch, 1, count).float(), alpha=-1.0)
    sources = index.expand(batch, count)
    nobody = torch.full((batch, count), count, device=keep.device)
    target = cost.argmin(dim=-1)                                       # (B, source)
    for round_ in range(max(rows, cols)):
        if round_:  # only the blocks that lost a bid see a changed row of costs
            target[lost] = cost[lost].argmin(dim=-1)
        bid = cost.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        best = torch.full_like(bid, math.inf).scatter_reduce(1, target, bid, "amin")
        at_best = torch.where(bid == best.gather(1, target), sources, count)
        winner = nobody.scatter_reduce(1, target, at_best, "amin")     # (B, target)
        lost = winner.gather(1, target) != sources
        cost.scatter_add_(-1, target.unsqueeze(-1), lost.to(cost.dtype).unsqueeze(-1))
    return torch.where(winner < count, winner, -1)


def move_blocks(images: Tensor, source: Tensor, grid: tuple[int, int]) -> Tensor:
    """Apply a transport: target block t shows block ``source[t]`` of the same image, and
    zeros where ``source`` is −1 (no block moved in; the mask hides those)."""
    batch, channels, height, width = images.shape
    rows, cols = grid
    block_h, block_w = height // rows, width // cols
    blocks = images.reshape(batch, channels, rows, block_h, cols, block_w)
    blocks = blocks.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, rows * cols, -1)
    moved = torch.gather(blocks, 2, source.clamp_min(0).view(batch, 1, -1, 1).expand(
        -1, channels, -1, blocks.shape[-1]))
    moved = moved * (source >= 0).view(batch, 1, -1, 1).to(moved.dtype)
    moved = moved.view(batch, channels, rows, cols, block_h, block_w).permute(0, 1, 2, 4, 3, 5)
    return moved.reshape(batch, channels, height, width)


@dataclass(frozen=True)
class PuzzleMix:
    """The PuzzleMix sampler: ``(lam, x, partner_x, rng, saliency=, partner_saliency=)`` ->
    :class:`~robustmix.mixing.MaskDraw` (mask (B, 1, H, W), own images, partner images).

    ``lam`` is (B,) or (1,) (one λ for the batch); ``saliency`` and ``partner_saliency`` are
    (B, H, W) maps of ``x`` and ``partner_x`` (see :func:`input_saliency`). The mask is
    constant on each of the n × n blocks, its levels are multiples of 1/(n_labels − 1), and
    the label weight is its mean. Defaults are the official ones (see the module docstring).
    """

    beta: float = 1.2          # label (mask) smoothness
    gamma: float = 0.5         # data smoothness across block boundaries
    eta: float = 0.2           # weight of the label prior (mask mean close to λ)
    transport: bool = True     # move salient blocks out from under the other image
    neigh_size: int = 4        # side of the neighbourhood averaged at block boundaries
    n_labels: int = 3          # mask levels per block: 2 gives {0, 1}, 3 gives {0, ½, 1}
    t_eps: float = 0.8         # transport: weight of the distance a block moves
    t_size: int = -1           # transport block side in pixels; −1: the graph-cut blocks

    needs_data: ClassVar[bool] = True
    needs_saliency: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for name in ("beta", "gamma", "eta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"puzzle_{name}", f"must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.t_eps) and self.t_eps > 0):
            raise ConfigError("t_eps", f"must be > 0, got {self.t_eps}")
        if self.n_labels < 2:
            raise ConfigError("n_labels", f"must be >= 2, got {self.n_labels}")
        if self.neigh_size < 1:
            raise ConfigError("neigh_size", f"must be >= 1, got {self.neigh_size}")
        if self.t_size == 0 or self.t_size < -1:
            raise ConfigError("t_size", f"must be -1 or a block side >= 1, got {self.t_size}")

    def __call__(self, lam: Tensor, x: Tensor, partner_x: Tensor | None = None,
                 rng: np.random.Generator | None = None, *plain_args,
                 saliency: Tensor | None = None,
                 partner_saliency: Tensor | None = None) -> MaskDraw:
        if plain_args or not isinstance(x, Tensor) or x.dim() != 4:
            raise TypeError("puzzlemix masks depend on the images and their saliency, so it "
                            "cannot be called as (lam, H, W, rng, device): mix through "
                            "Mixer(...)(x, y, rng, saliency_fn=...), estimate c(p) with "
                            "robustmix.mixing.puzzlemix.kernel_on_batches")
        if partner_x is None or rng is None or saliency is None or partner_saliency is None:
            raise TypeError("puzzlemix needs the partner images, the generator and the "
                            "saliency of both images")
        counts = self.check_image_size(*x.shape[-2:])
        blocks = int(counts[rng.integers(len(counts))])
        return self.cut(lam, x, partner_x, saliency, partner_saliency, blocks)

    @staticmethod
    def check_image_size(height: int, width: int) -> tuple[int, ...]:
        """The block counts PuzzleMix may draw for H × W images; UsageError if there is none."""
        counts = block_counts(height, width)
        if not counts:
            raise UsageError(f"puzzlemix splits images into n x n blocks, n in "
                             f"{{2, 4, 8, 16}}; no such n divides {height}x{width} images "
                             "(choose --image-size, e.g. 16 or 32)")
        return counts

    def cut(self, lam: Tensor, x: Tensor, partner_x: Tensor, saliency: Tensor,
            partner_saliency: Tensor, blocks: int) -> MaskDraw:
        """The deterministic part: masks and transported images for a given block count."""
        batch, _, height, width = x.shape
        if height % blocks or width % blocks:
            raise UsageError(f"{blocks} x {blocks} blocks do not tile {height}x{width} images")
        if partner_x.shape != x.shape or saliency.shape != (batch, height, width) or \
                partner_saliency.shape != (batch, height, width):
            raise ValueError(f"puzzlemix expects partner images {tuple(x.shape)} and saliency "
                             f"maps ({batch}, {height}, {width}), got {tuple(partner_x.shape)}, "
                             f"{tuple(saliency.shape)} and {tuple(partner_saliency.shape)}")
        lam_host = np.broadcast_to(lam.detach().double().cpu().numpy().reshape(-1), (batch,))
        beta = self.beta / blocks / 16
        own_s = block_saliency(saliency, blocks)
        partner_s = block_saliency(partner_saliency, blocks)
        vertical, horizontal = boundary_differences(x, partner_x, blocks, self.neigh_size)
        terms = cut_terms(own_s, partner_s, vertical, horizontal, beta, self.gamma)
        host = [t.detach().double().cpu().numpy() for t in terms]
        levels = graph_cuts(*host, lam_host, n_labels=self.n_labels, eta=self.eta)
        mask = torch.from_numpy(levels).to(device=x.device, dtype=torch.float32)
        own, other = x, partner_x
        if self.transport:
            grid, mask_t, own_t, partner_t = self._transport_grid(mask, saliency,
                                                                  partner_saliency, own_s,
                                                                  partner_s, blocks)
            own = move_blocks(x, transport_plan(mask_t > 0, own_t, self.t_eps), grid)
            other = move_blocks(partner_x, transport_plan(mask_t < 1, partner_t, self.t_eps),
                                grid)
        mask = mask.repeat_interleave(height // blocks, dim=1).repeat_interleave(
            width // blocks, dim=2)
        return MaskDraw(mask.unsqueeze(1), own, other)

    def _transport_grid(self, mask, saliency, partner_saliency, own_s, partner_s, blocks):
        """The transport grid and, on it, the mask and both images' block saliency."""
        height, width = saliency.shape[-2:]
        block_h, block_w = height // blocks, width // blocks
        if self.t_size == -1 or self.t_size >= min(block_h, block_w):
            return (blocks, blocks), mask, own_s, partner_s
        if block_h % self.t_size or block_w % self.t_size:
            raise UsageError(f"PuzzleMix t_size {self.t_size} must divide the block sides "
                             f"{block_h}x{block_w}")
        grid = (height // self.t_size, width // self.t_size)
        fine = mask.repeat_interleave(grid[0] // blocks, dim=1).repeat_interleave(
            grid[1] // blocks, dim=2)
        return (grid, fine, block_saliency(saliency, grid),
                block_saliency(partner_saliency, grid))


def input_saliency(model: nn.Module, x: Tensor, y: Tensor, *, amp: bool = False) -> Tensor:
    """PuzzleMix's saliency (B, H, W): ‖∂L/∂x̂‖₂ over channels, L the mean cross-entropy of
    the clean batch, x̂ the normalized input the network sees.

    One extra forward and backward pass, with the model in eval mode as the official code
    (``clean_lam`` = 0; batch-norm statistics are neither used from the batch nor updated),
    and the gradient taken for the input only: no parameter's ``.grad`` changes. ``y`` is
    class indices (B,) or soft labels (B, K). The gradient for the [0, 1] input is scaled by
    the model's per-channel ``std`` when it has one, which gives the gradient for x̂.
    """
    was_training = model.training
    model.eval()
    try:
        inputs = x.detach().requires_grad_(True)
        with torch.enable_grad():
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16,
                                enabled=amp and x.device.type == "cuda"):
                logits = model(inputs)
            log_probs = F.log_softmax(logits.float(), dim=1)
            if y.dim() == 1:
                loss = F.nll_loss(log_probs, y)
            else:
                loss = -(y.to(log_probs.dtype) * log_probs).sum(dim=1).mean()
            (grad,) = torch.autograd.grad(loss, inputs)
    finally:
        model.train(was_training)
    std = getattr(model, "std", None)
    if isinstance(std, Tensor) and std.numel() in (1, grad.shape[1]):
        grad = grad * std.to(grad.device, grad.dtype).reshape(1, -1, 1, 1)
    return grad.float().square().mean(dim=1).sqrt()


def saliency_of(model: nn.Module, *, amp: bool = False) -> Callable[[Tensor, Tensor], Tensor]:
    """``saliency_fn(x, y)`` for :class:`robustmix.mixing.Mixer`: :func:`input_saliency` of ``model``."""
    def saliency_fn(x: Tensor, y: Tensor) -> Tensor:
        return input_saliency(model, x, y, amp=amp)
    return saliency_fn


def _unit(images: Tensor, device) -> Tensor:
    images = images.to(device)
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def _check_batches_args(images, labels, *, draws, alpha, batch_size, model, needs_model,
                        device) -> tuple[Tensor, Tensor]:
    """:func:`kernel_on_batches`'s arguments checked (values of ``images`` once, on the
    whole tensor, before the loop); labels against the outputs of ``model`` where it
    gives the saliency, else only for being class indices >= 0."""
    _check_kernel_args((2, 2), alpha, draws, 1)
    if not _is_int(batch_size) or batch_size < 2:
        raise ConfigError("batch_size", f"must be an int >= 2 (masks pair images within a "
                                        f"batch), got {batch_size!r}")
    # uint8 images stay uint8 (each batch is converted as it is drawn): only their shape
    # needs checking, and the training set is not copied to float here
    is_uint8 = isinstance(images, Tensor) and images.dtype == torch.uint8
    guards.images("images", images[:1] if is_uint8 else images)
    if images.shape[0] < 2:
        raise ConfigError("images", f"must hold at least 2 images to pair, got {images.shape[0]}")
    if not needs_model:
        n_classes = torch.iinfo(torch.int64).max
    else:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module (this sampler's masks follow its "
                            f"saliency), got {type(model).__name__}")
        with torch.no_grad():
            n_classes = model.eval()(_unit(images[:1], device)).shape[1]
    return images, guards.class_labels("labels", labels, images.shape[0], n_classes, "images")


def pair_deltas(sampler: PuzzleMix, model: nn.Module, x_i: Tensor, y_i: Tensor, x_j: Tensor,
                y_j: Tensor, lam: Tensor, rng: np.random.Generator) -> Tensor:
    """δ = x̃ − x_i for pairs (x_i, x_j), x̃ PuzzleMix's mix with weight λ (B,), saliency of
    ``model``. Without transport δ = (1 − M) ⊙ (x_j − x_i), the paper's perturbation; with
    transport it also holds the blocks of x_i that moved."""
    saliency = input_saliency(model, torch.cat([x_i, x_j]), torch.cat([y_i, y_j]))
    own_saliency, partner_saliency = saliency.split(x_i.shape[0])
    draw = sampler(lam, x_i, x_j, rng, saliency=own_saliency, partner_saliency=partner_saliency)
    placeholder = torch.ones(x_i.shape[0], 1, device=x_i.device)   # δ needs no labels
    mixed, _ = mix(draw.x, placeholder, draw.mask, torch.arange(x_i.shape[0], device=x_i.device),
                   partner_x=draw.partner_x, check_values=False)  # the sampler's own masks
    return mixed - x_i


def kernel_on_batches(sampler: DataDependentSampler, model: nn.Module | None, images: Tensor,
                      labels: Tensor, *,
                      alpha: float = 1.0, draws: int = 1024, batch_size: int = 64,
                      seed: int = 0, device="cpu") -> np.ndarray:
    """c(p) = E[(1 − M_u)(1 − M_{u+p})] of a data-dependent sampler, on real batches.

    The counterpart of :func:`robustmix.mixing.mask_kernel` (same offsets, same average over
    positions) for masks that depend on the images: ``draws`` masks from batches of
    ``batch_size`` training ``images`` (uint8 or [0, 1], (N, C, H, W)) with their ``labels``
    (N,), drawn without replacement from ``default_rng(seed)``, partner k ↔ B−1−k, one λ ~
    Beta(α, α) per sample, saliency from ``model`` (:func:`input_saliency`, eval mode; the
    model is unused when the sampler needs no saliency). Transport moves pixels but not the
    mask, so it does not enter c(p).
    """
    images, labels = _check_batches_args(images, labels, draws=draws, alpha=alpha,
                                         batch_size=batch_size,
                                         model=model, needs_model=sampler.needs_saliency,
                                         device=device)
    n_images = images.shape[0]
    batch_size = min(batch_size, n_images - n_images % 2)
    width = images.shape[3]
    where = getattr(images, "device", "cpu")
    rng = np.random.default_rng(seed)
    total = torch.zeros(width, dtype=torch.float64)
    done = 0
    while done < draws:
        index = torch.from_numpy(rng.choice(n_images, size=batch_size, replace=False))
        x = _unit(images[index.to(where)], device)
        y = labels[index.to(labels.device)].to(device)
        partner = torch.arange(batch_size - 1, -1, -1, device=device)
        lam = torch.from_numpy(sample_lam(rng, alpha, batch_size)).float()
        saliency = input_saliency(model, x, y) if sampler.needs_saliency else None
        draw = sampler(lam, x, x[partner], rng, saliency=saliency,
                       partner_saliency=None if saliency is None else saliency[partner])
        take = min(batch_size, draws - done)
        total += kernel_sums((1.0 - draw.mask[:take]).double().squeeze(1))
        done += take
    return (total / draws).numpy()
