"""The Python API guards its inputs where they enter (issue 16): ``robustmix.attacks.robustness``,
``robustmix.mixing.mix`` and ``mask_kernel`` answer a wrong argument with a ConfigError
(a ValueError) or a TypeError that names it, never an error from deep inside, a blamed
attack, a silent NaN or a number computed from nonsense."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustmix.attacks import AttackConfig, parse_eps, robustness
from robustmix import load_model
from robustmix.core.errors import ConfigError, UsageError
from robustmix.data import load_dataset
from robustmix.mixing import cutmix_mask, mask_kernel, mix, mixup_mask

from test_fuzz import FUZZ

FEW = settings(FUZZ, max_examples=40)   # the project's settings, sized to run in seconds

FGSM = AttackConfig(attacks=("fgsm",), eps=tuple(parse_eps("8/255")), batch_size=16)


def linear_model(size=16, channels=1, classes=10, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, classes)).eval()


@pytest.fixture(scope="module")
def digits():
    x, y = load_dataset("digits").tensors("test")
    return x[:40], y[:40]


def refuses(error, field, call):
    """``call()`` raises ``error`` whose message (and ``field``, for a ConfigError) names
    the argument."""
    with pytest.raises(error) as info:
        call()
    assert field in str(info.value), str(info.value)
    if error is ConfigError:
        assert info.value.field == field
    return str(info.value)


# --- robustmix.attacks.robustness -------------------------------------------------------------------

def test_uint8_images_are_converted_like_x_float_over_255(digits):
    x, y = digits
    model = linear_model()
    from_uint8 = robustness(model, x, y, FGSM)
    from_float = robustness(model, x.float() / 255, y, FGSM)
    assert torch.equal(from_uint8.clean, from_float.clean)
    assert [(r.clean_acc, r.robust_acc) for r in from_uint8.rows] == \
        [(r.clean_acc, r.robust_acc) for r in from_float.rows]


def test_robustness_refuses_bad_images(digits):
    x, y = digits
    model = linear_model()
    message = refuses(ConfigError, "x", lambda: robustness(model, x.float(), y, FGSM))
    assert "[0, 1]" in message and "255" in message
    nan = x.float() / 255
    nan[0, 0, 0, 0] = float("nan")
    assert "NaN" in refuses(ConfigError, "x", lambda: robustness(model, nan, y, FGSM))
    refuses(ConfigError, "x", lambda: robustness(model, x.long(), y, FGSM))
    refuses(ConfigError, "x", lambda: robustness(model, x[0], y, FGSM))
    refuses(ConfigError, "x", lambda: robustness(model, x[:0], y[:0], FGSM))
    refuses(TypeError, "x", lambda: robustness(model, x.numpy(), y, FGSM))


def test_robustness_refuses_bad_labels(digits):
    x, y = digits
    model = linear_model()
    message = refuses(ConfigError, "y", lambda: robustness(model, x, y[:-1], FGSM))
    assert "40" in message and "39" in message
    message = refuses(ConfigError, "y", lambda: robustness(model, x, y + 20, FGSM))
    assert "[0, 10)" in message
    refuses(ConfigError, "y", lambda: robustness(model, x, y - 20, FGSM))
    refuses(ConfigError, "y", lambda: robustness(model, x, y.float(), FGSM))
    refuses(ConfigError, "y", lambda: robustness(model, x, y[:, None], FGSM))
    refuses(TypeError, "y", lambda: robustness(model, x, y.tolist(), FGSM))
    # n_classes given by the caller is the bound
    assert int(y.max()) >= 5
    refuses(ConfigError, "y", lambda: robustness(model, x, y, FGSM, n_classes=5))


def test_robustness_refuses_a_device_the_model_is_not_on(digits):
    x, y = digits
    refuses(ConfigError, "device", lambda: robustness(linear_model(), x, y, FGSM, device="meta"))


def test_float64_images_run_in_the_models_dtype(digits):
    x, y = digits
    model = linear_model()
    as_double = robustness(model, x.double() / 255, y, FGSM)
    assert torch.equal(as_double.clean, robustness(model, x, y, FGSM).clean)


# --- robustmix.mixing.mix -----------------------------------------------------------------

def mix_args(batch=4, size=6, classes=3):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 2, size, size, generator=g)
    y = torch.softmax(torch.randn(batch, classes, generator=g), 1)
    mask = torch.rand(batch, 1, size, size, generator=g)
    return x, y, mask, torch.randperm(batch, generator=g)


def test_mix_refuses_bad_arguments():
    x, y, mask, partner = mix_args()
    message = refuses(ConfigError, "mask", lambda: mix(x, y, mask[:3], partner))
    assert "(4 or 1, 1, 6, 6)" in message and "(3, 1, 6, 6)" in message
    refuses(ConfigError, "mask", lambda: mix(x, y, mask[..., :5], partner))
    refuses(ConfigError, "mask", lambda: mix(x, y, mask[:, 0], partner))
    nan = mask.clone()
    nan[1, 0, 2, 2] = float("nan")
    assert "NaN" in refuses(ConfigError, "mask", lambda: mix(x, y, nan, partner))
    refuses(ConfigError, "mask", lambda: mix(x, y, mask * 3, partner))
    refuses(ConfigError, "x", lambda: mix((x * 255).to(torch.uint8), y, mask, partner))
    refuses(ConfigError, "x", lambda: mix(x[0], y, mask, partner))
    refuses(ConfigError, "y", lambda: mix(x, y[:3], mask, partner))
    refuses(ConfigError, "y", lambda: mix(x, y.argmax(1), mask, partner))
    refuses(ConfigError, "partner", lambda: mix(x, y, mask, partner[:3]))
    refuses(ConfigError, "partner", lambda: mix(x, y, mask, partner.float()))
    refuses(ConfigError, "partner", lambda: mix(x, y, mask, partner + 4))
    refuses(ConfigError, "partner_x", lambda: mix(x, y, mask, partner, partner_x=x[:3]))
    refuses(TypeError, "mask", lambda: mix(x, y, mask.numpy(), partner))


def test_mix_accepts_one_shared_mask_and_bool_masks():
    x, y, mask, partner = mix_args()
    mixed, labels = mix(x, y, mask[:1], partner)
    assert mixed.shape == x.shape and labels.shape == y.shape
    mixed, labels = mix(x, y, mask > 0.5, partner)
    assert torch.isfinite(mixed).all() and torch.allclose(labels.sum(1), torch.ones(4))


def test_the_training_path_skips_the_value_checks():
    """Mixer passes check_values=False: its masks come from the samplers, so no host sync."""
    x, y, mask, partner = mix_args()
    nan = mask.clone()
    nan[0, 0, 0, 0] = float("nan")
    mixed, _ = mix(x, y, nan, partner, check_values=False)   # not checked: NaN goes through
    assert torch.isnan(mixed).any()
    with pytest.raises(ConfigError):                          # shapes are always checked
        mix(x, y, mask[:3], partner, check_values=False)


# --- mask_kernel and load_model -----------------------------------------------------------

@pytest.mark.parametrize("field, kwargs", [
    ("size", {"size": 0}), ("size", {"size": 1}), ("size", {"size": (8, 1)}),
    ("size", {"size": (8,)}), ("size", {"size": 4.0}), ("size", {"size": True}),
    ("draws", {"draws": 0}), ("draws", {"draws": 2.5}), ("chunk", {"chunk": 0}),
    ("alpha", {"alpha": 0}), ("alpha", {"alpha": -1.0}), ("alpha", {"alpha": float("nan")}),
    ("alpha", {"alpha": float("inf")}),
])
def test_mask_kernel_refuses_bad_settings(field, kwargs):
    settings = {"size": 8, "draws": 8, **kwargs}
    size = settings.pop("size")
    refuses(ConfigError, field, lambda: mask_kernel(cutmix_mask, size, **settings))


def test_mask_kernel_still_works():
    kernel = mask_kernel(mixup_mask, (4, 5), draws=64)
    assert kernel.shape == (5,) and np.isfinite(kernel).all()


def test_load_model_refuses_a_missing_path_and_an_empty_directory(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="no finished run"):
        load_model(tmp_path)


# --- under hypothesis ---------------------------------------------------------------------

DTYPES = [torch.uint8, torch.float32, torch.float64, torch.int64]


def maybe(draw, valid, *wrong):
    """``valid`` most of the time, else one of ``wrong``: most draws then break one rule."""
    return draw(st.sampled_from([valid] * 3 * max(len(wrong), 1) + list(wrong)))


def random_tensor(draw, shape, dtype):
    """A tensor of ``shape`` and ``dtype``: values in [0, 1] or not, maybe a NaN."""
    scale = maybe(draw, 1.0, 255.0, -1.0)
    seed = draw(st.integers(0, 99))
    values = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * scale
    if dtype.is_floating_point:
        values = values.to(dtype)
        if values.numel() and maybe(draw, False, True):
            values.view(-1)[draw(st.integers(0, values.numel() - 1))] = float("nan")
        return values
    if dtype == torch.bool:
        return values > 0.5
    return values.abs().round().clamp(0, 255).to(dtype)


@st.composite
def mix_inputs(draw):
    batch, h, w = draw(st.integers(1, 4)), maybe(draw, 3, 0, 1), draw(st.integers(1, 4))
    x = random_tensor(draw, (maybe(draw, batch, batch + 1), 2, h, w),
                      maybe(draw, torch.float32, torch.float64, torch.uint8, torch.int64))
    y = random_tensor(draw, (maybe(draw, batch, batch + 1), 3),
                      maybe(draw, torch.float32, torch.float64, torch.int64))
    mask = random_tensor(draw, (maybe(draw, batch, 1, batch + 1), 1, h, maybe(draw, w, w + 1)),
                         maybe(draw, torch.float32, torch.float64, torch.bool, torch.int64))
    length = maybe(draw, batch, batch + 1)
    partner = torch.tensor(draw(st.lists(st.integers(0, batch - 1), min_size=length,
                                         max_size=length)), dtype=torch.int64)
    partner = partner + maybe(draw, 0, batch, -1)
    return x, y, mask, partner.to(maybe(draw, torch.int64, torch.int32, torch.float32))


@FEW
@given(mix_inputs())
def test_mix_returns_a_valid_batch_or_refuses(args):
    x, y, mask, partner = args
    try:
        mixed, labels = mix(x, y, mask, partner)
    except (ConfigError, TypeError):
        return
    assert mixed.shape == x.shape and labels.shape == y.shape
    if torch.isfinite(x).all():
        assert torch.isfinite(mixed).all()
        assert mixed.min() >= x.min() - 1e-6 and mixed.max() <= x.max() + 1e-6
    if torch.isfinite(y).all():
        assert torch.isfinite(labels).all()


@st.composite
def attack_inputs(draw):
    n = draw(st.integers(1, 4))
    x = random_tensor(draw, maybe(draw, (n, 1, 4, 4), (n + 1, 1, 4, 4), (0, 1, 4, 4), (n, 4, 4)),
                      maybe(draw, torch.float32, torch.uint8, torch.float64, torch.int64))
    y = torch.tensor(draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)))
    y = y + maybe(draw, 0, 10, -1)
    return x, y.to(maybe(draw, torch.int64, torch.int32, torch.float32, torch.uint8))


@FEW
@given(attack_inputs())
def test_robustness_returns_valid_accuracies_or_refuses(args):
    x, y = args
    model = linear_model(size=4)
    config = AttackConfig(attacks=("fgsm",), eps=tuple(parse_eps("0.1")), batch_size=4)
    try:
        result = robustness(model, x, y, config)
    except (ConfigError, TypeError):
        return
    for row in result.rows:
        assert 0 <= row.robust_acc <= row.clean_acc <= 1
    assert result.clean.shape == (x.shape[0],)


# --- evaluate_run, write_report, load_model, kernel_on_batches ----------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-epoch run on 8x8 digits: what evaluate_run and write_report read."""
    from robustmix.core.config import TrainConfig
    from robustmix.training import train

    run = tmp_path_factory.mktemp("api") / "vanilla"
    train(TrainConfig(epochs=1, batch_size=128, image_size=8, seed=0), run, progress=False)
    return run


@pytest.mark.parametrize("field, kwargs", [
    ("batch_size", {"batch_size": 0}), ("batch_size", {"batch_size": 2.0}),
    ("batch_size", {"batch_size": True}), ("q_draws", {"q_draws": -1}),
    ("n_examples", {"n_examples": 0}), ("seed", {"seed": -1}), ("seed", {"seed": 0.5}),
    ("device", {"device": "gpu"}), ("device", {"device": "meta"}),
])
def test_evaluate_run_refuses_bad_arguments_before_reading_anything(tmp_path, field, kwargs):
    from robustmix.evaluations import evaluate_run
    # a directory that is not a run: the argument is named before the run is looked at
    refuses(ConfigError, field, lambda: evaluate_run(tmp_path, **kwargs))


def test_evaluate_run_refuses_wrong_types(tmp_path):
    from robustmix.evaluations import evaluate_run
    refuses(TypeError, "run_dir", lambda: evaluate_run(3))
    refuses(TypeError, "device", lambda: evaluate_run(tmp_path, device=0))
    with pytest.raises(UsageError, match="no finished run|not found|config.json"):
        evaluate_run(tmp_path / "nowhere")


def test_write_report_refuses_a_single_path_and_other_types(tiny_run, tmp_path):
    from robustmix.evaluations import write_report
    message = refuses(TypeError, "run_dirs", lambda: write_report(str(tiny_run), tmp_path))
    assert "write_report([" in message   # says how to call it
    refuses(TypeError, "run_dirs", lambda: write_report(tiny_run, tmp_path))
    refuses(TypeError, "run_dirs", lambda: write_report(5, tmp_path))
    refuses(TypeError, "run_dirs", lambda: write_report([tiny_run, 5], tmp_path))
    refuses(TypeError, "out_dir", lambda: write_report([tiny_run], None))
    with pytest.raises(UsageError, match="no runs given"):
        write_report([], tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing is written before the runs are checked"


def test_load_model_refuses_a_non_path():
    refuses(TypeError, "path", lambda: load_model(None))
    refuses(TypeError, "path", lambda: load_model(b"run"))


def test_kernel_on_batches_refuses_bad_arguments(digits):
    from robustmix.mixing import kernel_on_batches, make_sampler
    x, y = digits
    sampler, model = make_sampler("puzzlemix"), linear_model()
    call = lambda **kw: kernel_on_batches(sampler, kw.pop("model", model), kw.pop("x", x),
                                          kw.pop("y", y), draws=8, batch_size=8, **kw)
    refuses(ConfigError, "alpha", lambda: call(alpha=0.0))
    refuses(ConfigError, "images", lambda: call(x=x.float()))         # 0..255 as float
    refuses(ConfigError, "images", lambda: call(x=x[:1], y=y[:1]))    # nothing to pair
    refuses(ConfigError, "labels", lambda: call(y=y[:-1]))
    refuses(ConfigError, "labels", lambda: call(y=y + 10))            # beyond 10 outputs
    refuses(TypeError, "model", lambda: call(model=None))             # saliency needs one
    kernel = call()
    assert kernel.shape == (16,) and np.isfinite(kernel).all()
    assert ((0 <= kernel) & (kernel <= 1)).all()


# evaluate_run and write_report under hypothesis: arguments of every type and range, most
# of them breaking one rule; a call that passes them does the real (small) work.
# (valid integers are fixed small sizes: a batch of 1 is valid and only slow)
arguments = st.one_of(st.integers(-2, 0), st.floats(allow_nan=True, allow_infinity=True),
                      st.booleans(), st.none(), st.text(max_size=4))


@st.composite
def evaluate_arguments(draw):
    return {"batch_size": maybe(draw, 128, 397, draw(arguments)),
            "q_draws": maybe(draw, 4, draw(arguments)),
            "n_examples": maybe(draw, 16, None, draw(arguments)),
            "seed": maybe(draw, 0, draw(arguments)),
            "device": maybe(draw, "cpu", "auto", draw(st.text(max_size=6)), 1)}


@pytest.mark.slow
@settings(FUZZ, max_examples=25)
@given(kwargs=evaluate_arguments())
def test_evaluate_run_returns_valid_measurements_or_refuses(tiny_run, kwargs):
    from robustmix.evaluations import evaluate_run
    try:
        result = evaluate_run(tiny_run, **kwargs)
    except (ConfigError, TypeError):
        return
    assert 0 <= result["test"]["accuracy"] <= 1 and 0 <= result["train"]["accuracy"] <= 1
    assert result["test"]["n"] == 397 and math.isfinite(result["test"]["loss"])
    assert result["batch_size"] == kwargs["batch_size"]


@st.composite
def report_arguments(draw, run, tmp):
    items = st.sampled_from([str(run), run, tmp / "missing", tmp / "file", 7, None])
    run_dirs = maybe(draw, [run], draw(st.lists(items, max_size=3)), str(run), run, 3,
                     (r for r in [run]))
    out = maybe(draw, tmp / f"out{draw(st.integers(0, 2))}", tmp / "file", None, 1.5)
    return run_dirs, out


@pytest.mark.slow
def test_write_report_writes_a_report_or_refuses(tiny_run, tmp_path):
    from robustmix.evaluations import write_report
    (tmp_path / "file").write_text("not a directory")

    @settings(FUZZ, max_examples=15)
    @given(report_arguments(tiny_run, tmp_path))
    def check(args):
        run_dirs, out = args
        try:
            report = write_report(run_dirs, out)
        except (UsageError, TypeError):
            return
        assert report == Path(out) / "report.md" and report.is_file()
        assert "vanilla" in report.read_text()

    check()


# --- make_sampler, mask_kernel, wrap_model, gradient_measures, load_model under hypothesis --

settings_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3),
                            st.booleans(), st.none(), st.text(max_size=3))


@FEW
@given(name=st.one_of(st.sampled_from(["vanilla", "mixup", "cutmix", "stochastic", "hmix",
                                       "gmix", "puzzlemix"]), st.text(max_size=8), st.none()),
       r=settings_values, p=settings_values, size=st.one_of(st.integers(-1, 9), settings_values),
       alpha=settings_values)
def test_sampler_kernels_are_valid_or_refused(name, r, p, size, alpha):
    from robustmix.mixing import make_sampler
    try:
        own = {"hmix": {"hmix_r": r}, "stochastic": {"switch_prob": p}}.get(name, {})
        kernel = mask_kernel(make_sampler(name, **own), size, alpha=alpha, draws=64)
    except (ConfigError, TypeError):
        return
    assert kernel.ndim == 1 and np.isfinite(kernel).all()
    assert ((0 <= kernel) & (kernel <= 1 + 1e-12)).all()


@st.composite
def measure_inputs(draw):
    n = draw(st.integers(1, 4))
    x = random_tensor(draw, maybe(draw, (n, 1, 4, 4), (n, 2, 4, 4), (0, 1, 4, 4), (n, 16)),
                      maybe(draw, torch.float32, torch.uint8, torch.float64, torch.int64))
    y = torch.tensor(draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)))
    y = y[:maybe(draw, n, n - 1)] + maybe(draw, 0, 10, -1)
    mean = maybe(draw, (0.5,), (0.5, 0.5), (), (float("nan"),), "a")
    std = maybe(draw, (0.25,), (0.0,), (-1.0,), (float("inf"),), None)
    return x, y.to(maybe(draw, torch.int64, torch.float32)), mean, std, \
        maybe(draw, 2, 0, 1.5)


@FEW
@given(measure_inputs())
def test_wrapped_models_gradients_are_valid_or_refused(args):
    """wrap_model and gradient_measures on random inputs: finite measures or a refusal."""
    from robustmix.evaluations import gradient_measures
    from robustmix import wrap_model
    x, y, mean, std, batch_size = args
    try:
        model = wrap_model(linear_model(size=4), mean, std)
        measured = gradient_measures(model, x, y, batch_size, "cpu")
    except (ConfigError, TypeError):
        return
    gradient = measured["input_gradient"]
    assert gradient["n_examples"] == x.shape[0]
    assert math.isfinite(gradient["loss_l2_mean"]) and gradient["loss_l2_mean"] >= 0


@FEW
@given(content=st.one_of(st.binary(max_size=64),
                         st.binary(max_size=32).map(lambda b: len(b).to_bytes(8, "little") + b)))
def test_load_model_refuses_any_file_robustmix_did_not_write(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(UsageError, match="model.safetensors"):
        load_model(path)
