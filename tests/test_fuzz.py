"""The command-line parsers under hypothesis: every input either parses to a valid value or
gets the one-line error with exit code 2, never a traceback.

Each value goes through the real command (``robustmix.app.cli.main``) with ``--out``/``--run``
pointing where no work can start, so a value that passes every check ends at that refusal
instead of training or attacking; the test then checks that what passed is valid.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import run_cli

FUZZ = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text that looks like what users type, and text that does not.
digits = st.from_regex(r"[+-]?\d{0,4}(\.\d{0,4})?([eE][+-]?\d{1,3})?", fullmatch=True)
numberish = st.one_of(digits, st.floats().map(str), st.integers(-300, 300).map(str),
                      st.sampled_from(["nan", "inf", "-inf", "1_0", " 1 ", "0x10", "１", ""]))
fraction = st.tuples(numberish, numberish).map("/".join)
item = st.one_of(numberish, fraction, st.text(max_size=6))
listish = st.lists(item, min_size=1, max_size=4).map(",".join)
anything = st.one_of(st.text(max_size=20), listish, item)


def run(capsys, argv):
    code, _, err = run_cli(capsys, *argv)
    return code, err


def error_line(code, err) -> str:
    """The single line of a refusal (exit code 2, no traceback)."""
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), repr(err)
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def not_a_directory(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "a-file"
    path.write_text("not a run directory")
    return str(path)


def train_line(capsys, not_a_directory, *argv) -> tuple[str, bool]:
    """Run `robustmix train ARGV --out FILE`; returns the error line and whether every
    setting passed (the refusal is then about --out being a file)."""
    code, err = run(capsys, ["train", "--quiet", *argv, "--out", not_a_directory])
    line = error_line(code, err)
    return line, line.endswith(f"--out {not_a_directory} is a file, not a directory")


@FUZZ
@given(text=st.one_of(anything, st.lists(fraction, min_size=1, max_size=3).map(", ".join)))
def test_eps_parses_to_sorted_positive_budgets_or_one_line(capsys, text):
    from fractions import Fraction

    from robustmix.attacks.eps import SNAP_TOLERANCE, parse_eps
    from robustmix.core.errors import UsageError

    missing = "/nonexistent/run"
    code, err = run(capsys, ["attack", missing, f"--eps={text}", "--attacks", "fgsm"])
    line = error_line(code, err)
    try:
        budgets = parse_eps(text)
    except UsageError:
        assert line.startswith("robustmix attack: error: --eps "), line
        return
    assert line == f"robustmix attack: error: {missing}: no such run directory"
    exact = [b.exact for b in budgets]
    assert exact == sorted(set(exact)) and all(0 < b.value < math.inf for b in budgets)
    for budget in budgets:
        assert budget.text == budget.text.strip() and budget.text in text
        if "/" in budget.text:  # a fraction is that rational exactly
            top, bottom = budget.text.split("/")
            assert budget.exact == Fraction(top.strip()) / Fraction(bottom.strip())
        else:  # a decimal is itself, or snapped within the stated relative tolerance
            assert abs(budget.exact - Fraction(budget.text)) <= \
                SNAP_TOLERANCE * Fraction(budget.text)


@FUZZ
@given(text=st.one_of(anything, st.tuples(numberish, numberish).map(",".join)))
def test_crop_scale_parses_to_a_usable_scale_or_one_line(capsys, not_a_directory, text):
    from robustmix.data import Augment, draw_resized_crop_boxes

    line, passed = train_line(capsys, not_a_directory, f"--crop-scale={text}")
    if not passed:
        assert "--crop-scale" in line, line
        return
    lo, hi = (float(part) for part in text.split(","))
    assert 0 < lo <= hi <= 1
    Augment(crop_scale=(lo, hi))
    boxes = draw_resized_crop_boxes(np.random.default_rng(0), 16, 8, 8, (lo, hi))
    top, left, h, w = boxes.T
    assert (h >= 1).all() and (w >= 1).all() and (top + h <= 8).all() and (left + w <= 8).all()


@FUZZ
@given(text=st.one_of(anything, st.lists(st.integers(-5, 40).map(str), max_size=5)
                      .map(",".join)))
def test_milestones_parse_to_increasing_epochs_or_one_line(capsys, not_a_directory, text):
    line, passed = train_line(capsys, not_a_directory, "--schedule", "multistep",
                              "--epochs", "20", f"--milestones={text}")
    if not passed:
        assert "--milestones" in line, line
        return
    milestones = [int(part) for part in text.split(",") if part.strip()]
    assert milestones == sorted(set(milestones)) and all(0 < m < 20 for m in milestones)


@FUZZ
@given(text=st.one_of(anything, st.integers(-10, 5000).map(str)))
def test_image_size_parses_to_a_size_in_range_or_one_line(capsys, not_a_directory, text):
    line, passed = train_line(capsys, not_a_directory, f"--image-size={text}")
    if not passed:
        assert "--image-size" in line, line
        return
    assert 8 <= int(text) <= 1024


@FUZZ
@given(text=st.one_of(anything, st.floats().map(str)))
def test_alpha_parses_to_a_usable_beta_parameter_or_one_line(capsys, not_a_directory, text):
    from robustmix.mixing import sample_lam

    line, passed = train_line(capsys, not_a_directory, "--mix", "mixup", f"--alpha={text}")
    if not passed:
        assert "--alpha" in line, line
        return
    alpha = float(text)
    assert 0 < alpha < math.inf
    lam = sample_lam(np.random.default_rng(0), alpha, 64)
    assert np.isfinite(lam).all() and ((0 <= lam) & (lam <= 1)).all()


@FUZZ
@given(text=st.one_of(anything, st.floats().map(str)))
def test_hmix_r_parses_to_a_usable_box_fraction_or_one_line(capsys, not_a_directory, text):
    from robustmix.mixing import make_sampler

    line, passed = train_line(capsys, not_a_directory, "--mix", "hmix", f"--hmix-r={text}")
    if not passed:
        assert "--hmix-r" in line, line
        return
    r = float(text)
    assert 0 <= r <= 1
    lam = torch.tensor([0.0, 0.3, 0.5, 0.9, 1.0])
    mask = make_sampler("hmix", hmix_r=r)(lam, 8, 8, np.random.default_rng(0), "cpu")
    assert torch.isfinite(mask).all() and ((0 <= mask) & (mask <= 1)).all()
    torch.testing.assert_close(mask.mean(dim=(1, 2, 3)), lam, atol=1e-5, rtol=0)


arch_like = st.from_regex(r"\s?(wrn|WRN|Wrn|resnet|ResNet|preactresnet|smallcnn|SmallCNN)"
                          r"-?\d{0,3}(-\d{0,2})?\s?", fullmatch=True)


@FUZZ
@given(text=st.one_of(st.text(max_size=20), arch_like))
def test_arch_names_parse_to_a_buildable_canonical_name_or_one_line(capsys, not_a_directory,
                                                                    text):
    from robustmix.models import build_model, check_arch

    line, passed = train_line(capsys, not_a_directory, f"--arch={text}")
    if not passed:
        assert "arch" in line, line
        return
    name = check_arch(text)
    assert check_arch(name) == name and name == name.strip().lower()
    if name == "smallcnn" or (name.startswith(("wrn", "resnet")) and
                              sum(map(int, filter(None, name.replace("wrn", "").replace(
                                  "resnet", "").split("-")))) <= 32):
        model = build_model(name, num_classes=10, in_channels=1, mean=[0.5], std=[0.25])
        with torch.no_grad():
            assert model.eval()(torch.rand(1, 1, 8, 8)).shape == (1, 10)
