"""Attack-failure diagnostics: models that mask their gradients are flagged, a normal one is
not, and what the flags say reaches robustness.csv's worst-case rows.

The models: a small CNN trained on the digits (normal); the same network with its last
layer's weights and bias multiplied by 10,000 (the same predictions, but a float32 softmax
that is one-hot, so the cross-entropy's gradient vanishes and FGSM and PGD find nothing);
and the trained network behind a non-differentiable input step (rounding to 4 grey levels,
whose gradient is zero almost everywhere).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustmix.attacks import AttackConfig, parse_eps, robustness
from robustmix.attacks.diagnostics import (DiagnosticSettings, Outcomes, diagnose_result,
                                           failed_worst, gradient_flags, single_step)
from robustmix.attacks.eps import Eps

from helpers import one_thread

EPS = tuple(parse_eps("16/255,48/255"))
CONFIG = AttackConfig(attacks=("fgsm", "pgd", "apgd"), eps=EPS, batch_size=64,
                      options={"apgd": {"targets": 3}})
SETTINGS = DiagnosticSettings(sample=4, noise_sample=8, noise_draws=16)


@pytest.fixture(scope="module")
def digits():
    """A small CNN trained on 8×8 digits (full-batch Adam, 150 steps: ~97% test accuracy)
    and 48 test images it classifies correctly."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(data.target)
    with one_thread():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                            nn.Linear(16 * 64, 10))
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        for _ in range(150):
            optimizer.zero_grad()
            F.cross_entropy(net(x[:1400]), y[:1400]).backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            correct = (net(x[1400:]).argmax(1) == y[1400:]).nonzero().squeeze(1)[:48] + 1400
    return net, x[correct], y[correct]


def scaled(net: nn.Sequential, factor: float) -> nn.Sequential:
    """The same network with its logits multiplied by ``factor`` (same predictions)."""
    copy = nn.Sequential(*[layer for layer in net])
    last = nn.Linear(net[-1].in_features, net[-1].out_features)
    with torch.no_grad():
        last.weight.copy_(net[-1].weight * factor)
        last.bias.copy_(net[-1].bias * factor)
    copy[-1] = last
    return copy.eval()


class RoundInput(nn.Module):
    """x -> round(4x)/4: a step function of the input, gradient zero almost everywhere."""

    def forward(self, x):
        return torch.round(x * 4) / 4


def evaluate(model, x, y):
    with one_thread():
        result = robustness(model, x, y, CONFIG)
        checks = diagnose_result(model, x, y, result, CONFIG, settings=SETTINGS)
    return result, checks


def test_a_normal_model_raises_no_flag_on_its_worst_case(digits):
    net, x, y = digits
    result, checks = evaluate(net, x, y)
    assert result.rows[-1].robust_acc < result.rows[-2].robust_acc, "the attacks break some"
    assert failed_worst(checks) == {eps: [] for eps in EPS}, \
        [c for c in checks if not c.passed]


def test_a_saturated_softmax_is_flagged_and_only_the_dlr_attack_sees_through_it(digits):
    net, x, y = digits
    plain, _ = evaluate(net, x, y)
    huge = scaled(net, 1e4)
    with torch.no_grad():
        assert torch.equal(huge(x).argmax(1), net(x).argmax(1)), "same predictions"
    result, checks = evaluate(huge, x, y)
    acc = {(r.attack, r.eps): r.robust_acc for r in result.rows}
    base = {(r.attack, r.eps): r.robust_acc for r in plain.rows}
    # the cross-entropy attacks find nothing: every example stands
    assert acc[("fgsm", EPS[0])] == acc[("pgd", EPS[0])] == 1.0 > base[("pgd", EPS[0])]
    flagged = failed_worst(checks)
    assert any("saturated-softmax" in names for names in flagged.values()), flagged
    for eps, names in flagged.items():
        if acc[("worst-case", eps)] > 0:  # wherever an example is counted robust
            assert "saturated-softmax" in names and "zero-gradients" in names, (eps, names)


def test_a_non_differentiable_input_step_is_flagged(digits):
    net, x, y = digits
    stepped = nn.Sequential(RoundInput(), net).eval()
    with torch.no_grad():
        keep = stepped(x).argmax(1) == y
    result, checks = evaluate(stepped, x[keep], y[keep])
    flagged = failed_worst(checks)
    worst = {r.eps: r.robust_acc for r in result.rows if r.attack == "worst-case"}
    assert worst[EPS[0]] > 0.5, "gradient attacks are blind to a step function"
    assert all("zero-gradients" in flagged[eps] for eps in EPS if worst[eps] > 0), flagged


def test_gradient_flags_are_exact_float32_facts():
    """One-hot softmax and zero gradients where the logits trail by more than float32's
    exp can hold, and not where they trail by 20 (p(y) rounds to 1, but the others do not
    underflow, so the gradient is tiny and not zero)."""
    weight = torch.zeros(3, 4)
    for margin, saturated in ((20.0, False), (200.0, True)):
        layer = nn.Linear(4, 3)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(torch.tensor([margin, 0.0, 0.0]))
            layer.weight[1, 0] = 1.0  # logit 1 depends on the input: a gradient path
        model = nn.Sequential(nn.Flatten(), layer)
        zero, one_hot = gradient_flags(model, torch.rand(5, 1, 2, 2), torch.zeros(5,
                                       dtype=torch.long), "cpu", 8)
        assert one_hot.tolist() == [saturated] * 5
        assert zero.tolist() == [saturated] * 5


def test_single_step_is_judged_per_example():
    """An iterative attack that breaks as many examples as FGSM, but other ones, fails."""
    clean = torch.tensor([True, True, True, True])
    eps = Eps("8/255")
    outcomes = Outcomes(clean, {eps: {"fgsm": torch.tensor([False, True, True, True]),
                                      "pgd": torch.tensor([True, False, True, True])}})
    (check,) = single_step(outcomes, eps)
    assert (check.attack, check.value, check.passed) == ("pgd", 1, False)


@pytest.mark.slow
def test_the_attack_command_writes_every_check_and_transfer_adds_its_own(tmp_path, capsys):
    """Two runs attacked in one command: each gets diagnostics.csv with every check at
    every ε, the transfer check from the other run added without losing the others, and
    robustness.csv's diagnostics column filled from them."""
    from robustmix.attacks.diagnostics import CHECKS, read
    from robustmix.app.cli import main
    from robustmix.core import runs

    paths = []
    for mix in ("vanilla", "mixup"):
        out = tmp_path / mix
        assert main(["train", "--quiet", "--epochs", "1", "--image-size", "8", "--mix", mix,
                     "--out", str(out)]) == 0
        paths.append(str(out))
    assert main(["attack", "--quiet", "--run", *paths, "--eps", "16/255,32/255",
                 "--attacks", "fgsm,pgd", "--pgd-steps", "3", "--n-examples", "24"]) == 0
    printed = capsys.readouterr().out
    assert f"transfer from {paths[1]} to {paths[0]}" in printed
    for path in paths:
        rows = read(runs.RunDir(path).diagnostics_path)
        found = {(r["check"], r["eps"]) for r in rows}
        expected = {(c, e) for c in set(CHECKS) - {"unbounded"} for e in ("16/255", "32/255")}
        assert expected <= found and ("unbounded", "1") in found, expected - found
        column = {r["attack"]: r["diagnostics"] for r in runs.read_csv(
            runs.RunDir(path).robustness_path) if r["eps"] == "32/255"}
        failed = {r["check"] for r in rows if r["passed"] == "no" and r["eps"] == "32/255"
                  and r["attack"] in ("worst-case", "pgd")}
        if failed:
            assert set(column["worst-case"].removeprefix("failed: ").split(",")) == failed
        else:
            assert column["worst-case"] == "passed"


@pytest.mark.slow
def test_square_runs_where_the_diagnostics_suspect_masked_gradients(tmp_path, monkeypatch):
    """A run whose model hides behind a step function: the gradient attacks find little,
    the diagnostics flag zero gradients, and Square (gradient-free) then attacks the
    examples still standing; its breaks lower the worst case, and the flag stays."""
    from robustmix.attacks import attack_run, runner
    from robustmix.app.cli import main
    from robustmix.models.weights import load_model

    out = tmp_path / "run"
    assert main(["train", "--quiet", "--epochs", "2", "--image-size", "8",
                 "--out", str(out)]) == 0
    monkeypatch.setattr(runner, "load_model",
                        lambda path: nn.Sequential(RoundInput(), load_model(path)).eval())
    config = AttackConfig(attacks=("fgsm", "pgd"), eps=tuple(parse_eps("24/255")),
                          batch_size=64)
    rows = attack_run(out, config, n_examples=16,
                      diagnostics=DiagnosticSettings(sample=2, noise_sample=4, noise_draws=4))
    by = {r.attack: r for r in rows}
    assert "zero-gradients" in by["worst-case"].diagnostics
    assert by["square"].n_attacked == round(by["pgd"].robust_acc * 16)
    assert by["worst-case"].robust_acc < by["pgd"].robust_acc, "Square broke some"
    assert by["square"].settings.endswith("on the examples every other attack left standing")


@pytest.mark.parametrize("standing, broken, flagged", [
    (100, 1, False),   # 1 of 16 at 100/160 standing: 3.9 points, but within a 5% tail
    (100, 4, True),    # 4 of 16: 15.6 points, and P(K >= 4 | 16, 5%) = 0.7%
    (10, 4, True),     # 4 of the 10 standing: 2.5 points, P(K >= 4 | 10, 5%) = 0.1%
    (10, 3, False),    # 3 of them: beyond the tail (1.2%), but 1.9 points
    (160, 1, False),   # 1 of 16 with every example standing: 6.25 points, within the tail
])
def test_the_restart_check_flags_a_material_fall_beyond_a_converged_tail(standing, broken,
                                                                         flagged):
    """The restart check's two conditions in closed form: the implied fall of the worst
    case (share broken of the sample × share standing, in points) above 2, and a count
    of breaks a 5% tail explains with probability at most 5% (binomial)."""
    from types import SimpleNamespace

    from robustmix.attacks.diagnostics import restart

    n, eps = 160, Eps("20/255")
    flags = torch.zeros(n, dtype=torch.bool)
    flags[:standing] = True
    outcomes = Outcomes(torch.ones(n, dtype=torch.bool), {eps: {"apgd": flags}})

    def attack(name, at, chosen, *, restart):
        after = torch.ones(int(chosen.sum()), dtype=torch.bool)
        after[:broken] = False
        return after

    probe = SimpleNamespace(attack=attack, config=SimpleNamespace(seed=0))
    check = restart(probe, outcomes, eps, DiagnosticSettings())
    sampled = min(16, standing)
    assert check.value == pytest.approx(100 * standing / n * broken / sampled)
    assert check.passed == (not flagged)
