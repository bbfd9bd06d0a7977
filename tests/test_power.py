"""The power calculation: its simulation against the noncentral t where they must agree,
Holm's gain over Bonferroni, the flip rate, and the command on a study folder."""

import numpy as np
import pytest

from helpers import assert_one_line_error, run_cli
from robustmix.evaluations import power


def test_one_primary_simulated_power_is_the_noncentral_t():
    """With one primary, Holm is the plain test, and with 20 runs a group Welch's statistic
    is a t: simulation and closed form agree to the simulation's binomial error."""
    pilot = power.Pilot({"vanilla": (0.5, 0.02, 8), "cutmix": (0.515, 0.02, 8)}, "", "")
    studies = 20000
    simulated = power.simulate(pilot, 20, 20, studies=studies)["cutmix"]
    closed = power.bonferroni_nct(pilot, "cutmix", 20, 20)
    assert 0.5 < closed < 0.9          # in the middle, where a wrong formula shows
    assert simulated == pytest.approx(closed, abs=4 * np.sqrt(closed * (1 - closed) / studies))


def test_holm_finds_more_than_bonferroni_when_the_others_are_real():
    strong = {m: (0.6, 0.02, 8) for m in ("hmix", "gmix", "stochastic")}
    pilot = power.Pilot({"vanilla": (0.5, 0.02, 8), "mixup": (0.52, 0.02, 8), **strong},
                        "", "")
    simulated = power.simulate(pilot, 10, 5, studies=4000)
    assert simulated["hmix"] > 0.99
    assert simulated["mixup"] > power.bonferroni_nct(pilot, "mixup", 10, 5) + 0.1
    scaled = power.simulate(pilot, 10, 5, studies=4000, scale={"mixup": 0.0})
    assert scaled["mixup"] < 0.05          # no effect: it holds at most at the level


def test_flip_rate():
    assert power.flip_rate(0.5) == 0.5
    assert power.flip_rate(1.0) == power.flip_rate(0.0) == 0.0
    assert power.flip_rate(0.975) == pytest.approx(0.04875)


def test_the_command_refuses_a_folder_without_runs(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    code, _, err = run_cli(capsys, "power", tmp_path)
    assert_one_line_error(code, err, "holds no finished run")
    code, _, err = run_cli(capsys, "power", tmp_path, "--power", "1.5")
    assert_one_line_error(code, err, "--power", "(0, 1)")


def test_the_plan_uses_the_pooled_sd_at_its_upper_confidence_limit():
    from scipy import stats

    pilot = power.Pilot({"vanilla": (0.4, 0.03, 3), "hmix": (0.5, 0.04, 3),
                         "mixup": (0.45, 0.0, 3)}, "", "worst-case")
    plan = power.planning_sd(pilot, confidence=0.8)
    pooled = np.sqrt((0.03 ** 2 + 0.04 ** 2 + 0.0) / 3)        # equal df: the mean variance
    upper = pooled * np.sqrt(6 / stats.chi2.ppf(0.2, 6))
    assert all(np.isclose(sd, upper) for _, sd, _ in plan.stats.values())
    assert upper > pooled and plan.stats["hmix"][0] == 0.5, "means kept, spread raised"


@pytest.mark.slow
def test_the_presets_state_what_their_seed_counts_detect():
    """The seed sds each preset's description states are the power calculation's."""
    from robustmix.app.presets import DETECTABLE

    for (n0, n1), stated in DETECTABLE.items():
        assert power.detectable(n0, n1, 6) == pytest.approx(stated, abs=0.06), (n0, n1)


@pytest.mark.slow
def test_more_seeds_detect_smaller_effects_and_one_primary_alone_needs_less():
    few, more = power.detectable(4, 4, 3, studies=1000), power.detectable(8, 8, 3, studies=1000)
    assert 0 < more < few
    assert power.detectable(8, 8, 1, studies=1000) < more   # no Holm correction to pay
    # one primary, many runs: the z-test's (1.96 + 0.84) * sqrt(2 / n) sds
    assert power.detectable(200, 200, 1, studies=2000) == pytest.approx(
        2.80 * (2 / 200) ** 0.5, rel=0.1)
