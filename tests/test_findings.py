"""The README's findings section comes from the study: it equals what
:mod:`robustmix.evaluations.findings` prints from docs/study, and that module renders a
study folder's verdicts as the report judged them (constructed study, known verdicts)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import synthetic_study as ss
from robustmix.core.errors import UsageError
from robustmix.evaluations import findings
from robustmix.evaluations.predictions import prediction_table
from robustmix.evaluations.verdicts import COLUMNS

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_findings_are_what_the_module_prints_from_docs_study():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert findings.section_of(readme) == findings.render(ROOT / "docs" / "study")


def _folder(tmp_path: Path, rate: str | None = None) -> tuple[Path, list[dict[str, str]]]:
    """A study folder with the tables the section reads, from a synthetic study with real
    robustness effects for HMix and GMix."""
    effects = ss.Effects(robust={"hmix": 8.0, "gmix": 8.0})
    groups, per_run, robust = ss.study(np.random.default_rng(0), ss.allocation(6, 4), effects)
    rows = prediction_table(groups, per_run, robust, ss.DECLARATION)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if rate is not None:
        frame[findings.RATE_COLUMN] = rate
    frame.to_csv(tmp_path / "predictions.csv", index=False)
    methods = [g.method for g in groups]
    pd.DataFrame({"group": methods, "method": methods, "test_acc_mean": 0.99,
                  "test_acc_std": 0.002}).to_csv(tmp_path / "generalization_by_method.csv",
                                                 index=False)
    pd.DataFrame({"group": methods, "attack": "worst-case", "eps": "20/255",
                  "robust_acc_mean": 0.5, "conditional_mean": 0.51}).to_csv(
        tmp_path / "robustness_by_method.csv", index=False)
    per_run[["run", "group", "converged"]].to_csv(tmp_path / "runs.csv", index=False)
    return tmp_path, rows


def test_the_section_shows_every_primary_verdict_and_each_family(tmp_path):
    study, rows = _folder(tmp_path)
    text = findings.render(study)
    for r in rows:
        if r["role"] == "primary":
            line = next(x for x in text.splitlines() if x.startswith(f"| {r['comparison']} |"))
            assert line.split(" | ")[-1].strip(" |*") == r["verdict"]
            assert f"{float(r['effect']):+.1f}" in line
    labels = {r["ci_level"] for r in rows if r["role"] == "primary"}
    assert labels == {"simultaneous 95% (Bonferroni over 6)"}
    assert f"Intervals: {labels.pop()}." in text
    families = {r["family"] for r in rows if r["role"] == "secondary"}
    assert text.count(f"false secondary verdict: {findings.NOT_COMPUTED}") == len(families)
    assert all(f"- **{f}**:" in text for f in families)


def test_the_false_secondary_rate_comes_from_the_argument_or_the_table(tmp_path):
    study, _ = _folder(tmp_path, rate="11% [10, 12]")
    assert "false secondary verdict: 11% [10, 12]" in findings.render(study)
    assert "false secondary verdict: 7%" in findings.render(study, false_secondary="7%")
    assert findings.NOT_COMPUTED not in findings.render(study)


def test_write_replaces_only_the_section(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    study, _ = _folder(tmp_path / "s")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{findings.START}\nold claim\n{findings.END}\n\nafter\n")
    assert findings.main([str(study), "--write", str(readme)]) == 0
    text = readme.read_text()
    assert findings.section_of(text) == findings.render(study) and "old claim" not in text
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    with pytest.raises(UsageError, match="findings:start"):
        findings.replace_section("no markers", "x")
    assert findings.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "has no predictions.csv" in err and len(err.strip().splitlines()) == 1


def test_the_confirmation_joins_the_section_once_it_has_run(tmp_path):
    from robustmix.evaluations import confirmation

    study, rows = _folder(tmp_path)
    assert "On fresh seeds" not in findings.render(study)
    again = [dict(r) for r in rows]   # the same verdicts on "fresh seeds", hmix's effect halved
    for r in again:
        if r["comparison"].startswith("hmix"):
            r["effect"] = str(float(r["effect"]) / 2)
    (study / "confirmation").mkdir()
    pd.DataFrame(again, columns=COLUMNS).to_csv(study / "confirmation" / "predictions.csv",
                                                index=False)
    confirmation.write(study, study / "confirmation", "same-verdict-beyond-bound")
    written = [r for r in confirmation.compare(rows, again, "same-verdict-beyond-bound")]
    text = findings.render(study)
    assert "### On fresh seeds: does each primary replicate?" in text
    held = sum(r["replicated"] == "yes" for r in written)
    assert f"`same-verdict-beyond-bound`: {held} of the" in text
    part = text.split("On fresh seeds", 1)[1]
    for r in written:
        line = next(x for x in part.splitlines() if x.startswith(f"| {r['comparison']} |"))
        assert line.rstrip(" |").endswith(r["why"])
