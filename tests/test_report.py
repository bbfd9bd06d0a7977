"""write_report on tiny runs: every file, grouping over seeds, verdicts, refusals."""

import json
import math
import shutil

import matplotlib.image
import pytest

from robustmix.attacks.table import CSV_FIELDS
from robustmix.evaluations import evaluate_corruptions, evaluate_run, write_report
from robustmix.evaluations import statistics as st
from robustmix.evaluations.grouping import group_runs
from robustmix.core import runs
from robustmix.core.errors import UsageError
from robustmix.mixing import MixConfig
from robustmix.core.config import TrainConfig
from robustmix.training.trainer import train

RUNS = {"vanilla-s0": ("vanilla", 0), "vanilla-s1": ("vanilla", 1),
        "cutmix-s0": ("cutmix", 0), "mixup-s0": ("mixup", 0)}
# robust accuracy at 1/255 and 8/255 (L∞) per run and attack, written by hand
ROBUST = {
    "vanilla-s0": {"fgsm": (0.50, 0.10), "pgd": (0.40, 0.00)},
    "vanilla-s1": {"fgsm": (0.52, 0.12), "pgd": (0.42, 0.02)},
    "cutmix-s0": {"fgsm": (0.80, 0.30), "pgd": (0.41, 0.01)},
    "mixup-s0": {"fgsm": (0.30, 0.05), "pgd": (0.10, 0.00)},
}


def write_robustness(run_dir, name):
    rows = []
    for eps, eps_value, at in (("1/255", 1 / 255, 0), ("8/255", 8 / 255, 1)):
        for attack, values in ROBUST[name].items():
            rows.append({"run": name, "attack": attack, "settings": "steps=10", "norm": "linf",
                         "eps": eps, "eps_value": eps_value, "n_examples": 100,
                         "n_attacked": 90, "clean_acc": 0.9, "robust_acc": values[at],
                         "seconds": 1.0, "forward_passes": 100, "backward_passes": 100,
                         "checks": "zero gradients on 3 points" if attack == "pgd" and at else "",
                         "evaluation": "", "diagnostics": ""})
        worst = min(v[at] for v in ROBUST[name].values())
        rows.append({**rows[-1], "attack": "worst-case", "robust_acc": worst, "checks": ""})
    if name == "vanilla-s0":  # an earlier quick attack on fewer examples: not the one to use
        rows.append({**rows[0], "n_examples": 20, "robust_acc": 0.0})
    runs.write_csv(run_dir / "robustness.csv", rows, CSV_FIELDS)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    for name, (mix, seed) in RUNS.items():
        train(TrainConfig(epochs=1, batch_size=128, seed=seed, mix=MixConfig(mix=mix)), root / name,
              progress=False)
        evaluate_run(root / name, device="cpu", n_examples=48, q_draws=64)
        write_robustness(root / name, name)
        if name != "mixup-s0":   # one run without corruptions.csv: reported as missing
            evaluate_corruptions(root / name, device="cpu", n_examples=12)
    out = root / "report"
    report = write_report([root / name for name in RUNS], out)
    return root, out, report


@pytest.mark.slow
def test_report_writes_every_file_and_links_each_one(study):
    _, out, report = study
    assert report == out / "report.md"
    expected = {"report.md", "runs.csv", "predictions.csv", "robustness_by_method.csv",
                "generalization_by_method.csv", "gradient_profiles.csv", "mask_kernels.csv",
                "q_matrix.csv", "robust_accuracy_linf.png", "generalization.png",
                "gradient_profile.png", "q_matrix.png", "mask_gallery.png"}
    assert expected <= {p.name for p in out.iterdir()}
    text = report.read_text()
    for path in out.iterdir():
        if path.suffix in (".png", ".csv"):
            assert f"]({path.name})" in text, path.name
        if path.suffix == ".png":
            image = matplotlib.image.imread(path)
            assert image.ndim == 3 and image.shape[2] in (3, 4)
            assert image.shape[0] >= 250 and image.shape[1] >= 500, (path.name, image.shape)
            assert image.std() > 0.01  # not a blank canvas
    assert "zero gradients on 3 points" in text  # attack checks are surfaced


@pytest.mark.slow
def test_grouped_tables_average_the_two_vanilla_seeds(study):
    root, out, _ = study
    table = {r["group"]: r for r in runs.read_csv(out / "generalization_by_method.csv")}
    assert set(table) == {"vanilla", "mixup", "cutmix"}
    gaps = [runs.read_json(root / f"vanilla-s{s}" / "generalization.json")["gap"]["accuracy"]
            for s in (0, 1)]
    vanilla = table["vanilla"]
    assert float(vanilla["gap_acc_mean"]) == pytest.approx(sum(gaps) / 2, rel=1e-6)
    assert float(vanilla["gap_acc_std"]) == pytest.approx(abs(gaps[0] - gaps[1]) / math.sqrt(2),
                                                          rel=1e-5, abs=1e-12)
    assert int(vanilla["gap_acc_n"]) == 2 and int(table["cutmix"]["gap_acc_n"]) == 1
    robust = [r for r in runs.read_csv(out / "robustness_by_method.csv")
              if r["group"] == "vanilla" and r["attack"] == "fgsm" and r["eps"] == "1/255"]
    assert len(robust) == 1
    assert float(robust[0]["robust_acc_mean"]) == pytest.approx(0.51)
    assert int(robust[0]["n_runs"]) == 2
    q = {(r["group"], r["mask"]): r for r in runs.read_csv(out / "q_matrix.csv")}
    assert float(q["vanilla", "cutmix"]["rho_vs_vanilla"]) == pytest.approx(1.0)
    assert float(q["vanilla", "vanilla"]["q_mean"]) == 0.0


@pytest.mark.slow
def test_predictions_of_runs_without_held_out_data_or_strong_attack(study):
    """Runs trained without held-out images: convergence not judged, named in the notes;
    worst-case rows made without APGD: the primaries are not measured, and say why."""
    _, out, report = study
    rows = runs.read_csv(out / "predictions.csv")
    by = {(r["prediction"][:3], r["comparison"], r["eps"]): r for r in rows}
    assert {k[0] for k in by} == {"(a)", "(b)", "(c)", "(d)", "(e)", "MSD"}
    primary = [r for r in rows if r["role"] == "primary"]
    assert [r["comparison"] for r in primary] == ["mixup vs vanilla", "cutmix vs vanilla"]
    for row in primary:
        assert row["verdict"] == st.NOT_MEASURED
        assert "without the strong attack" in row["note"]
        assert row["correction"] == "Holm over 2 hypotheses, family-wise 0.05"
    # every (attack, ε) cell is an estimate, no verdict word
    for attack in ("fgsm", "pgd", "worst-case"):
        for eps in ("1/255", "8/255"):
            row = by["(b)", f"cutmix vs vanilla, {attack}", eps]
            assert (row["role"], row["verdict"]) == ("exploratory", "")
    # robust / clean on the same examples: 0.80 / 0.9 vs (0.50 / 0.9, 0.52 / 0.9)
    measured = by["(b)", "cutmix vs vanilla, fgsm", "1/255"]["measured"]
    assert measured == "cutmix 88.9 (n=1) vs vanilla 56.7 ± 1.6 (n=2)"
    assert all(st.is_verdict(r["verdict"]) for r in rows)
    gap = by["(a)", "mixup vs vanilla", ""]
    assert gap["verdict"] == st.ONE_SEED
    assert "convergence not judged (no held-out data): 3 runs" in gap["note"]
    assert ("(c)", "cutmix vs mixup", "") in by and \
        ("(d)", "cutmix vs every other model on the cutmix mask", "") in by
    text = report.read_text()
    assert "not declared before the data" in text and "Holm" in text
    assert "| cutmix-s0 | cutmix | 0 |" in text and "not judged (no held-out data)" in text


@pytest.mark.slow
def test_report_without_robustness_or_generalization_says_what_is_missing(study):
    root, out, _ = study
    bare = root / "bare" / "cutmix-s0"
    bare.mkdir(parents=True)
    for name in (runs.CONFIG, runs.METRICS, runs.WEIGHTS):
        shutil.copy(root / "cutmix-s0" / name, bare / name)
    again = root / "again"
    shutil.copytree(out, again)                  # an earlier, fuller report in the same folder
    text = write_report([bare], again).read_text()
    assert "no run has robustness.csv" in text
    assert f"robustmix evaluate {bare}" in text
    assert not (again / "robust_accuracy_linf.png").exists()   # stale output removed
    for path in again.iterdir():
        assert path.suffix not in (".png", ".csv") or f"]({path.name})" in text
    verdicts = {r["verdict"] for r in runs.read_csv(again / "predictions.csv")}
    assert verdicts == {st.NOT_MEASURED}     # one cutmix run, nothing to compare with


@pytest.mark.slow
def test_refusals_are_one_line_usage_errors(study, tmp_path):
    root, _, _ = study
    with pytest.raises(UsageError, match="no runs given"):
        write_report([], tmp_path / "r")
    other = tmp_path / "small-images"
    shutil.copytree(root / "vanilla-s0", other)
    config = runs.read_json(other / runs.CONFIG)
    config["dataset"]["height"] = config["dataset"]["width"] = 12
    config["train"]["image_size"] = 12
    runs.write_json(other / runs.CONFIG, config)
    with pytest.raises(UsageError, match="different data sets") as mixed:
        write_report([root / "vanilla-s0", other], tmp_path / "r")
    assert "1x12x12" in str(mixed.value) and "1x16x16" in str(mixed.value)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(root / "mixup-s0", unfinished)
    (unfinished / runs.WEIGHTS).unlink()
    with pytest.raises(UsageError, match="model.safetensors is missing") as no_weights:
        write_report([root / "vanilla-s0", unfinished], tmp_path / "r")
    with pytest.raises(UsageError, match="not found") as missing:
        write_report([tmp_path / "nowhere"], tmp_path / "r")
    for error in (mixed, no_weights, missing):
        assert "\n" not in str(error.value)
    assert not (tmp_path / "r").exists()        # nothing written on refusal


def test_groups_sharing_a_method_are_named_by_their_differences():
    base = TrainConfig().to_dict()
    alpha = json.loads(json.dumps(base))
    alpha["mix"]["alpha"] = 0.4
    other_seed = {**base, "seed": 3}
    groups = group_runs([("a", base), ("b", alpha), ("c", other_seed)])
    assert [(g.name, g.members) for g in groups] == [
        ("vanilla (mix.alpha=0.4)", ["b"]), ("vanilla (mix.alpha=1.0)", ["a", "c"])]
    assert groups[0].family == groups[1].family




# ---------------------------------------------------------------------- calibration, corruptions


def _mean(values):
    return sum(values) / len(values)


@pytest.mark.slow
def test_summary_and_calibration_tables_are_the_runs_numbers(study):
    root, out, report = study
    g = {name: runs.read_json(root / name / "generalization.json") for name in RUNS}
    summary = {r["group"]: r for r in runs.read_csv(out / "summary_by_method.csv")}
    vanilla = summary["vanilla"]
    assert float(vanilla["clean_mean"]) == pytest.approx(
        _mean([g[f"vanilla-s{s}"]["test"]["accuracy"] for s in (0, 1)]), rel=1e-7)
    # the strongest attack at the largest ε with a worst-case row (8/255): pgd, 0.00 and 0.02
    assert float(vanilla["robust_mean"]) == pytest.approx(0.01)
    assert float(summary["mixup"]["robust_mean"]) == pytest.approx(0.0)
    assert float(vanilla["ece_mean"]) == pytest.approx(
        _mean([g[f"vanilla-s{s}"]["calibration"]["ece"] for s in (0, 1)]), rel=1e-7)
    corrupted = [_mean([float(r["accuracy"]) for r in runs.read_csv(root / name / runs.CORRUPTIONS)
                        if r["set"] == "suite"]) for name in ("vanilla-s0", "vanilla-s1")]
    assert float(vanilla["corrupted_mean"]) == pytest.approx(_mean(corrupted), rel=1e-7)
    assert summary["mixup"]["corrupted_n"] == "0"          # no corruptions.csv: not counted
    calibration = {r["group"]: r for r in runs.read_csv(out / "calibration_by_method.csv")}
    assert float(calibration["cutmix"]["brier_mean"]) == pytest.approx(
        g["cutmix-s0"]["calibration"]["brier"], rel=1e-7)
    text = report.read_text()
    assert text.index("## Summary") < text.index("## Runs")
    assert "](reliability.png)" in text and "robust acc at ε = 8/255 (linf)" in text


@pytest.mark.slow
def test_corruption_table_is_the_mean_over_corruptions_then_seeds(study):
    root, out, report = study
    table = runs.read_csv(out / "corruptions_by_method.csv")
    cell = next(r for r in table if r["group"] == "vanilla" and r["metric"] == "accuracy"
                and r["severity"] == "3")
    per_run = [_mean([float(r["accuracy"]) for r in runs.read_csv(root / f"vanilla-s{s}" /
                                                                  runs.CORRUPTIONS)
                      if r["severity"] == "3"]) for s in (0, 1)]
    assert float(cell["mean"]) == pytest.approx(_mean(per_run), rel=1e-6) and cell["n"] == "2"
    clean = next(r for r in table if r["group"] == "cutmix" and r["metric"] == "ece"
                 and r["severity"] == "0")
    row = runs.read_csv(root / "cutmix-s0" / runs.CORRUPTIONS)[0]
    assert float(clean["mean"]) == pytest.approx(float(row["ece"]), rel=1e-7)
    text = report.read_text()
    assert "## Common corruptions" in text and "Runs without the file: mixup-s0." in text


@pytest.mark.slow
def test_runs_measured_before_calibration_and_damaged_tables(study, tmp_path):
    root, _, _ = study
    old = tmp_path / "old"
    shutil.copytree(root / "cutmix-s0", old)
    result = runs.read_json(old / "generalization.json")
    del result["calibration"]
    runs.write_json(old / "generalization.json", result)
    (old / runs.CORRUPTIONS).unlink()
    text = write_report([old], tmp_path / "out").read_text()
    assert "no run's generalization.json has calibration" in text
    assert "no run has corruptions.csv" in text
    assert "\n| cutmix | " in text[text.index("## Summary"):text.index("## Runs")]
    runs.atomic_write_text(old / runs.CORRUPTIONS, "corruption,severity\nfog,x\n")
    with pytest.raises(UsageError, match="corruptions.csv: not a corruptions table"):
        write_report([old], tmp_path / "out")


@pytest.mark.slow
def test_no_per_study_error_where_no_secondary_can_be_tested(study):
    """One run per MSDA: nothing to test, so no simulated rate (see test_error_rates)."""
    _, out, report = study
    assert not (out / "error_rates.csv").exists()
    assert "Per-study error" not in report.read_text()


@pytest.mark.slow
def test_a_paper_table_sets_each_methods_mean_beside_the_papers_number(study, tmp_path):
    """The section's mean ± std over seeds is each run's final test accuracy from its
    metrics.csv; a key no run has says "not run"; a report without a paper removes the
    stale paper_comparison.csv."""
    from robustmix.evaluations.report_paper import PaperTable
    root, _, _ = study
    out = tmp_path / "with-paper"
    paper = PaperTable("a paper's table", {"vanilla": 90.0, "mixup": 80.0, "gmix": 70.0})
    text = write_report([root / name for name in RUNS], out, paper=paper).read_text()
    final = {name: 100 * float(runs.read_metrics(root / name / "metrics.csv")[-1]["test_acc"])
             for name in RUNS}
    vanilla = [final["vanilla-s0"], final["vanilla-s1"]]
    mean, std = sum(vanilla) / 2, abs(vanilla[0] - vanilla[1]) / math.sqrt(2)
    rows = {row["method"]: row for row in runs.read_csv(out / "paper_comparison.csv")}
    assert set(rows) == {"vanilla", "mixup"}
    assert float(rows["vanilla"]["measured_mean"]) == pytest.approx(mean, abs=1e-4)
    assert float(rows["vanilla"]["measured_std"]) == pytest.approx(std, abs=1e-4)
    assert rows["mixup"]["n"] == "1" and float(rows["mixup"]["paper"]) == 80.0
    assert "## Beside the paper: a paper's table" in text
    assert f"| vanilla | 90.00 | {mean:.2f} ± {std:.2f} (2) | {mean - 90:+.2f} |" in text
    assert "| gmix | 70.00 | not run | - |" in text
    write_report([root / name for name in RUNS], out)
    assert not (out / "paper_comparison.csv").exists()
    assert "Beside the paper" not in (out / "report.md").read_text()
