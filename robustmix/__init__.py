"""robustmix: adversarial robustness and generalization of mixed-sample data augmentation.

Heavy parts (torch, the models) load on first use, so ``robustmix --help`` stays quick.
"""

from robustmix.core.methods import register_method  # plain Python: no torch on import

__version__ = "0.1.0"
__all__ = ["load_model", "register_method", "wrap_model", "__version__"]


def load_model(path):
    """Load a trained model from a run directory or weights file (see
    :func:`robustmix.models.weights.load_model`)."""
    # on first use: importing the package (as the CLI does) must not load torch
    from robustmix.models.weights import load_model as _load_model

    return _load_model(path)


def wrap_model(model, mean, std):
    """An outside model with its input normalization inside, taking images in [0, 1] (see
    :func:`robustmix.models.external.wrap_model`)."""
    from robustmix.models.external import wrap_model as _wrap_model

    return _wrap_model(model, mean, std)
