"""Attack-failure diagnostics: models that mask their gradients are flagged, a normal one is
not, what the flags say reaches robustness.csv's worst-case rows, and the gate withholds
only what is in doubt (issue 31).

The models: a small CNN trained on the digits (normal); the same network with its last
layer's weights and bias multiplied by 10,000 (the same predictions, but a float32 softmax
that is one-hot, so the cross-entropy's gradient vanishes and FGSM and PGD find nothing);
the trained network behind a non-differentiable input step (rounding to 4 grey levels,
whose gradient is zero almost everywhere); and behind an 8-level input quantizer whose
backward pass returns pseudo-random noise (a shattered gradient that is not zero).
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustmix.attacks import AttackConfig, parse_eps, robustness
from robustmix.attacks.diagnostics import (DiagnosticSettings, Outcomes, diagnose_result,
                                           failed_worst, gradient_flags, single_step)
from robustmix.attacks.eps import Eps
from robustmix.attacks.table import read_rows

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


class _NoisyQuantize(torch.autograd.Function):
    generator = torch.Generator().manual_seed(0)

    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 7) / 7

    @staticmethod
    def backward(ctx, grad):  # pseudo-random, of the incoming gradient's size
        noise = torch.randn(grad.shape, generator=_NoisyQuantize.generator).to(grad)
        return noise * grad.abs().mean()


class QuantizeInput(nn.Module):
    """x -> round(7x)/7 (8 levels) forward; a pseudo-random gradient backward."""

    def forward(self, x):
        return _NoisyQuantize.apply(x)


def evaluate(model, x, y):
    with one_thread():
        result = robustness(model, x, y, CONFIG)
        checks = diagnose_result(model, x, y, result, CONFIG, settings=SETTINGS)
    return result, checks


@pytest.mark.slow
def test_a_normal_model_raises_no_flag_on_its_worst_case(digits):
    net, x, y = digits
    result, checks = evaluate(net, x, y)
    assert result.rows[-1].robust_acc < result.rows[-2].robust_acc, "the attacks break some"
    assert failed_worst(checks) == {eps: [] for eps in EPS}, \
        [c for c in checks if not c.passed]


@pytest.mark.slow
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


@pytest.mark.slow
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
    from robustmix.attacks.diagnostics import CHECKS, REPORTING, read
    from robustmix.app.cli import main
    from robustmix.core import runs

    paths = []
    for mix in ("vanilla", "mixup"):
        out = tmp_path / mix
        assert main(["train", "--quiet", "--epochs", "1", "--image-size", "8", "--mix", mix,
                     "--out", str(out)]) == 0
        paths.append(str(out))
    assert main(["attack", "--quiet", *paths, "--eps", "16/255,32/255",
                 "--attacks", "fgsm,pgd", "--pgd-steps", "3", "--n-examples", "24"]) == 0
    printed = capsys.readouterr().out
    assert f"transfer from {paths[1]} to {paths[0]}" in printed  # another recipe
    assert f"transfer from {paths[0]} to {paths[1]}" in printed
    for path in paths:
        rows = read(runs.RunDir(path).diagnostics_path)
        found = {(r["check"], r["eps"]) for r in rows}
        expected = {(c, e) for c in set(CHECKS) - {"unbounded"} for e in ("16/255", "32/255")}
        assert expected <= found and ("unbounded", "1") in found, expected - found
        column = {r["attack"]: r["diagnostics"] for r in runs.read_csv(
            runs.RunDir(path).robustness_path) if r["eps"] == "32/255"}
        failed = {r["check"] for r in rows if r["passed"] == "no" and r["eps"] == "32/255"
                  and r["attack"] in ("worst-case", "pgd") and r["check"] not in REPORTING}
        if failed:
            assert set(column["worst-case"].removeprefix("failed: ").split(",")) == failed
        else:
            assert column["worst-case"] == "passed"


HIDDEN_CHECKS = DiagnosticSettings(sample=2, noise_sample=4, noise_draws=4)


def _hidden_run(tmp_path, monkeypatch, wrapper) -> tuple:
    """A short digits run whose model the attacks meet behind ``wrapper`` (the run
    directory), and FGSM + PGD at 24/255 to attack it with."""
    from robustmix.attacks import runner
    from robustmix.app.cli import main
    from robustmix.models.weights import load_model

    out = tmp_path / "run"
    assert main(["train", "--quiet", "--epochs", "2", "--image-size", "8",
                 "--out", str(out)]) == 0
    monkeypatch.setattr(runner, "load_model",
                        lambda path: nn.Sequential(wrapper(), load_model(path)).eval())
    return out, AttackConfig(attacks=("fgsm", "pgd"), eps=tuple(parse_eps("24/255")),
                             batch_size=64)


@pytest.mark.slow
@pytest.mark.parametrize("wrapper, flag", [(RoundInput, "zero-gradients"),
                                           (QuantizeInput, "shattered-gradients")])
def test_square_runs_where_a_check_flags_and_its_breaks_lower_the_worst_case(
        tmp_path, monkeypatch, wrapper, flag):
    """A run whose model hides behind an input step (zero gradient) or a quantizer with a
    pseudo-random gradient: the gradient attacks find little, a check flags it, and Square
    (gradient-free) then attacks the examples still standing; its breaks lower the worst
    case, which names it, and the flag stays."""
    from robustmix.attacks import attack_run, worst_case
    from robustmix.core import runs

    out, config = _hidden_run(tmp_path, monkeypatch, wrapper)
    rows = attack_run(out, config, n_examples=16, diagnostics=HIDDEN_CHECKS)
    by = {r.attack: r for r in rows}
    assert flag in by["worst-case"].diagnostics
    assert 0 < by["square"].n_attacked <= round(by["pgd"].robust_acc * 16)
    assert by["worst-case"].robust_acc < by["pgd"].robust_acc, "Square broke some"
    assert by["square"].settings.endswith("on the examples every other attack left standing")
    assert "Square" in by["worst-case"].evaluation
    examples = worst_case.read(out / runs.ROBUSTNESS_EXAMPLES)
    square = next(r for r in examples if r["attack"] == "square")
    assert by["square"].n_attacked - square["standing"].count("1") > 0


@pytest.mark.slow
def test_a_square_escalation_cut_off_is_not_done_and_a_rerun_completes_it(tmp_path,
                                                                         monkeypatch):
    """Killed while Square attacks where a check flagged, an attack has written its
    diagnosed rows but not Square's: a study must not count the step done, and the rerun
    runs Square and clears the mark."""
    from robustmix.app import study
    from robustmix.attacks import attack_run, runner
    from robustmix.core import runs

    out, config = _hidden_run(tmp_path, monkeypatch, RoundInput)
    settings = HIDDEN_CHECKS
    square = runner.square_where_flagged

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(runner, "square_where_flagged", killed)
    with pytest.raises(KeyboardInterrupt):
        attack_run(out, config, n_examples=16, diagnostics=settings)
    marked = runs.RunDir(out).square_pending_path
    assert marked.is_file() and study._attacked(out, config, 16, True) is False
    # the diagnosed rows were on file: without the mark the step would count as done
    assert study._attack_key(config) <= {
        (r["attack"], r["settings"], r["norm"], Eps(r["eps"]))
        for r in read_rows(runs.RunDir(out).robustness_path) if r["diagnostics"]}
    monkeypatch.setattr(runner, "square_where_flagged", square)
    rows = attack_run(out, config, n_examples=16, diagnostics=settings)
    assert "square" in {r.attack for r in rows} and not marked.exists()
    assert study._attacked(out, config, 16, True)


def _fake_probe(breaks: dict[int, int], calls: list):
    """A probe whose restart from seed + offset breaks the first ``breaks[offset]`` of the
    examples it is given (every call logged)."""
    from types import SimpleNamespace

    def attack(name, at, chosen, *, offset):
        calls.append((offset, int(chosen.sum())))
        after = torch.ones(int(chosen.sum()), dtype=torch.bool)
        after[:breaks.get(offset, 0)] = False
        return after

    return SimpleNamespace(attack=attack, config=SimpleNamespace(seed=0))


def _standing(n: int, standing: int, eps: Eps) -> Outcomes:
    flags = torch.zeros(n, dtype=torch.bool)
    flags[:standing] = True
    return Outcomes(torch.ones(n, dtype=torch.bool), {eps: {"apgd": flags}})


@pytest.mark.parametrize("standing, first, second, withheld", [
    (100, 0, 0, False),   # nothing broken: no escalation
    (100, 1, 1, False),   # 1 of 16 at 100/160 standing: 3.6 points, but P(K >= 1 | 16, 5%) 56%
    (100, 4, 0, False),   # 4 of 16, but the confirming restart breaks none
    (100, 4, 4, True),    # 4 of 16 again at 92/160: P(K >= 4 | 16, 5%) = 0.7%
    (10, 4, 3, False),    # the confirming 3 of the 6 left: 1.9 points
    (160, 1, 1, False),   # 1 of 16 with every example standing: within the tail
    (30, 3, 3, False),    # 3 of 16 at 24/160: 2.8 points, beyond the 5% tail (the old rule
                          # withheld), but P(K >= 3 | 16, 13.3%) = 36% at the 2-point rate
    (30, 7, 7, True),     # 7 of 16 at 16/160: P(K >= 7 | 16, 20%) = 2.7%
])
def test_the_restart_withholds_only_a_fall_that_more_effort_confirms(standing, first, second,
                                                                      withheld):
    """The restart check in closed form. A restart (seed + 1) on 16 sampled standing
    examples; where it breaks any, the same restart on the other standing examples, then a
    restart from seed + 2 on a fresh sample, whose breaks must reject (binomial, one-sided,
    5%) a restart rate of max(5% tail, the rate that lowers the worst case by 2 points)
    for the check to fail. Its value is the implied fall (share broken of the sample ×
    share standing, in points). Every break is a real adversarial example: it leaves the
    worst case."""
    from robustmix.attacks.diagnostics import restart

    n, eps = 160, Eps("20/255")
    outcomes, calls = _standing(n, standing, eps), []
    settings = DiagnosticSettings()
    check = restart(_fake_probe({1: first, 2: second}, calls), outcomes, eps, settings)
    assert check.passed == (not withheld)
    sampled = min(16, standing)
    if not first:
        assert calls == [(1, sampled)] and check.value == 0 and not check.flagged
        return
    rest = standing - sampled                        # the examples the sample left out
    left = standing - first - min(first, rest)       # after the sample's and the rerun's breaks
    assert calls == [(1, sampled), (1, rest), (2, min(16, left))], calls
    assert check.value == pytest.approx(100 * left / n * min(second, left) / min(16, left))
    assert int(outcomes.worst(eps).sum()) == left - min(second, left), "every break counts"
    assert check.flagged, "a restart that broke something sends Square there"


@pytest.mark.slow
def test_a_weaker_attacks_break_keeps_the_verdict_and_joins_the_worst_case(digits, tmp_path):
    """A sound run in which APGD left standing one example that FGSM broke: the single-step
    check reports it on APGD's row, the worst case counts FGSM's break, and the worst-case
    rows say "passed", so the primary comparisons keep their verdicts."""
    from robustmix.attacks import runner, worst_case
    from robustmix.attacks.diagnostics import Probe, read
    from robustmix.core import runs
    from robustmix.evaluations.primary import _failed_checks

    net, x, y = digits
    with one_thread():
        result = robustness(net, x, y, CONFIG)
        eps = EPS[0]
        missed = (~result.robust[("fgsm", eps)] & ~result.robust[("apgd", eps)]).nonzero()
        k = int(missed[0])
        result.robust[("apgd", eps)][k] = True        # APGD "missed" what FGSM broke
        probe = Probe(net, x, y, torch.arange(len(y)), CONFIG, 10, "cpu")
        runner.store(tmp_path, CONFIG, result, [], probe, SETTINGS)
    rows = {(r["attack"], r["eps"]): r for r in runs.read_csv(tmp_path / runs.ROBUSTNESS)}
    assert rows[("apgd", eps.text)]["diagnostics"] == "failed: single-step"
    for e in EPS:
        assert rows[("worst-case", e.text)]["diagnostics"] == "passed", e
        assert _failed_checks(rows[("worst-case", e.text)]) == []
    (_, _, _, standing), *_ = worst_case.worst_cases(
        worst_case.read(tmp_path / runs.ROBUSTNESS_EXAMPLES), "linf", len(y))
    assert not standing[k], "FGSM's break is in the worst case"
    single = [r for r in read(tmp_path / runs.DIAGNOSTICS) if r["check"] == "single-step"
              and r["attack"] == "apgd" and r["eps"] == eps.text]
    assert [(r["value"], r["passed"]) for r in single] == [("1", "no")]


def test_a_quantized_input_with_a_pseudo_random_gradient_is_withheld_on_a_short_grid(digits):
    """An 8-level input quantizer whose backward returns pseudo-random noise: no gradient
    is zero and no softmax saturates, yet the shattered-gradient check withholds the worst
    case at every ε of a grid ending at 26/255 where anything stands (no "holds")."""
    from robustmix.evaluations.primary import _failed_checks
    from robustmix.attacks.diagnostics import column

    net, x, y = digits
    model = nn.Sequential(QuantizeInput(), net).eval()
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    config = dataclasses.replace(CONFIG, attacks=("fgsm", "pgd"), options={},
                                 eps=tuple(parse_eps("14/255,20/255,26/255")))
    with one_thread():
        result = robustness(model, x[keep], y[keep], config)
        checks = diagnose_result(model, x[keep], y[keep], result, config, settings=SETTINGS)
    flagged = failed_worst(checks)
    worst = {r.eps: r.robust_acc for r in result.rows if r.attack == "worst-case"}
    assert any(worst.values()), "the gradient attacks leave examples standing"
    for eps, acc in worst.items():
        if acc > 0:
            assert "shattered-gradients" in flagged[eps], (eps, flagged)
            assert _failed_checks({"diagnostics": column(flagged[eps])}), "withheld"
    assert not any("zero-gradients" in names for names in flagged.values())


def test_noise_and_transfer_breaks_join_the_worst_case_and_the_examples_file(digits, tmp_path):
    """Where the sweep's record says every example stands at a large ε, the noise check's
    random vertices and PGD transferred from a model break some: each break leaves the
    worst case (exactly the check's count), the checks withhold beyond their allowance,
    and the examples file holds their rows, which the worst case then includes."""
    from robustmix.attacks import runner, worst_case
    from robustmix.attacks.diagnostics import Probe, noise, transfer
    from robustmix.core import runs

    net, x, y = digits
    eps, n = Eps("96/255"), len(y)
    outcomes = Outcomes(torch.ones(n, dtype=torch.bool), {eps: {"apgd": torch.ones(n,
                                                                          dtype=torch.bool)}})
    probe = Probe(net, x, y, torch.arange(n), CONFIG, 10, "cpu")
    with one_thread():
        found = noise(probe, outcomes, eps, SETTINGS)
        after_noise = int(outcomes.worst(eps).sum())
        (moved,) = transfer(net, net, "itself", x, y, torch.arange(n), outcomes, CONFIG, "cpu",
                            SETTINGS)
    assert after_noise == n - found.value and found.value > 0
    assert int(outcomes.worst(eps).sum()) == after_noise - moved.value and moved.value > 0
    assert moved.passed == (moved.value <= SETTINGS.transfer_allowed)
    runner._record_found(runs.RunDir(tmp_path), "linf", outcomes, SETTINGS)
    rows = worst_case.read(tmp_path / runs.ROBUSTNESS_EXAMPLES)
    assert {r["attack"] for r in rows} == {"noise", "transfer"}
    rows.append({"attack": "apgd", "settings": "", "norm": "linf", "eps": eps.text,
                 "eps_value": "1", "n_examples": str(n), "clean": "1" * n,
                 "standing": "1" * n})
    ((_, attacks, _, standing),) = worst_case.worst_cases(rows, "linf", n)
    assert torch.equal(standing, outcomes.worst(eps)) and "noise" in attacks
    assert runner._label(attacks).endswith("noise, transfer"), "the checks' attacks named last"


def test_transfer_picks_a_source_of_another_recipe(tmp_path):
    """In a study, an MSDA run is attacked by transfer from the vanilla run of its variant
    and seed (else its variant's first vanilla), a vanilla run from the first MSDA run of
    its seed; so does the attack command, from the runs' own configs."""
    import json
    from pathlib import Path

    from robustmix.app.commands import _transfer_sources
    from robustmix.app.study import _recipe, transfer_sources

    names = ["vanilla-s0", "vanilla-s1", "vanilla-s2", "mixup-s0", "mixup-s1", "cutmix-s0",
             "cutmix-s3", "wide-vanilla-s0", "wide-mixup-s0", "wide-mixup-s1"]
    dirs = [Path("study/runs") / name for name in names]
    picked = {d.name: s.name for d, s in
              transfer_sources([(d, *_recipe(d.name, dirs)) for d in dirs]).items()}
    for target, source in picked.items():
        assert ("vanilla" in target) != ("vanilla" in source), (target, source)
        assert target.startswith("wide-") == source.startswith("wide-"), (target, source)
    assert picked["mixup-s1"] == "vanilla-s1" and picked["cutmix-s3"] == "vanilla-s0"
    assert picked["vanilla-s1"] == "mixup-s1" and picked["vanilla-s2"] == "mixup-s0"
    assert picked["wide-mixup-s1"] == "wide-vanilla-s0"
    paths = []
    for mix, seed in (("cutmix", 0), ("vanilla", 0), ("vanilla", 1), ("mixup", 1)):
        run = tmp_path / f"{mix}{seed}"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"train": {"mix": {"mix": mix},
                                                               "seed": seed}}))
        paths.append(str(run))
    chosen = {Path(k).name: Path(v).name for k, v in _transfer_sources(paths).items()}
    assert chosen == {"cutmix0": "vanilla0", "vanilla0": "cutmix0", "vanilla1": "mixup1",
                      "mixup1": "vanilla1"}
