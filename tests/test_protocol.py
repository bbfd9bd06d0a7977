"""A study's three phases: the pilot (estimates only), the declaration (frozen, hashed,
a changed rule refused), and the confirmation on fresh seeds (what replicated)."""

import dataclasses

import numpy as np
import pytest

import synthetic_study as ss
from helpers import assert_one_line_error, mini_study, run_cli
from robustmix.app import protocol
from robustmix.app.study_config import load_config, to_toml
from robustmix.core.errors import UsageError
from robustmix.evaluations import confirmation, power
from robustmix.evaluations import statistics as st
from robustmix.evaluations.predictions import prediction_table


def _digits(out):
    return dataclasses.replace(load_config("digits", None), out=str(out))


def test_a_changed_rule_after_the_declaration_is_refused(tmp_path):
    config = _digits(tmp_path / "s")
    protocol.declare(config)
    protocol.declare(config)                                 # the same again: accepted
    looser = dataclasses.replace(config, diagnostics=dataclasses.replace(
        config.diagnostics, tolerance=config.diagnostics.tolerance + 1))
    with pytest.raises(UsageError, match="diagnostics.tolerance"):
        protocol.declare(looser)
    fewer = dataclasses.replace(config, seeds=config.seeds[:2])
    with pytest.raises(UsageError, match="froze this study"):
        protocol.declare(fewer)
    # moving the folder or the device is not a change of the study
    protocol.declare(dataclasses.replace(config, device="cpu"))


def test_an_edited_declaration_fails_its_hash(tmp_path, capsys):
    config = _digits(tmp_path / "s")
    protocol.declare(config)
    path = tmp_path / "s" / protocol.STUDY_FILE
    assert protocol.read_declared(path)[1]["sha256"] == protocol.digests(config)["sha256"]
    path.write_text(path.read_text().replace("tolerance = 2.0", "tolerance = 9.0"))
    with pytest.raises(UsageError, match="no longer matches its declaration"):
        protocol.read_declared(path)
    code, _, err = run_cli(capsys, "study", "--out", tmp_path / "s", "--dry-run")
    assert_one_line_error(code, err, "no longer matches its declaration")


def test_fresh_seeds_avoid_every_seed_the_folder_used(tmp_path):
    config = _digits(tmp_path)
    used = {0, 1, 2, 7, 100, 101, 102}
    fresh = protocol.with_counts(config, {"vanilla": 6, **{m: 4 for m in config.methods[1:]}},
                                 used)
    assert not set(fresh.seeds_of("vanilla")) & used
    assert len(fresh.seeds_of("vanilla")) == 6 and len(fresh.seeds_of("hmix")) == 4
    assert set(fresh.seeds_of("hmix")) < set(fresh.seeds_of("vanilla")), "pairs by seed"


def test_a_confirmation_takes_fresh_seeds_and_keeps_the_rules(tmp_path):
    config = _digits(tmp_path)
    pilot = protocol.pilot_config(config)
    protocol.declare(pilot)
    protocol.declare(config)
    again = protocol.confirmation_config(tmp_path)
    used = set(config.pilot_seeds) | {s for m in config.methods for s in config.seeds_of(m)}
    assert not {s for m in again.methods for s in again.seeds_of(m)} & used
    assert protocol.counts_of(again) == protocol.counts_of(config)
    assert again.phase == "confirmation" and again.out == str(tmp_path / "confirmation")
    assert protocol.digests(again)["rules_sha256"] == protocol.digests(config)["rules_sha256"]
    protocol.declare(again)
    assert protocol.confirmation_config(tmp_path).seeds == again.seeds, "a rerun resumes"


def test_the_pilot_is_every_method_on_its_seeds_and_issues_no_verdict():
    pilot = protocol.pilot_config(load_config("digits", None))
    assert pilot.phase == "pilot" and pilot.out.endswith("pilot")
    assert all(pilot.seeds_of(m) == pilot.pilot_seeds for m in pilot.methods)
    groups, per_run, robust = ss.study(np.random.default_rng(0), ss.allocation(3, 3),
                                       ss.Effects(robust={"hmix": 8.0}))
    declaration = dataclasses.replace(ss.declaration(), phase="pilot")
    rows = prediction_table(groups, per_run, robust, declaration)
    assert rows and all(r["role"] == "exploratory" and r["verdict"] == "" for r in rows)


def _primaries(seed, effects):
    groups, per_run, robust = ss.study(np.random.default_rng(seed), ss.allocation(6, 4),
                                       ss.Effects(robust=effects))
    return prediction_table(groups, per_run, robust, ss.declaration())


def test_a_confirmation_replicates_a_strong_effect_and_not_a_null_one():
    effects = {"hmix": 10.0}             # seed sds: decided on almost every draw
    original, again = _primaries(1, effects), _primaries(2, effects)
    rows = {r["comparison"]: r for r in
            confirmation.compare(original, again, "same-verdict-beyond-bound")}
    assert rows["hmix vs vanilla"]["original_verdict"] == st.HOLDS
    assert rows["hmix vs vanilla"]["replicated"] == "yes"
    null = rows["mixup vs vanilla"]
    assert null["replicated"] == "no" and null["original_verdict"] != st.HOLDS


def test_replication_needs_the_effect_beyond_the_original_bound():
    original = {"verdict": st.HOLDS, "ci_low": "5", "ci_high": "20", "effect": "12"}
    weaker = {"verdict": st.HOLDS, "effect": "4"}
    assert confirmation.replicated(original, weaker, "same-verdict")[0]
    ok, why = confirmation.replicated(original, weaker, "same-verdict-beyond-bound")
    assert not ok and "lower" in why
    assert not confirmation.replicated(original, {"verdict": st.INCONCLUSIVE, "effect": "9"},
                                       "same-verdict")[0]


def test_vectorized_holm_equals_holm_row_by_row():
    p = np.random.default_rng(3).uniform(0, 0.05, (300, 6)) ** 1.5
    fast = power.holm_rejections(p, 0.05)
    slow = np.array([st.holm(row, 0.05).rejected for row in p])
    assert (fast == slow).all() and fast.any() and not fast.all()


def test_power_chooses_within_the_budget_and_names_what_it_cannot_decide():
    pilot = power.Pilot({"vanilla": (0.40, 0.014, 3), "hmix": (0.52, 0.016, 3),
                         "mixup": (0.41, 0.045, 3)}, "14/255,32/255", "worst-case")
    choice = power.choose(pilot, 16, 0.8, studies=400)
    assert choice.runs <= 16 and choice.power["hmix"] >= 0.8
    assert choice.power["mixup"] < 0.8 and choice.needs["mixup"] is None or \
        choice.needs["mixup"] > 16
    assert any("likely inconclusive" in line for line in power.choice_lines(choice))
    with pytest.raises(UsageError, match="budget"):
        power.choose(pilot, 5, 0.8, studies=10)


@pytest.mark.slow
def test_pilot_power_declaration_study_and_confirmation_end_to_end(tmp_path, capsys):
    """The three phases on a miniature digits study, from the command line."""
    toml = tmp_path / "mini.toml"
    out = tmp_path / "s"
    # the flow, not the verdicts: FGSM and PGD only (so power reads --no-strong), no
    # diagnostics, few examples
    toml.write_text(mini_study(out, attack={"autoattack": "", "eps": "16/255,32/255",
                                            "attacks": ("fgsm", "pgd"), "n_examples": 12,
                                            "diagnostics": False},
                               train={"epochs": 1}, evaluate={"corruptions": False}))
    toml.write_text(to_toml(dataclasses.replace(load_config(None, str(toml)),
                                                pilot_seeds=(50, 51))))
    code, said, err = run_cli(capsys, "study", "--config", toml, "--pilot", "--quiet")
    assert code == 0, err
    report = (out / "pilot" / "report.md").read_text()
    assert "Phase: pilot" in report and "| holds |" not in report
    code, said, err = run_cli(capsys, "power", out, "--budget", "6", "--studies", "50",
                              "--no-strong", "--declare")
    assert code == 0 and "declared" in said, err
    declared, table = protocol.read_declared(out / protocol.STUDY_FILE)
    assert table["pilot_sha256"] and declared.phase == "confirmatory"
    assert not set(declared.seeds) & {50, 51}
    code, _, err = run_cli(capsys, "study", "--out", out, "--quiet")
    assert code == 0, err
    code, said, err = run_cli(capsys, "study", "--out", out, "--confirm", "--quiet")
    assert code == 0, err
    text = (out / confirmation.MARKDOWN).read_text()
    assert "Confirmation on fresh seeds" in text and (out / confirmation.CSV).is_file()
    again = protocol.read_declared(out / "confirmation" / protocol.STUDY_FILE)[0]
    assert not set(again.seeds) & (set(declared.seeds) | {50, 51})


def test_a_confirmatory_study_may_not_reuse_the_pilots_seeds(tmp_path):
    config = _digits(tmp_path)
    protocol.declare(protocol.pilot_config(config))
    reusing = dataclasses.replace(config, seeds=(config.pilot_seeds[0], 900),
                                  seeds_by_method={})
    with pytest.raises(UsageError, match="trained the pilot"):
        protocol.declare(reusing)
    protocol.declare(dataclasses.replace(reusing, seeds=(900, 901)))
