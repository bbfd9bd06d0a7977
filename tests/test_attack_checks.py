"""No silent wrong numbers from the attack runner: robust accuracy above clean or rising with
ε stops the run; a randomized model, or one that outputs probabilities, is flagged in every
row of every attack; a hand-edited robustness.csv is refused; a stale or foreign AutoAttack
state is ignored, and a resumed one reports the passes of an uninterrupted run."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustmix.attacks import AttackConfig, AttackError, PGDSettings, parse_eps, robustness
from robustmix.attacks import autoattack as autoattack_module
from robustmix.attacks import ensemble, guards, runner, sweep, table
from robustmix.attacks.registry import get
from robustmix.attacks.gradient import PassCounter
from robustmix.core import runs
from robustmix.core.errors import UsageError

from helpers import one_conv_cnn

EPS = tuple(parse_eps("0.05,0.2"))
CONFIG = AttackConfig(attacks=("fgsm", "pgd"), eps=EPS, batch_size=16,
                      pgd=PGDSettings(steps=3))


def data_for(model, n=32, seed=1):
    """Inputs and the labels ``model`` predicts on them: every example starts correct."""
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x, model(x).argmax(1)


class AlwaysDropout(nn.Module):
    """Dropout that stays on in eval mode (as MC-dropout code does)."""

    def forward(self, x):
        return F.dropout(x, 0.5, training=True)


def test_a_model_that_outputs_logits_raises_no_model_check():
    model = one_conv_cnn()
    x, y = data_for(model)
    result = robustness(model, x, y, CONFIG)
    assert all(row.checks == [] for row in result.rows)
    assert guards.model_checks(model, x, "cpu") == []


@pytest.mark.parametrize("wrap, fragment", [
    (lambda m: nn.Sequential(m[:3], AlwaysDropout(), m[3]),
     "two passes on the same inputs give different outputs"),
    (lambda m: nn.Sequential(m, nn.Softmax(dim=1)), "outputs are probabilities"),
    (lambda m: nn.Sequential(m, nn.Softmax(dim=1), AlwaysDropout()), "different outputs"),
])
def test_a_randomized_or_probability_model_is_flagged_in_every_row(wrap, fragment):
    plain = one_conv_cnn()
    x, y = data_for(plain)
    model = wrap(plain).eval()
    result = robustness(model, x, y, CONFIG)
    assert len(result.rows) == 3 * len(EPS)  # fgsm, pgd and worst-case, at each ε
    for row in result.rows:
        assert any(fragment in check for check in row.checks), (row.attack, row.checks)
        assert any(fragment in c for c in row.as_csv("run", "linf")["checks"].split(";"))


def test_non_finite_outputs_are_flagged():
    class NaNAfter(nn.Module):
        def forward(self, x):
            out = one_conv_cnn()(x)
            return out.masked_fill(torch.arange(10) == 3, float("nan"))

    x = torch.rand(4, 1, 8, 8)
    assert guards.model_checks(NaNAfter(), x, "cpu") == [
        "model: non-finite outputs (NaN or inf) on clean inputs"]


def inflate(monkeypatch, change):
    """Make the runner build rows whose robust accuracy ``change`` rewrites (a planted bug)."""

    @dataclasses.dataclass
    class Planted(runner.Row):
        def __post_init__(self):
            change(self)

    monkeypatch.setattr(sweep, "Row", Planted)


def test_robust_accuracy_above_clean_stops_the_run(monkeypatch):
    model = one_conv_cnn()
    x, y = data_for(model)
    y[:4] = (y[:4] + 1) % 10  # clean accuracy 28/32

    def above_clean(row):
        if row.attack == "pgd":
            row.robust_acc = 1.0

    inflate(monkeypatch, above_clean)
    with pytest.raises(AttackError, match=r"pgd at ε = 0.05 reports robust accuracy 1.0000 "
                                          r"above clean 0.8750: a bug"):
        robustness(model, x, y, CONFIG)


def test_robust_accuracy_that_rises_with_eps_stops_the_run(monkeypatch):
    model = one_conv_cnn()
    x, y = data_for(model)
    honest = robustness(model, x, y, CONFIG)
    first = {r.attack: r.robust_acc for r in honest.rows if r.eps == EPS[0]}
    assert first["fgsm"] < 1.0, "some examples must break at the smaller ε"

    def rising(row):
        if row.attack == "fgsm" and row.eps == EPS[1]:
            row.robust_acc = row.clean_acc

    inflate(monkeypatch, rising)
    with pytest.raises(AttackError, match="fgsm: robust accuracy rises from ε = 0.05 to 0.2"):
        robustness(model, x, y, CONFIG)


# ---------------------------------------------------------------------------- robustness.csv


@pytest.fixture(scope="module")
def csv_rows():
    model = one_conv_cnn()
    x, y = data_for(model)
    y[:4] = (y[:4] + 1) % 10  # clean accuracy 0.875
    return [row.as_csv("runs/x", "linf") for row in robustness(model, x, y, CONFIG).rows]


def test_what_the_runner_writes_reads_back_unchanged(csv_rows, tmp_path):
    path = tmp_path / runs.ROBUSTNESS
    runner.write_rows(path, csv_rows)
    assert table.read_rows(path) == [{k: str(v) for k, v in row.items()} for row in csv_rows]
    before = path.read_bytes()
    runner.write_rows(path, csv_rows)  # the same evaluation again replaces its rows
    assert path.read_bytes() == before


@pytest.mark.parametrize("column, value, fragment", [
    ("attack", "cw", "attack is 'cw', not a registered attack"),
    ("norm", "l3", "norm is 'l3', not one of linf, l2"),
    ("eps", "eight", "eps is 'eight', not a budget like 8/255 or 0.031"),
    ("eps", "1/255,2/255", "eps is '1/255,2/255', not a budget like 8/255"),
    ("eps", "0.1", "eps 0.1 is 0.1, but eps_value is 0.05"),
    ("eps_value", "0", "eps_value is 0, outside (0, inf]"),
    ("n_examples", "-1", "n_examples is -1, outside [0, inf]"),
    ("forward_passes", "1.5", "forward_passes is '1.5', not an integer"),
    ("clean_acc", "1.2", "clean_acc is 1.2, outside [0, 1]"),
    ("robust_acc", "0.9", "robust_acc 0.9 is above clean_acc 0.875000"),
    ("robust_acc", "", "robust_acc is '', not a number"),
    ("robust_acc", "inf", "robust_acc is 'inf', not a finite number"),
    ("seconds", "-3", "seconds is -3, outside [0, inf]"),
])
def test_a_hand_edited_row_is_refused_with_its_line(csv_rows, tmp_path, column, value, fragment):
    path = tmp_path / runs.ROBUSTNESS
    rows = [dict(row) for row in csv_rows]
    rows[0][column] = value
    runs.write_csv(path, rows, table.CSV_FIELDS)
    before = path.read_bytes()
    with pytest.raises(UsageError) as caught:
        runner.write_rows(path, csv_rows)
    message = str(caught.value)
    assert message.startswith(f"{path}, line 2: ") and fragment in message, message
    assert path.read_bytes() == before, "nothing is merged into a damaged file"


# ---------------------------------------------------------------------------- AutoAttack state


class Calls(list):
    die_at = None  # the call that is interrupted (KeyboardInterrupt), if any


@pytest.fixture
def fake_components(monkeypatch):
    """AutoAttack's components replaced by one that breaks nothing (fast); records calls."""
    calls = Calls()

    def perturb(adversary, component, x, y):
        calls.append(component)
        if len(calls) == calls.die_at:
            raise KeyboardInterrupt
        return x.clone()

    monkeypatch.setattr(autoattack_module, "_perturb", perturb)
    return calls


def run_autoattack(model, x, y, state_path, batch_size=4):
    counter = PassCounter(model)
    return ensemble.run_ensemble(
        counter, get("apgd"), x, y, torch.arange(x.shape[0]), 0.03, "linf",
        get("apgd").settings(), seed=0, batch_size=batch_size, state_path=state_path,
        passes=lambda: (counter.forwards, counter.backwards))


def test_a_resumed_autoattack_reports_the_passes_of_an_uninterrupted_one(fake_components,
                                                                         tmp_path):
    model = one_conv_cnn()
    x, y = data_for(model, n=12)
    *_, uninterrupted = run_autoattack(model, x, y, None)
    assert fake_components == ["apgd-ce"] * 3 + ["apgd-t"] * 3
    fake_components.clear()
    state = tmp_path / "state.json"
    fake_components.die_at = 5  # the second APGD-T batch
    with pytest.raises(KeyboardInterrupt):
        run_autoattack(model, x, y, state)
    assert runs.read_json(state)["next_batch"] == 1
    fake_components.clear()
    fake_components.die_at = None
    *_, resumed = run_autoattack(model, x, y, state)
    assert fake_components == ["apgd-t"] * 2, "only the batches not yet done run"
    assert resumed == uninterrupted
    assert not state.exists()


@pytest.mark.parametrize("change", ["batch size", "model", "examples", "damaged"])
def test_a_state_of_another_evaluation_is_ignored(fake_components, tmp_path, change):
    """A state left by an interrupted evaluation of other weights, other examples or other
    batches must not be resumed: its batch numbers and standing set mean something else."""
    model = one_conv_cnn()
    x, y = data_for(model, n=12)
    state = tmp_path / "state.json"
    fake_components.die_at = 5
    with pytest.raises(KeyboardInterrupt):
        run_autoattack(model, x, y, state)
    fake_components.clear()
    fake_components.die_at = None
    batch_size = 4
    if change == "batch size":
        batch_size = 6
    elif change == "model":
        model = one_conv_cnn(seed=1)
        y = data_for(model, n=12)[1]
    elif change == "examples":
        x = x.flip(0).contiguous()
        y = y.flip(0).contiguous()
    else:
        state.write_text(state.read_text().replace('"next_batch": 1', '"next_batch": "1"'))
    run_autoattack(model, x, y, state, batch_size=batch_size)
    batches = math.ceil(12 / batch_size)
    assert fake_components == ["apgd-ce"] * batches + ["apgd-t"] * batches
