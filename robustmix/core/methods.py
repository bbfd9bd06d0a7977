"""The MSDA registry: every method's name, plot colour and what its masks need.

One table that configuration, command line, study, samplers and plots all read, so a new
method is added in one place (its sampler then in :func:`robustmix.mixing.make_sampler`,
which a test holds to this table). Plain Python, no torch: the command line imports it
to answer ``--help`` at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One mixed-sample data augmentation as the rest of the project sees it."""

    name: str
    colour: str            # its colour in every figure
    summary: str           # what its mask is, in a few words
    data_dependent: bool = False   # masks drawn from the images (and saliency): PuzzleMix


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("vanilla", "#404040", "no mixing (the all-ones mask)"),
    Method("mixup", "#1f77b4", "the constant mask λ"),
    Method("cutmix", "#d62728", "one box of area 1 − λ from the partner"),
    Method("stochastic", "#9467bd", "CutMix or Mixup, chosen at random per mask"),
    Method("hmix", "#2ca02c", "a box of area r(1 − λ) on a Mixup of the rest"),
    Method("gmix", "#ff7f0e", "a Gaussian bump centred at a random pixel"),
    # appended last: the draw order and file indices of the others stay as they were
    Method("puzzlemix", "#8c564b", "graph-cut blocks chosen by saliency, then transported",
           data_dependent=True),
)}
MIX_NAMES = tuple(METHODS)
DATA_FREE_MIX_NAMES = tuple(name for name, m in METHODS.items() if not m.data_dependent)
OTHER_COLOUR = "#17becf"   # a group whose method is not in the table


def colour(name: str) -> str:
    """The plot colour of a method (one shared colour for names not in the table)."""
    return METHODS[name].colour if name in METHODS else OTHER_COLOUR
