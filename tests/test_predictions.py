"""Each prediction tested for what it claims, on frames shaped like a study's: the primary
statistic and its premises (the strong attack, attack-failure diagnostics, convergence),
FGSM and PGD against the worst case, TOST for "no effect", both halves of (c), and (d)/(e)
on the scale-free Q, paired by seed."""

import dataclasses

import numpy as np
import pytest
import torch

import synthetic_study as ss
from robustmix.attacks.worst_case import describe as worst_settings
from robustmix.evaluations import statistics as st
from robustmix.evaluations.declaration import Declaration, grid_mean
from robustmix.evaluations.predictions import MIXUP_Q, UNION, prediction_table
from robustmix.evaluations.primary import run_values
from robustmix.evaluations.regularizer import regularizer_table
from robustmix.evaluations.study_data import Runs


def _study(seed=0, effects=None, n=(6, 4)):
    return ss.study(np.random.default_rng(seed), ss.allocation(*n), effects)


def _rows(groups, per_run, robust, declaration=ss.DECLARATION):
    return prediction_table(groups, per_run, robust, declaration)


def _by(rows, family):
    return {r["comparison"]: r for r in rows if r["family"] == family}


def test_the_primary_statistic_is_the_trapezoid_mean_over_the_grid():
    groups, per_run, robust = _study()
    data = Runs(groups, per_run, robust, ss.DECLARATION)
    grid = ss.DECLARATION.grid()
    values, problems = run_values(data, groups[0], "worst-case", grid)
    first = robust[(robust["run"] == "vanilla-s0") & (robust["attack"] == "worst-case")]
    curve = first.sort_values("eps_key")["conditional"].to_numpy()
    # uniform grid: the average with the two end points half-weighted (ε is keyed by the
    # float of its exact value, so the steps are equal to float rounding: ~1e-15)
    expected = (curve.sum() - (curve[0] + curve[-1]) / 2) / (len(curve) - 1)
    assert values[0] == pytest.approx(expected, rel=1e-12)
    assert len(values) == 6 and problems == {"missing": [], "failed": []}


def test_the_grid_mean_does_not_depend_on_the_spacing():
    """A linear curve has the same mean over [a, b] on any grid over that interval (the
    trapezoid rule is exact for it), unlike an area from ε = 0 divided by ε_max."""
    def curve(e):
        return 0.9 - 3.0 * np.asarray(e)
    coarse, fine = np.linspace(0.05, 0.125, 3), np.linspace(0.05, 0.125, 11)
    assert grid_mean(curve(coarse), coarse) == pytest.approx(grid_mean(curve(fine), fine))
    assert grid_mean(curve(coarse), coarse) == pytest.approx(0.9 - 3.0 * 0.0875)


def test_a_worst_case_without_the_strong_attack_is_not_measured():
    groups, per_run, robust = _study()
    weak = (robust["run"] == "vanilla-s2") & (robust["attack"] == "worst-case") & \
        (robust["eps"] == "20/255")
    robust.loc[weak, "settings"] = worst_settings(["fgsm", "pgd"])
    primary = _by(_rows(groups, per_run, robust), "(b) primary")
    for r in primary.values():
        assert r["verdict"] == st.NOT_MEASURED
        assert "worst case at eps 20/255 was made without the strong attack" in r["note"]
        assert "vanilla-s2" in r["note"]
    # an attack is strong by its registered strength, not by its name: APGD's components
    # alone (strength 2) are not the strong attack, the standard AutoAttack (4) is
    robust.loc[weak, "settings"] = worst_settings(["apgd-ce", "apgd-t", "fgsm"])
    assert all(r["verdict"] == st.NOT_MEASURED for r in _by(
        _rows(groups, per_run, robust), "(b) primary").values())
    robust.loc[weak, "settings"] = worst_settings(["autoattack", "fgsm"])
    assert all(r["verdict"] != st.NOT_MEASURED for r in _by(
        _rows(groups, per_run, robust), "(b) primary").values())


@pytest.fixture
def strong_plugin():
    """A plugin attack registered as strong as APGD, removed again after the test."""
    from robustmix.attacks import registry

    attack = registry.register_attack("test-strong-plugin", lambda *args: args[1],
                                      strength=registry.STRONG)
    yield attack
    del registry._REGISTRY[attack.name]


def test_a_plugin_attack_as_strong_as_apgd_feeds_the_primaries(strong_plugin):
    """Worst cases made by FGSM, PGD and a plugin registered with APGD's strength (no APGD
    anywhere): the primaries are measured; the same plugin registered weaker: not."""
    groups, per_run, robust = _study()
    robust = robust[robust["attack"] != "apgd"].copy()
    worst = robust["attack"] == "worst-case"
    robust.loc[worst, "settings"] = worst_settings(["fgsm", "pgd", strong_plugin.name])
    robust.loc[worst, "evaluation"] = "worst of test-strong-plugin, PGD, FGSM"
    primary = _by(_rows(groups, per_run, robust), "(b) primary")
    assert primary and all(r["verdict"] != st.NOT_MEASURED for r in primary.values())
    from robustmix.attacks import registry

    registry.register_attack(strong_plugin.name, strong_plugin.perturb, replace=True)
    primary = _by(_rows(groups, per_run, robust), "(b) primary")
    assert all(r["verdict"] == st.NOT_MEASURED and "without the strong attack" in r["note"]
               for r in primary.values())


def test_a_failed_attack_check_replaces_the_verdict_and_stays_in_the_family():
    groups, per_run, robust = _study(effects=ss.Effects(robust={m: 8.0 for m in ss.METHODS[1:]}))
    bad = (robust["run"] == "cutmix-s1") & (robust["attack"] == "worst-case") & \
        (robust["eps"] == "20/255")
    robust.loc[bad, "diagnostics"] = "failed: gradient_masking,transfer"
    primary = _by(_rows(groups, per_run, robust), "(b) primary")
    cutmix = primary["cutmix vs vanilla"]
    assert cutmix["verdict"] == f"{st.ATTACK_FAILURE}: gradient_masking,transfer"
    assert "cutmix-s1" in cutmix["note"]
    assert all(r["correction"] == "Holm over 6 hypotheses, family-wise 0.05"
               for r in primary.values())
    assert primary["hmix vs vanilla"]["verdict"] == st.HOLDS


def test_the_primary_note_says_where_a_weaker_attack_decides_otherwise():
    """PGD leaves a large margin standing that APGD removes: the primary is inconclusive,
    and its note says PGD alone would have made it hold."""
    groups, per_run, robust = _study(n=(8, 5))
    pgd = (robust["group"] != "vanilla") & robust["attack"].isin(["pgd", "fgsm"])
    robust.loc[pgd, "conditional"] += 0.15
    rows = _rows(groups, per_run, robust)
    primary = _by(rows, "(b) primary")["cutmix vs vanilla"]
    assert primary["verdict"] == st.INCONCLUSIVE
    assert "holds under pgd alone, not under the worst case" in primary["note"]
    shadow = _by(rows, "(b) primary statistic under pgd alone")["cutmix vs vanilla"]
    assert (shadow["role"], shadow["verdict"]) == ("exploratory", "")
    assert "this would be: holds" in shadow["note"]
    cells = [r for r in rows if r["family"] == "(b) per eps and attack"]
    assert cells and all(r["verdict"] == "" and r["ci_level"] == "95%, unadjusted"
                         for r in cells)


def test_an_unconverged_run_leaves_its_comparisons_untested_and_named():
    groups, per_run, robust = _study()
    per_run["converged"] = per_run["converged"].astype(object)
    per_run.loc[per_run["run"] == "gmix-s0", ["converged", "convergence"]] = \
        [False, "held-out accuracy still climbing: +4.0 pp"]
    per_run.loc[per_run["run"] == "hmix-s0", "converged"] = None
    rows = _rows(groups, per_run, robust)
    gmix = _by(rows, "(b) primary")["gmix vs vanilla"]
    assert gmix["verdict"] == st.UNCONVERGED and "gmix-s0 (held-out" in gmix["note"]
    hmix = _by(rows, "(a) gap")["hmix vs vanilla"]
    assert "convergence not judged (no held-out data): 1 run" in hmix["note"]
    assert hmix["verdict"] != st.UNCONVERGED


def test_no_effect_only_through_an_equivalence_test():
    """(a): a precise zero difference is "no effect" (TOST within the declared margin); the
    same difference measured loosely stays inconclusive."""
    groups, per_run, robust = _study(n=(10, 10))
    rows = _by(_rows(groups, per_run, robust, Declaration(
        primary_eps=ss.GRID, gap_margin_acc=0.01, gap_margin_loss=0.02)), "(a) gap")
    assert {r["verdict"] for r in rows.values()} == {st.EQUIVALENT}
    assert all("TOST" in r["note"] for r in rows.values())
    loose = per_run.copy()
    loose["gap_acc"] = 0.005 + 0.05 * np.random.default_rng(1).normal(size=len(loose))
    rows = [r for r in _rows(groups, loose, robust) if r["statistic"].startswith("clean acc")
            and r["family"] == "(a) gap"]
    assert {r["verdict"] for r in rows} == {st.INCONCLUSIVE}


def test_profile_claim_has_both_halves():
    effects = ss.Effects(secondary={"cutmix": {"profile_decay": 8.0}})
    groups, per_run, robust = _study(effects=effects, n=(8, 8))
    rows = _by(_rows(groups, per_run, robust), "(c) profile")
    assert rows["cutmix vs mixup"]["verdict"] == st.HOLDS
    assert rows["cutmix vs vanilla"]["verdict"] == st.HOLDS
    assert rows["mixup vs vanilla"]["verdict"] == st.HOLDS          # equivalent, 0.02
    assert rows["mixup vs vanilla"]["correction"] == "Holm over 4 hypotheses, family-wise 0.05"
    against = ss.Effects(secondary={"cutmix": {"profile_decay": 8.0},
                                    "mixup": {"profile_decay": 20.0}})   # 0.064: beyond 0.02
    groups, per_run, robust = _study(effects=against, n=(8, 8))
    rows = _by(_rows(groups, per_run, robust), "(c) profile")
    assert rows["mixup vs vanilla"]["verdict"] == st.FAILS          # differs: against it


def test_own_mask_and_regularizer_pair_by_seed_and_leave_mixup_out():
    effects = ss.Effects(secondary={"cutmix": {"q_relative.cutmix": -4.0}})
    groups, per_run, robust = _study(effects=effects, n=(6, 6))
    rows = _rows(groups, per_run, robust)
    for family, test in (("(d) own mask", UNION), ("(e) regularizer", st.PAIRED)):
        mine = _by(rows, family)
        mixup = next(r for c, r in mine.items() if c.startswith("mixup"))
        assert mixup["verdict"] == st.NOT_TESTABLE and mixup["note"] == MIXUP_Q
        tested = [r for r in mine.values() if r["test"]]
        assert len(tested) == 5 and all(r["test"] == test for r in tested)
        assert all(r["correction"] == "Holm over 5 hypotheses, family-wise 0.05"
                   for r in tested)
        assert "paired over seeds 0,1,2,3,4,5" in tested[0]["note"]
    cutmix = _by(rows, "(e) regularizer")["cutmix vs vanilla on the cutmix mask"]
    assert cutmix["verdict"] == st.HOLDS


def _own_mask(effects, seed=0, n=(6, 4)):
    groups, per_run, robust = _study(seed, ss.Effects(secondary=effects), n)
    rows = _by(_rows(groups, per_run, robust), "(d) own mask")
    return rows["cutmix vs every other model on the cutmix mask"], per_run


def test_own_mask_second_lowest_never_holds():
    """The CutMix model far below vanilla and four MSDAs on the CutMix mask, but the HMix
    model lower still: (d) cannot hold for CutMix, and its note names HMix."""
    for seed in range(10):
        cutmix, _ = _own_mask({"cutmix": {"q_relative.cutmix": -8.0},
                               "hmix": {"q_relative.cutmix": -10.0}}, seed)
        assert cutmix["verdict"] == st.INCONCLUSIVE and cutmix["p_value"] == "1"
        assert "not the lowest on its own mask: hmix (paired p" in cutmix["note"]
        assert "decisive rival hmix" in cutmix["note"]
        assert cutmix["measured"].startswith("cutmix ") and " vs hmix " in cutmix["measured"]


def test_own_mask_clearly_lowest_holds_and_its_p_is_the_largest_pairwise_p():
    cutmix, per_run = _own_mask({"cutmix": {"q_relative.cutmix": -8.0},
                                 "gmix": {"q_relative.cutmix": -4.0}})
    assert cutmix["verdict"] == st.HOLDS
    q = {m: part.set_index("seed")["q_relative.cutmix"] for m, part in per_run.groupby("group")}
    pairwise = {m: st.paired(q["cutmix"], q[m].reindex(q["cutmix"].index))
                for m in q if m != "cutmix"}
    assert all(t.effect < 0 for t in pairwise.values())
    largest = max(pairwise, key=lambda m: pairwise[m].p_value())
    assert largest == "gmix" and f"decisive rival {largest}" in cutmix["note"]
    assert float(cutmix["p_value"]) == pytest.approx(pairwise[largest].p_value(), rel=1e-3)
    assert float(cutmix["effect"]) == pytest.approx(pairwise[largest].effect, rel=1e-3)
    # the paired seeds are the ones counted: 4 of vanilla's 6
    assert "(n=4)" in cutmix["measured"] and "(n=6)" not in cutmix["measured"]


def test_paired_measured_text_counts_the_pairs_the_test_uses():
    groups, per_run, robust = _study()
    rows = _by(_rows(groups, per_run, robust), "(e) regularizer")
    hmix = rows["hmix vs vanilla on the hmix mask"]
    assert hmix["measured"].count("(n=4)") == 2 and "paired over seeds 0,1,2,3" in hmix["note"]


def test_normalized_q_does_not_depend_on_the_scale_of_the_first_layer():
    """Q_A and Q_ref are quadratic in W: their ratio is the same for W and 3W."""
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    std = torch.tensor([0.3])
    before = regularizer_table(layer, std, images, masks=("cutmix", "hmix"), draws=64)
    with torch.no_grad():
        layer.weight.mul_(3.0)
    after = regularizer_table(layer, std, images, masks=("cutmix", "hmix"), draws=64)
    for mask in ("cutmix", "hmix"):
        assert after["q"][mask]["q"] == pytest.approx(9 * before["q"][mask]["q"], rel=1e-5)
        # float32 convolutions: the ratio agrees to their rounding, not to the last bit
        assert after["q"][mask]["relative"] == pytest.approx(before["q"][mask]["relative"],
                                                             rel=1e-5)


def test_a_declared_primary_without_runs_keeps_its_place_in_the_family():
    groups, per_run, robust = _study()
    keep = [g for g in groups if g.method != "gmix"]
    per_run = per_run[per_run["group"] != "gmix"]
    robust = robust[robust["group"] != "gmix"]
    declared = dataclasses.replace(ss.DECLARATION, methods=tuple(ss.METHODS[1:]))
    primary = _by(_rows(keep, per_run, robust, declared), "(b) primary")
    assert primary["gmix vs vanilla"]["verdict"] == st.NOT_MEASURED
    assert "no run of gmix" in primary["gmix vs vanilla"]["note"]
    assert {r["correction"] for r in primary.values() if r["test"]} == \
        {"Holm over 6 hypotheses, family-wise 0.05"}
    # no robustness.csv at all: every declared primary is there, not measured
    none = [r for r in _rows(keep, per_run, None, declared) if r["role"] == "primary"]
    assert len(none) == 6 and {r["verdict"] for r in none} == {st.NOT_MEASURED}
