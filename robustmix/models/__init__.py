"""Model registry: architecture names, the normalizing `Classifier` wrapper, `build_model`.

Every model takes float images in [0, 1] of shape (N, C, H, W), any H, W >= 8, and
returns logits of shape (N, num_classes); per-channel normalization lives inside the
model (``Classifier``), never in the data pipeline.

Architectures (see each module for its reference):

- ``smallcnn``: the fast default (``smallcnn.py``); ``smallcnn-W`` with first width W
  (``smallcnn-16``: a quarter of the arithmetic, the default study's).
- ``preactresnet18``, ``preactresnet34``, ``preactresnet50`` (``preactresnet.py``).
- ``wrnDEPTH-WIDTH``, e.g. ``wrn28-10``: Wide ResNet, (DEPTH-4) % 6 == 0 (``wideresnet.py``).
- ``resnetN`` with N = 6n+2, e.g. ``resnet56``: CIFAR ResNet (``resnet_cifar.py``).
- ``resnet50``: torchvision's ImageNet ResNet-50, randomly initialized (never downloaded).
  This name takes precedence over the CIFAR ResNet with N = 50.
- ``timm:NAME``: any timm model, randomly initialized (timm is an optional extra).

An architecture of one's own is a plug-in (:mod:`robustmix.core.plugins`), given as
``package.module:factory`` or as the name of an entry point in the group
``robustmix.architectures``. Its factory is called as ``factory(num_classes=K,
in_channels=C)`` and returns a ``torch.nn.Module`` that maps (N, C, H, W) inputs, already
normalized, to (N, K) logits for the data set's image size (robustmix wraps it in
:class:`Classifier`). The path is what a run records, so a later command (attack, evaluate,
report) rebuilds the model by importing the same module; the weights file itself is
still only read as tensors (safetensors), never run. ``examples/tiny_arch.py`` is one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import nn

from robustmix.core import extras, plugins
from robustmix.core.errors import ConfigError, UsageError
from robustmix.models.preactresnet import preactresnet
from robustmix.models.resnet_cifar import ResNetCifar
from robustmix.models.smallcnn import SmallCNN
from robustmix.models.wideresnet import WideResNet

__all__ = ["ARCH_NAMES", "Classifier", "build_model", "check_arch"]

ARCH_NAMES: tuple[str, ...] = (
    "smallcnn",
    "preactresnet18",
    "preactresnet34",
    "preactresnet50",
    "wrn28-2",
    "resnet56",
    "resnet50",
)

TIMM_PREFIX = "timm:"  # timm:NAME, any timm model (pip install timm), built without weights
_FIXED_NAMES = ("smallcnn", "preactresnet18", "preactresnet34", "preactresnet50", "resnet50")
_WRN = re.compile(r"wrn-?(\d+)-(\d+)")
_SMALLCNN = re.compile(r"smallcnn-(\d+)")
_RESNET = re.compile(r"resnet(\d+)")
_NAMES = (
    "smallcnn, smallcnn-W (its first width, e.g. smallcnn-16), preactresnet18, "
    "preactresnet34, preactresnet50, "
    "wrnDEPTH-WIDTH (e.g. wrn28-2), resnetN for CIFAR with N = 6n+2 (e.g. resnet56), resnet50, "
    "timm:NAME"
)
_VALID = "valid: " + _NAMES + ", package.module:factory"


def check_arch(name: str) -> str:
    """Return the canonical name of architecture ``name`` (case-insensitive), or raise UsageError.

    A plug-in's path or entry point (see the module docstring) is imported and its factory
    checked here; its text is its canonical name.

    ``WRN28-10`` and ``wrn-28-10`` become ``wrn28-10``; WRN needs (depth-4) % 6 == 0 with
    depth >= 10 and width >= 1; a CIFAR ResNet needs N = 6n+2 with n >= 1.
    """
    if isinstance(name, str) and name.strip().startswith(TIMM_PREFIX):
        model = name.strip()[len(TIMM_PREFIX):]
        if not model:
            raise UsageError(f"invalid arch {name!r}: timm:NAME needs a timm model name "
                             "(e.g. timm:resnet18)")
        return TIMM_PREFIX + model   # the name itself is checked when timm builds it
    key = name.strip().lower() if isinstance(name, str) else ""
    if key in _FIXED_NAMES:
        return key
    match = _SMALLCNN.fullmatch(key)
    if match:
        width = int(match.group(1))
        if width < 1:
            raise UsageError(f"invalid arch {name!r}: smallcnn's width must be >= 1; {_VALID}")
        return "smallcnn" if width == 32 else f"smallcnn-{width}"
    match = _WRN.fullmatch(key)
    if match:
        depth, width = int(match.group(1)), int(match.group(2))
        if (depth - 4) % 6 != 0 or depth < 10:
            raise UsageError(
                f"invalid arch {name!r}: WRN depth must be 6n+4 with n >= 1, "
                f"i.e. (depth-4) % 6 == 0 and depth >= 10 (e.g. wrn16-4, wrn28-10); {_VALID}"
            )
        if width < 1:
            raise UsageError(f"invalid arch {name!r}: WRN width must be >= 1 (e.g. wrn28-2); {_VALID}")
        return f"wrn{depth}-{width}"
    match = _RESNET.fullmatch(key)
    if match:
        depth = int(match.group(1))
        if (depth - 2) % 6 != 0 or depth < 8:
            raise UsageError(
                f"invalid arch {name!r}: a CIFAR ResNet depth N must be 6n+2 with n >= 1 "
                f"(e.g. resnet20, resnet56, resnet110); {_VALID}"
            )
        return f"resnet{depth}"
    text = name.strip() if isinstance(name, str) else name
    plugins.resolve(plugins.ARCHITECTURE, text, _PLUGINS, _adopt, valid=_NAMES)
    return text


_PLUGINS: dict[str, object] = {}   # the plug-ins' factories found so far, by their text


def _adopt(factory: object, text: str) -> object:
    """A plug-in architecture's factory, checked against its contract and kept."""
    if not callable(factory):
        raise plugins.PluginError(f"is a {type(factory).__name__}, not a factory (a "
                                  "callable (num_classes, in_channels) -> torch.nn.Module)")
    if not plugins.takes(factory, num_classes=10, in_channels=3):
        raise plugins.PluginError("its factory must take the keywords num_classes and "
                                  "in_channels")
    _PLUGINS[text] = factory
    return factory


def _plugin(name: str, *, num_classes: int, in_channels: int) -> nn.Module:
    """The network a plug-in's factory builds (checked by :func:`check_arch` first)."""
    net = plugins.call(plugins.ARCHITECTURE, name, _PLUGINS[name], num_classes=num_classes,
                       in_channels=in_channels)
    if not isinstance(net, nn.Module):
        raise plugins.failure(plugins.ARCHITECTURE, name, f"its factory returned a "
                              f"{type(net).__name__}, not a torch.nn.Module")
    if not any(isinstance(m, nn.Conv2d) for m in net.modules()):
        raise plugins.failure(plugins.ARCHITECTURE, name, "its network has no "
                              "torch.nn.Conv2d (the first one is the stem that the "
                              "first-layer analyses read)")
    return net


class Classifier(nn.Module):
    """A network with its input normalization: ``forward(x) = net((x - mean) / std)``.

    ``x`` holds floats in [0, 1] of shape (N, C, H, W); the result is logits (N, num_classes).
    ``mean`` and ``std`` are persistent buffers of shape (1, C, 1, 1), so they are saved in
    ``state_dict`` with the weights. ``net`` is the raw network; ``first_layer`` is its stem
    conv, the first layer applied to the (normalized) input.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        arch: str,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.net = net
        self.arch = arch
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def first_layer(self) -> nn.Conv2d:
        """The stem conv of ``net``: every zoo architecture names it ``conv1``; for a timm
        model, its first ``Conv2d`` in module order (a ResNet's stem, a ViT's patch embedding)."""
        conv = getattr(self.net, "conv1", None)
        if not isinstance(conv, nn.Conv2d):
            conv = next(m for m in self.net.modules() if isinstance(m, nn.Conv2d))
        return conv

    @property
    def config(self) -> dict[str, object]:
        """Keyword arguments that make ``build_model(**config)`` rebuild this architecture."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, num_classes={self.num_classes}, in_channels={self.in_channels}"


def _resnet50(*, num_classes: int, in_channels: int) -> nn.Module:
    """torchvision's ResNet-50 (random init); its 7x7 stem conv is replaced for C != 3."""
    import torchvision  # about 1 s to import; only resnet50 needs it

    net = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net


def _timm(name: str, *, num_classes: int, in_channels: int) -> nn.Module:
    """A timm model by name, randomly initialized: timm never downloads weights here."""
    # here, not at the top: optional, and a second or two to import
    timm = extras.require("timm", "timm", needed_by=f"arch timm:{name}")
    if not timm.is_model(name):
        raise UsageError(f"unknown timm model {name!r} (timm.list_models() lists them)")
    return timm.create_model(name, pretrained=False, num_classes=num_classes,
                             in_chans=in_channels)


def _check_stats(label: str, values: Sequence[float], in_channels: int) -> list[float]:
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(label, f"must be a sequence of {in_channels} numbers, got {values!r}") from None
    if len(floats) != in_channels:
        raise ConfigError(label, f"has {len(floats)} values but the input has {in_channels} channels")
    if not all(math.isfinite(v) for v in floats):
        raise ConfigError(label, f"must be finite, got {floats}")
    return floats


def build_model(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Classifier:
    """Build architecture ``arch`` (see ``check_arch``), wrapped with its normalization.

    Raises UsageError for an unknown arch, num_classes or in_channels < 1, or mean/std that
    do not have one finite value per channel (std > 0).
    """
    name = check_arch(arch)
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(label, f"must be a positive integer, got {value!r}")
    mean_values = _check_stats("mean", mean, in_channels)
    std_values = _check_stats("std", std, in_channels)
    if any(v <= 0 for v in std_values):
        raise ConfigError("std", f"must be positive in every channel, got {std_values}")

    sizes = {"num_classes": num_classes, "in_channels": in_channels}
    net: nn.Module
    if name in _PLUGINS:
        net = _plugin(name, **sizes)
    elif name.startswith(TIMM_PREFIX):
        net = _timm(name[len(TIMM_PREFIX):], **sizes)
    elif name.startswith("smallcnn"):
        net = SmallCNN(**sizes, width=32 if name == "smallcnn" else
                       int(name.removeprefix("smallcnn-")))
    elif name.startswith("preactresnet"):
        net = preactresnet(int(name.removeprefix("preactresnet")), **sizes)
    elif name == "resnet50":
        net = _resnet50(**sizes)
    elif name.startswith("wrn"):
        depth, width = name.removeprefix("wrn").split("-")
        net = WideResNet(int(depth), int(width), **sizes)
    else:
        net = ResNetCifar(int(name.removeprefix("resnet")), **sizes)
    return Classifier(net, arch=name, mean=mean_values, std=std_values, **sizes)
