"""Tests for robustmix.models: shapes, normalization inside, first layer, errors, state, sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustmix.core.errors import UsageError
from robustmix.models import ARCH_NAMES, Classifier, build_model, check_arch

MEAN3, STD3 = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _build(arch: str, channels: int = 3, classes: int = 7) -> Classifier:
    mean, std = (MEAN3, STD3) if channels == 3 else ((0.3,) * channels, (0.2,) * channels)
    return build_model(arch, num_classes=classes, in_channels=channels, mean=mean, std=std)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("arch", [*ARCH_NAMES, "wrn10-1", "resnet20"])
def test_logits_shape(arch: str) -> None:
    size = 32 if arch == "resnet50" else 16
    model = _build(arch).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ["smallcnn", "resnet20", "preactresnet18", "wrn10-1"])
@pytest.mark.parametrize("shape", [(1, 16, 24), (1, 8, 8), (3, 24, 16)])
def test_non_square_and_one_channel(arch: str, shape: tuple[int, int, int]) -> None:
    channels = shape[0]
    model = _build(arch, channels=channels, classes=5).eval()
    assert model.first_layer.in_channels == channels
    with torch.no_grad():
        assert model(torch.rand(3, *shape)).shape == (3, 5)


def test_resnet50_one_channel_replaces_stem() -> None:
    model = _build("resnet50", channels=1, classes=4).eval()
    assert model.first_layer is model.net.conv1
    assert model.first_layer.weight.shape == (64, 1, 7, 7)
    with torch.no_grad():
        assert model(torch.rand(1, 1, 32, 32)).shape == (1, 4)


@pytest.mark.parametrize("arch", ["smallcnn", "preactresnet18", "wrn10-1", "resnet20"])
def test_normalization_lives_inside(arch: str) -> None:
    model = _build(arch).eval()
    x = torch.rand(2, 3, 16, 16)
    mean = torch.tensor(MEAN3).view(1, 3, 1, 1)
    std = torch.tensor(STD3).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.net((x - mean) / std)
        assert torch.allclose(model(x), expected, atol=1e-6)
        # The normalization matters: the raw net on unnormalized input differs.
        assert not torch.allclose(model.net(x), expected, atol=1e-3)
    assert model.mean.shape == model.std.shape == (1, 3, 1, 1)


@pytest.mark.parametrize("arch", [*ARCH_NAMES, "wrn10-1", "resnet20"])
def test_first_layer_is_the_first_conv_and_sees_normalized_input(arch: str) -> None:
    size = 32 if arch == "resnet50" else 16
    model = _build(arch).eval()
    first = model.first_layer
    assert isinstance(first, nn.Conv2d) and first.in_channels == 3
    calls: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: calls.append((mod, inp[0])))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert calls[0][0] is first
    assert torch.allclose(calls[0][1], (x - model.mean) / model.std)


def test_first_layer_weight_drives_output() -> None:
    model = _build("smallcnn").eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        model.first_layer.weight.zero_()
        after = model(x)
        # With a zero stem, the output no longer depends on the input.
        assert not torch.allclose(before, after)
        assert torch.allclose(model(torch.rand(2, 3, 16, 16)), after)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("smallcnn", "smallcnn"),
        ("SmallCNN", "smallcnn"),
        ("WRN28-10", "wrn28-10"),
        ("wrn-16-4", "wrn16-4"),
        ("resnet110", "resnet110"),
        ("resnet50", "resnet50"),
        ("preactresnet50", "preactresnet50"),
    ],
)
def test_check_arch_canonical(name: str, canonical: str) -> None:
    assert check_arch(name) == canonical


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("vgg16", "unknown arch 'vgg16'"),
        ("resnet18", "6n+2"),
        ("resnet57", "6n+2"),
        ("resnet2", "6n+2"),
        ("wrn27-2", "(depth-4) % 6 == 0"),
        ("wrn4-2", "depth >= 10"),
        ("wrn28-0", "width must be >= 1"),
        ("wrn28", "unknown arch"),
        ("", "unknown arch"),
    ],
)
def test_check_arch_errors(name: str, rule: str) -> None:
    with pytest.raises(UsageError) as info:
        check_arch(name)
    message = str(info.value)
    assert rule in message
    assert "\n" not in message
    for valid in ("smallcnn", "preactresnet18", "preactresnet34", "preactresnet50", "wrn28-2", "resnet56", "resnet50"):
        assert valid in message


def test_build_model_rejects_bad_stats_and_sizes() -> None:
    with pytest.raises(UsageError, match="3 channels"):
        build_model("smallcnn", num_classes=10, in_channels=3, mean=[0.5], std=[0.2, 0.2, 0.2])
    with pytest.raises(UsageError, match="std has 2 values"):
        build_model("smallcnn", num_classes=10, in_channels=3, mean=MEAN3, std=[0.2, 0.2])
    with pytest.raises(UsageError, match="positive"):
        build_model("smallcnn", num_classes=10, in_channels=1, mean=[0.5], std=[0.0])
    with pytest.raises(UsageError, match="num_classes"):
        build_model("smallcnn", num_classes=0, in_channels=1, mean=[0.5], std=[0.2])
    with pytest.raises(UsageError, match="unknown arch"):
        build_model("nope", num_classes=10, in_channels=1, mean=[0.5], std=[0.2])


@pytest.mark.parametrize("arch", ["smallcnn", "resnet20", "wrn10-1", "preactresnet18"])
def test_state_dict_round_trip(arch: str) -> None:
    model = _build(arch)
    # One training step so BN running stats differ from a fresh model's.
    model.train()(torch.rand(4, 3, 16, 16)).sum().backward()
    model.eval()
    state = model.state_dict()
    assert torch.equal(state["mean"], torch.tensor(MEAN3).view(1, 3, 1, 1))
    assert torch.equal(state["std"], torch.tensor(STD3).view(1, 3, 1, 1))

    torch.manual_seed(123)
    rebuilt = build_model(**{**model.config, "mean": (0.0,) * 3, "std": (1.0,) * 3})
    rebuilt.load_state_dict(state, strict=True)
    rebuilt.eval()
    assert rebuilt.config == model.config
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
        assert torch.equal(model(x), model(x))  # deterministic in eval mode


def test_train_mode_is_deterministic() -> None:
    x = torch.rand(4, 1, 16, 16)
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append(_build("smallcnn", channels=1).train()(x))
    assert torch.equal(outs[0], outs[1])


def test_channels_last() -> None:
    model = _build("resnet20").eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert model.first_layer.weight.is_contiguous(memory_format=torch.channels_last)
    # NHWC and NCHW run different conv kernels, which order their float32 sums differently.
    # A conv output sums k = 9*C <= 576 products: reordering moves it by ~u*sqrt(k) ~ 1.4e-6
    # of its scale (u = 2^-24), and 19 convs plus the linear layer add such errors in turn
    # (~sqrt(20) of it, ~6e-6); between two computations ~9e-6 of the logits' scale (~2.6
    # here, ~2.3e-5). atol + rtol*|expected| = 1e-5 + 1e-5*|logit| covers it; we saw 9e-7.
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "classes", "expected"),
    [
        ("preactresnet18", 10, 11_171_146),  # kuangliu/pytorch-cifar PreActResNet18
        ("preactresnet18", 100, 11_217_316),
        ("wrn28-10", 10, 36_479_194),  # WRN-28-10: 36.5M
        ("wrn28-10", 100, 36_536_884),
        ("resnet50", 1000, 25_557_032),  # torchvision resnet50
    ],
)
def test_param_counts(arch: str, classes: int, expected: int) -> None:
    with torch.device("meta"):  # no memory, no init cost
        model = _build(arch, classes=classes)
    # Exact figures of the reference implementations (so also within the usual 2%).
    assert _n_params(model) == expected


def test_cifar_resnet_param_counts_close_to_paper() -> None:
    # He et al. 2016, Table 6 (option A): ResNet-20 0.27M, ResNet-56 0.85M, ResNet-110 1.7M.
    # Option B's 1x1 projections add a few thousand parameters.
    with torch.device("meta"):
        counts = {d: _n_params(_build(f"resnet{d}", classes=10)) for d in (20, 56, 110)}
    for depth, paper in ((20, 0.27e6), (56, 0.85e6), (110, 1.7e6)):
        assert abs(counts[depth] - paper) <= 0.03 * paper


def test_smallcnn_widths_are_one_family() -> None:
    """smallcnn-W is smallcnn with first width W (smallcnn-32 is smallcnn itself): the
    same layers, a quarter of the weights at half the width."""
    from robustmix.models import check_arch

    assert check_arch("smallcnn-32") == "smallcnn" and check_arch("SmallCNN-16") == "smallcnn-16"
    with pytest.raises(UsageError, match="width must be >= 1"):
        check_arch("smallcnn-0")
    full, half = _build("smallcnn"), _build("smallcnn-16")
    assert [type(m) for m in full.modules()] == [type(m) for m in half.modules()]
    convs = [[m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
             for net in (full, half)]
    assert convs == [[32, 64, 128], [16, 32, 64]]
