"""Mixed-sample data augmentation: the MSDAs as mask samplers and the one mixing function.

Inside the package the imports run one way: :mod:`~robustmix.mixing.samplers` (the
data-free samplers, ``mix``, ``mask_kernel``) <- :mod:`~robustmix.mixing.puzzlemix` <-
:mod:`~robustmix.mixing.registry` (``make_sampler``: the registry's factories loaded and
called) <- :mod:`~robustmix.mixing.mixer` (the ``Mixer``). This module gathers the public
names, so ``robustmix.mixing.make_sampler/mask_kernel/mix/Mixer/MixConfig`` are where
docs/api.md says.
"""

from robustmix.core.config import DATA_FREE_MIX_NAMES, LAM_PER, MIX_NAMES, PAIRINGS, MixConfig
from robustmix.mixing.mixer import Mixer, SaliencyFn
from robustmix.mixing.puzzlemix import PuzzleMix, kernel_on_batches
from robustmix.mixing.registry import make_sampler, sampler_of
from robustmix.mixing.samplers import (DataDependentSampler, MaskDraw, MaskSampler, cutmix_mask,
                                       gmix_mask, hmix_mask, is_data_dependent, kernel_sums,
                                       mask_kernel, mix, mixup_mask, sample_lam,
                                       stochastic_mask, vanilla_mask)

__all__ = ["DATA_FREE_MIX_NAMES", "LAM_PER", "MIX_NAMES", "PAIRINGS", "DataDependentSampler",
           "MaskDraw", "MaskSampler", "MixConfig", "Mixer", "PuzzleMix", "SaliencyFn",
           "cutmix_mask", "gmix_mask", "hmix_mask", "is_data_dependent", "kernel_on_batches",
           "kernel_sums", "make_sampler", "mask_kernel", "mix", "mixup_mask", "sample_lam",
           "sampler_of",
           "stochastic_mask", "vanilla_mask"]
