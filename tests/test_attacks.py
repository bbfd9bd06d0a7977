"""The attack runner: closed forms, agreement with torchattacks (where it is installed, the
`torchattacks` extra), guards, and the exact sweep."""

import math

import pytest
import torch
from torch import nn

from robustmix.attacks import AttackConfig, AttackError, PGDSettings, parse_eps, robustness
from robustmix.attacks import autoattack as autoattack_module
from robustmix.attacks import sweep as sweep_module
from robustmix.attacks.eps import Eps
from robustmix.attacks.gradient import fgsm, pgd
from robustmix.attacks.guards import check_adversarial
from robustmix.core.errors import ConfigError, UsageError

from helpers import OneAtATime, two_conv_cnn


def tiny_data(n=64, seed=1, classes=10):
    """Inputs and the labels a model predicts on them, so every example starts correct."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    return x, torch.randint(0, classes, (n,), generator=g)


def correct_labels(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


class Linear2(nn.Module):
    """Two-class linear model z = W x + b on flattened inputs."""

    def __init__(self, w, b):
        super().__init__()
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(b)

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


EPS_GRID = tuple(parse_eps("0.02,0.05,0.1,0.2"))


# ---------------------------------------------------------------------------- ε parsing


def test_eps_parsing_accepts_fractions_decimals_and_lists():
    assert parse_eps("8/255") == [Eps("8/255")]
    assert [e.value for e in parse_eps("4/255, 0.031,1/255,4/255")] == [1 / 255, 4 / 255, 0.031]
    assert parse_eps("8/255")[0].text == "8/255"


@pytest.mark.parametrize("text", ["-1/255", "0", "1/0", "nan", "inf", "abc", "1/2/3", "",
                                  "1/255,,2/255", "0/0", "8/-255"])
def test_eps_parsing_refuses_bad_budgets(text):
    with pytest.raises(ConfigError, match="^eps ") as caught:
        parse_eps(text)
    assert caught.value.field == "eps" and isinstance(caught.value, ValueError)


# ---------------------------------------------------------------------------- closed forms


def test_fgsm_and_pgd_on_a_linear_model_match_the_closed_form():
    torch.manual_seed(0)
    d = 36
    model = Linear2(torch.randn(2, d), torch.zeros(2))
    x = 0.3 + 0.4 * torch.rand(400, 1, 6, 6)  # far enough from 0 and 1 that nothing clips
    y = correct_labels(model, x)
    w = model.w.detach()
    margin = (x.flatten(1) @ (w[0] - w[1])).abs()
    l1 = (w[0] - w[1]).abs().sum()
    config = AttackConfig(attacks=("fgsm", "pgd"), eps=tuple(parse_eps("0.01,0.02,0.04")),
                          pgd=PGDSettings(steps=10))
    result = robustness(model, x, y, config)
    for eps in config.eps:
        expected = (margin > eps.value * l1).float().mean().item()
        for attack in ("fgsm", "pgd", "worst-case"):
            assert result.robust[(attack, eps.value)].float().mean().item() == \
                pytest.approx(expected)
    # the FGSM example itself: x − ε·sign(w_y − w_other)
    x_adv = fgsm(model, x, y, 0.02, "linf")
    direction = torch.where(y.view(-1, 1) == 0, (w[0] - w[1]).sign(), (w[1] - w[0]).sign())
    torch.testing.assert_close(x_adv.flatten(1), x.flatten(1) - 0.02 * direction)


# ---------------------------------------------------------------------------- vs torchattacks


def test_fgsm_equals_torchattacks():
    torchattacks = pytest.importorskip("torchattacks")
    model = two_conv_cnn()
    x, _ = tiny_data(32)
    y = correct_labels(model, x)
    # the same formula in the same float order: equal up to the last bit of x + ε·sign
    torch.testing.assert_close(fgsm(model, x, y, 0.03, "linf"),
                               torchattacks.FGSM(model, eps=0.03)(x, y), atol=0, rtol=0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_step_equals_torchattacks_without_random_start(norm):
    torchattacks = pytest.importorskip("torchattacks")
    model = two_conv_cnn()
    x, _ = tiny_data(32)
    y = correct_labels(model, x)
    eps, step, steps = (0.05, 0.01, 7) if norm == "linf" else (0.5, 0.1, 7)
    ours, _ = pgd(model, x, y, torch.arange(32), eps, norm,
                  PGDSettings(steps=steps, step_size=step, random_start=False), seed=0,
                  early_exit=False)
    reference_attack = (torchattacks.PGD(model, eps=eps, alpha=step, steps=steps,
                                         random_start=False) if norm == "linf" else
                        torchattacks.PGDL2(model, eps=eps, alpha=step, steps=steps,
                                           random_start=False))
    torch.testing.assert_close(ours, reference_attack(x, y), atol=1e-6, rtol=0)


def test_pgd_finds_at_least_what_torchattacks_finds():
    torchattacks = pytest.importorskip("torchattacks")
    model = two_conv_cnn()
    x, _ = tiny_data(64)
    y = correct_labels(model, x)
    settings = PGDSettings(steps=10, step_size=0.01, random_start=False)
    _, ours = pgd(model, x, y, torch.arange(64), 0.04, "linf", settings, seed=0)
    theirs = torchattacks.PGD(model, eps=0.04, alpha=0.01, steps=10, random_start=False)(x, y)
    with torch.no_grad():
        their_broken = model(theirs).argmax(1) != y
    assert their_broken.any() and not their_broken.all()
    assert (ours | ~their_broken).all(), "early exit and the best iterate never lose a break"


# ---------------------------------------------------------------------------- guards


@pytest.fixture(scope="module")
def sweep():
    model = OneAtATime(two_conv_cnn())
    x, _ = tiny_data(96)
    y = correct_labels(model, x)
    y[:10] = (y[:10] + 1) % 10  # ten examples misclassified from the start
    config = AttackConfig(attacks=("fgsm", "pgd"), eps=EPS_GRID, batch_size=32,
                          pgd=PGDSettings(steps=8, restarts=2))
    return model, x, y, config, robustness(model, x, y, config)


def test_robust_never_above_clean_and_never_rising_with_eps(sweep):
    *_, result = sweep
    assert result.clean.sum() == 86
    for attack in ("fgsm", "pgd", "worst-case"):
        series = [result.robust[(attack, e.value)] for e in EPS_GRID]
        assert not (series[0] & ~result.clean).any()
        for smaller, larger in zip(series, series[1:]):
            assert not (larger & ~smaller).any()
        assert series[-1].sum() < series[0].sum(), "the grid must show some breaks"


def test_misclassified_and_already_broken_examples_are_never_attacked(sweep):
    *_, result = sweep
    rows = {(r.attack, r.eps.value): r for r in result.rows}
    for attack in ("fgsm", "pgd"):
        assert rows[(attack, EPS_GRID[0].value)].n_attacked == 86
        for smaller, larger in zip(EPS_GRID, EPS_GRID[1:]):
            standing = result.robust[(attack, smaller.value)].sum().item()
            assert rows[(attack, larger.value)].n_attacked == standing


def test_the_sweep_is_exact_and_cheaper_than_independent_attacks(sweep):
    model, x, y, config, result = sweep
    sweep_passes = sum(r.forward_passes + r.backward_passes for r in result.rows)
    independent_passes = 0
    previous = result.clean
    for eps in EPS_GRID:
        alone = robustness(model, x, y, AttackConfig(attacks=config.attacks, eps=(eps,),
                                                    batch_size=32, pgd=config.pgd))
        independent_passes += sum(r.forward_passes + r.backward_passes for r in alone.rows)
        for attack in config.attacks:
            assert torch.equal(result.robust[(attack, eps.value)],
                               alone.robust[(attack, eps.value)] & _previous(result, attack, eps))
        previous = result.robust[("worst-case", eps.value)]
    assert sweep_passes < independent_passes


def _previous(result, attack, eps):
    values = [e.value for e in EPS_GRID]
    index = values.index(eps.value)
    return result.clean if index == 0 else result.robust[(attack, values[index - 1])]


def test_batch_size_order_and_subset_change_no_result(sweep):
    model, x, y, config, result = sweep
    other = robustness(model, x, y, AttackConfig(attacks=config.attacks, eps=EPS_GRID,
                                                 batch_size=7, pgd=config.pgd))
    for key, flags in result.robust.items():
        assert torch.equal(flags, other.robust[key]), key
    # a subset evaluated alone, with its indices, gets the same per-example verdicts
    subset = torch.arange(95, -1, -3)  # reversed order, every third example
    part = robustness(model, x[subset], y[subset], AttackConfig(
        attacks=config.attacks, eps=EPS_GRID, batch_size=5, pgd=config.pgd), indices=subset)
    for key, flags in part.robust.items():
        assert torch.equal(flags, result.robust[key][subset]), key


def test_worst_case_is_the_per_example_and_over_attacks(sweep):
    *_, result = sweep
    for eps in EPS_GRID:
        expected = result.robust[("fgsm", eps.value)] & result.robust[("pgd", eps.value)]
        assert torch.equal(result.robust[("worst-case", eps.value)], expected)


@pytest.mark.slow
def test_eval_mode_during_the_attack_and_former_mode_and_rng_after():
    model = two_conv_cnn()
    modes = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    model.train()
    x, _ = tiny_data(16)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    model.train()
    modes.clear()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    robustness(model, x, y, AttackConfig(attacks=("fgsm", "pgd", "apgd"),
                                         eps=(Eps("0.05"),), batch_size=8,
                                         pgd=PGDSettings(steps=3)))
    assert modes and not any(modes), "every forward pass during the attack is in eval mode"
    assert model.training
    assert torch.equal(torch.get_rng_state(), before)


def test_an_example_outside_the_ball_or_the_range_stops_the_run(monkeypatch):
    x = torch.full((4, 1, 8, 8), 0.5)
    check_adversarial(x + 0.05, x, 0.05, "linf", "pgd")
    with pytest.raises(AttackError, match="left the linf ball"):
        check_adversarial(x + 0.06, x, 0.05, "linf", "pgd")
    with pytest.raises(AttackError, match="left the l2 ball"):
        check_adversarial(x + 0.1, x, 0.5, "l2", "pgd")
    with pytest.raises(AttackError, match=r"\[0, 1\]"):
        check_adversarial(x * 2.05, x, 1.1, "linf", "pgd")

    # a user's attack passes the same guard as the built-ins
    from robustmix.attacks import registry

    monkeypatch.setitem(registry._REGISTRY, "too-far", registry.Attack(
        "too-far", lambda model, x, y, eps, norm, settings, draws: x + 2 * eps))
    model = two_conv_cnn()
    xs, _ = tiny_data(8)
    with pytest.raises(AttackError, match="too-far left the linf ball"):
        robustness(model, xs, correct_labels(model, xs),
                   AttackConfig(attacks=("too-far",), eps=(Eps("0.01"),)))


# ---------------------------------------------------------------------------- AutoAttack


@pytest.mark.slow
def test_apgd_runs_and_reports_its_checks():
    model = two_conv_cnn()
    x, _ = tiny_data(12)
    y = correct_labels(model, x)
    config = AttackConfig(attacks=("pgd", "apgd"), eps=tuple(parse_eps("0.02,0.1")),
                          batch_size=6, pgd=PGDSettings(steps=10))
    result = robustness(model, x, y, config)
    rows = {(r.attack, r.eps.value): r for r in result.rows}
    assert rows[("apgd", 0.1)].robust_acc <= rows[("apgd", 0.02)].robust_acc
    assert rows[("apgd", 0.1)].robust_acc < 1.0
    assert rows[("apgd", 0.02)].checks == []

    probabilities = nn.Sequential(model, nn.Softmax(dim=1))
    result = robustness(probabilities, x, y, AttackConfig(
        attacks=("apgd",), eps=(Eps("0.02"),), batch_size=6))
    checks = result.rows[0].checks
    assert any("probability distribution" in c for c in checks), checks
    assert checks[0] in result.rows[-1].checks  # and the worst-case row carries it too


@pytest.mark.slow
def test_autoattack_resumes_where_it_stopped(tmp_path, monkeypatch):
    model = two_conv_cnn()
    x, _ = tiny_data(12)
    y = correct_labels(model, x)
    config = AttackConfig(attacks=("apgd",), eps=(Eps("0.01"),), batch_size=4)
    real = autoattack_module._perturb
    uninterrupted = []
    monkeypatch.setattr(autoattack_module, "_perturb",
                        lambda *args: uninterrupted.append(args[1]) or real(*args))
    reference = robustness(model, x, y, config)
    assert uninterrupted.count("apgd-t") >= 2

    calls = []

    def dies_in_the_second_targeted_batch(adversary, component, *args):
        calls.append(component)
        if calls.count("apgd-t") == 2:  # APGD-CE done, one APGD-T batch done
            raise KeyboardInterrupt
        return real(adversary, component, *args)

    monkeypatch.setattr(autoattack_module, "_perturb", dies_in_the_second_targeted_batch)
    with pytest.raises(KeyboardInterrupt):
        robustness(model, x, y, config, state_dir=tmp_path)
    states = list(tmp_path.iterdir())
    assert len(states) == 1
    counted = []
    monkeypatch.setattr(autoattack_module, "_perturb",
                        lambda *args: counted.append(args[1]) or real(*args))
    progress = []
    real_ensemble = sweep_module.run_ensemble

    def reporting(*args, on_batch, **kwargs):
        return real_ensemble(*args, on_batch=lambda k: progress.append(k) or on_batch(k),
                             **kwargs)

    monkeypatch.setattr(sweep_module, "run_ensemble", reporting)
    resumed = robustness(model, x, y, config, state_dir=tmp_path)
    assert sum(progress) == 2 * 12, "the progress bar ends full: N × (APGD-CE, APGD-T)"
    assert progress[0] == 12, "APGD-CE, done before the interruption, counts whole"
    # only the APGD-T batches not yet done run again
    assert counted == ["apgd-t"] * (uninterrupted.count("apgd-t") - 1)
    assert torch.equal(resumed.robust[("apgd", 0.01)],
                       reference.robust[("apgd", 0.01)])
    assert list(tmp_path.iterdir()) == []


def test_bad_attack_settings_are_refused():
    with pytest.raises(ConfigError, match="^attacks has unknown attack 'cw'"):
        AttackConfig(attacks=("cw",)).validate()
    with pytest.raises(UsageError, match="fgsm is an L∞ attack"):
        AttackConfig(attacks=("fgsm",), norm="l2").validate()
    with pytest.raises(ConfigError, match="^norm must be one of"):
        AttackConfig(norm="l1").validate()
    assert math.isclose(PGDSettings().step_for(0.08), 0.02)


# ---------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def mixup_run(tmp_path_factory):
    from robustmix.app.cli import main

    out = tmp_path_factory.mktemp("attack") / "run"
    assert main(["train", "--quiet", "--epochs", "1", "--mix", "mixup", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_attack_command_writes_the_csv_and_merges_reruns(mixup_run, capsys):
    import csv

    from robustmix.attacks.table import CSV_FIELDS
    from robustmix.app.cli import main

    argv = ["attack", "--quiet", str(mixup_run), "--eps", "2/255,16/255",
            "--attacks", "fgsm,pgd", "--pgd-steps", "5", "--n-examples", "60"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "worst-case" in printed and "16/255" in printed
    rows = list(csv.DictReader((mixup_run / "robustness.csv").open()))
    assert list(rows[0]) == CSV_FIELDS
    assert {(r["attack"], r["eps"]) for r in rows} == {
        (a, e) for a in ("fgsm", "pgd", "worst-case") for e in ("2/255", "16/255")}
    for row in rows:
        assert int(row["n_examples"]) == 60
        assert float(row["robust_acc"]) <= float(row["clean_acc"])
        assert float(row["eps_value"]) == pytest.approx(eval(row["eps"]))
    assert main(argv) == 0  # the same evaluation again replaces its rows
    assert len(list(csv.DictReader((mixup_run / "robustness.csv").open()))) == len(rows)


@pytest.mark.slow
def test_worst_case_covers_attacks_run_in_separate_commands(mixup_run, tmp_path, capsys):
    """FGSM in one command, PGD in another: the worst-case row is the per-example minimum
    over both, equal to the worst case of one command that runs both."""
    import shutil

    from robustmix.attacks import worst_case
    from robustmix.attacks.table import read_rows
    from robustmix.app.cli import main
    from robustmix.core.runs import ROBUSTNESS_EXAMPLES

    apart, together = tmp_path / "apart", tmp_path / "together"
    for run in (apart, together):
        shutil.copytree(mixup_run, run)
        for name in ("robustness.csv", ROBUSTNESS_EXAMPLES):
            (run / name).unlink(missing_ok=True)
    common = ["--quiet", "--eps", "4/255,16/255", "--pgd-steps", "5", "--n-examples", "60"]
    for attacks in ("fgsm", "pgd"):
        assert main(["attack", str(apart), "--attacks", attacks, *common]) == 0
    assert main(["attack", str(together), "--attacks", "fgsm,pgd", *common]) == 0
    capsys.readouterr()

    def rows(run):
        return {(r["attack"], r["eps"]): r for r in read_rows(run / "robustness.csv")}

    a, b = rows(apart), rows(together)
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key]["robust_acc"], a[key]["settings"]) == (b[key]["robust_acc"],
                                                             b[key]["settings"]), key
    # the worst case of both commands, the diagnostics' own attacks (restart, noise) among
    # the attacks it takes the minimum over
    named = a["worst-case", "16/255"]["settings"].removeprefix("per-example worst of ")
    assert {"fgsm", "pgd"} <= set(named.split(","))
    flags = {(r["attack"], r["eps"]): worst_case.decode(r["standing"])
             for r in worst_case.read(apart / ROBUSTNESS_EXAMPLES)}
    worst = torch.stack([f for (attack, eps), f in flags.items()
                         if eps == "16/255"]).all(0).float().mean().item()
    assert float(a["worst-case", "16/255"]["robust_acc"]) == pytest.approx(worst, abs=1e-6)
    assert {attack for attack, _ in flags} == set(named.split(",")), "no worst-case rows"


def test_a_robustness_file_without_its_evaluation_columns_is_refused(tmp_path):
    """robustness.csv has one format: a file lacking ``evaluation`` and ``diagnostics`` is a
    one-line UsageError naming the file, not rows read with those columns empty."""
    import csv

    from robustmix.attacks.table import CSV_FIELDS, read_rows

    path = tmp_path / "robustness.csv"
    row = {"run": "r", "attack": "fgsm", "settings": "", "norm": "linf", "eps": "8/255",
           "eps_value": "0.03137254901960784", "n_examples": "10", "n_attacked": "9",
           "clean_acc": "0.9", "robust_acc": "0.5", "seconds": "1.0", "forward_passes": "9",
           "backward_passes": "9", "checks": "", "evaluation": "FGSM", "diagnostics": ""}
    for fields in (CSV_FIELDS, CSV_FIELDS[:-2]):
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerow(row)
        if fields == CSV_FIELDS:
            assert read_rows(path) == [row]
    with pytest.raises(UsageError, match="robustness.csv"):
        read_rows(path)


@pytest.mark.slow
@pytest.mark.parametrize("argv, fragment", [
    (["--eps=-1/255"], "must be positive"),
    (["--eps", "1/0"], "zero denominator"),
    (["--eps", "nan"], "must be positive and finite"),
    (["--eps", "eight"], "is not a number"),
    (["--attacks", "fgsm,cw"], "unknown attack 'cw'"),
    (["--norm", "l2", "--attacks", "fgsm"], "fgsm is an L∞ attack"),
])
def test_bad_attack_input_is_one_line_and_exit_2(mixup_run, capsys, argv, fragment):
    from robustmix.app.cli import main

    before = sorted(p.name for p in mixup_run.iterdir())
    try:
        code = main(["attack", str(mixup_run), *argv])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and fragment in err, err
    assert sorted(p.name for p in mixup_run.iterdir()) == before


@pytest.mark.slow
def test_unfinished_missing_or_code_carrying_runs_are_refused(mixup_run, tmp_path, capsys):
    import shutil

    from robustmix.core import runs
    from robustmix.app.cli import main

    def attack(run):
        code = main(["attack", "--quiet", str(run), "--attacks", "fgsm"])
        return code, capsys.readouterr().err.strip()

    code, err = attack(tmp_path / "nope")
    assert code == 2 and "no such run directory" in err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(mixup_run, unfinished)
    (unfinished / runs.WEIGHTS).unlink()
    code, err = attack(unfinished)
    assert code == 2 and "no finished run" in err and "--resume" in err

    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil"
    shutil.copytree(mixup_run, evil)
    torch.save({"weights": Evil()}, evil / runs.WEIGHTS)  # a pickle under the weights' name
    code, err = attack(evil)
    assert code == 2 and "not a readable safetensors" in err and len(err.splitlines()) == 1
    assert not marker.exists()


# ---------------------------------------------------------------------------- torchattacks


def test_a_torchattacks_attack_runs_through_the_registry_with_the_same_guards():
    """torchattacks' FGSM, through the adapter, breaks exactly the examples robustmix's own
    FGSM breaks (the same formula); CW, which has no budget, is projected into the ball."""
    pytest.importorskip("torchattacks")
    model = two_conv_cnn()
    x, _ = tiny_data(32)
    y = correct_labels(model, x)
    config = AttackConfig(attacks=("fgsm", "torchattacks:FGSM", "torchattacks:CW"),
                          eps=tuple(parse_eps("0.02,0.05")),
                          options={"torchattacks:CW": {"steps": 20}})
    result = robustness(model, x, y, config)
    for eps in config.eps:
        assert torch.equal(result.robust[("fgsm", eps)], result.robust[("torchattacks:FGSM", eps)])
    rows = {(r.attack, r.eps.text): r for r in result.rows}
    assert "projected onto the ε-ball" in rows[("torchattacks:CW", "0.05")].settings
    assert rows[("torchattacks:FGSM", "0.02")].evaluation == "torchattacks FGSM"


def test_torchattacks_settings_and_names_are_checked():
    pytest.importorskip("torchattacks")
    with pytest.raises(ConfigError, match="torchattacks has no attack 'Nope'"):
        AttackConfig(attacks=("torchattacks:Nope",)).validate()
    with pytest.raises(ConfigError, match="torchattacks:CW has no setting cc; it has c, "):
        AttackConfig(attacks=("torchattacks:CW",), norm="l2",
                     options={"torchattacks:CW": {"cc": 1}}).validate()
    with pytest.raises(ConfigError, match="torchattacks:PGDL2 is an L2 attack"):
        AttackConfig(attacks=("torchattacks:PGDL2",)).validate()


@pytest.mark.slow
def test_a_missing_torchattacks_is_one_line_naming_the_install(mixup_run, monkeypatch, capsys):
    import sys

    from robustmix.attacks import registry
    from robustmix.app.cli import main

    monkeypatch.setitem(sys.modules, "torchattacks", None)   # as if not installed
    monkeypatch.delitem(registry._REGISTRY, "torchattacks:CW", raising=False)
    code = main(["attack", str(mixup_run), "--attacks", "torchattacks:CW"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "pip install 'robustmix[torchattacks]'" in err


def test_a_plugin_attack_carries_its_cost_and_its_report_order(monkeypatch):
    """The time bound and the report's order read an attack's record: a plugin registered
    with a cost and an order is counted and placed by them, one without either is guessed
    from its steps and placed after the worst case."""
    from robustmix.attacks import plan, registry
    from robustmix.evaluations.plots import attack_order

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_attack("costed", lambda *a: a[1], defaults={"steps": 5},
                             cost=lambda settings, n_classes: 3 * settings["steps"] * n_classes,
                             order=15)
    registry.register_attack("plain", lambda *a: a[1], defaults={"rounds": 5})
    assert plan.passes("costed", {"steps": 5}, 4) == (60.0, True)
    assert plan.passes("plain", {"rounds": 5}, 4) == (1.0, False)
    config = AttackConfig(attacks=("fgsm", "costed", "plain"))
    estimate = plan.bound(config, 4, per_pass=0.5, n=10)
    assert estimate.passes == 1 + 60 + 1 and estimate.guessed == ("plain",)
    assert attack_order(["plain", "worst-case", "pgd", "costed", "fgsm"]) == [
        "fgsm", "costed", "pgd", "worst-case", "plain"]
    with pytest.raises(ConfigError, match="cost"):
        registry.register_attack("bad-cost", lambda *a: a[1], cost=3)
