"""`robustmix study`: end to end in miniature, restartable, and refusing bad configs."""

import csv
import tomllib
from pathlib import Path

import pytest

from robustmix.app import study
from robustmix.core import runs
from robustmix.evaluations.report_paper import paper_key
from robustmix.app.cli import main

from helpers import mini_study, run_cli


TIMING_COLUMNS = {"seconds", "images_per_s", "path"}  # wall clock, and where the run lives


def write_config(tmp_path, out):
    path = tmp_path / f"{Path(out).name}.toml"
    path.write_text(mini_study(out))
    return path


def stamps(out: Path) -> dict[str, int]:
    """Modification times of every file the steps write in the run directories."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in sorted((out / "runs").rglob("*")) if p.is_file()}


def tables(out: Path) -> dict[str, list[dict]]:
    """The report's CSV tables without wall-clock columns (steps.csv is the log of how the
    study ran: its time and threads)."""
    result = {}
    for path in sorted(p for p in out.glob("*.csv") if p.name != study.STEPS_FILE):
        rows = list(csv.DictReader(path.open()))
        result[path.name] = [{k: v for k, v in row.items() if k not in TIMING_COLUMNS}
                             for row in rows]
    return result


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    out = base / "uninterrupted"
    assert main(["study", "--quiet", "--config", str(write_config(base, out))]) == 0
    return base, out


@pytest.mark.slow
def test_a_miniature_study_produces_every_report_file(finished):
    _, out = finished
    report = (out / "report.md").read_text()
    for name in ("runs.csv", "predictions.csv", "robustness_by_method.csv",
                 "generalization_by_method.csv", "robust_accuracy_linf.png",
                 "generalization.png", "gradient_profile.png", "q_matrix.png",
                 "mask_gallery.png", "study.toml"):
        assert (out / name).is_file(), name
        if name != "study.toml":
            assert name in report, name
    for run_name in ("vanilla-s0", "cutmix-s0"):
        run_dir = out / "runs" / run_name
        assert runs.is_complete(run_dir)
        attacks = {(r["attack"], r["eps"], r["n_examples"])
                   for r in runs.read_csv(run_dir / "robustness.csv")}
        assert {("fgsm", "8/255", "24"), ("pgd", "32/255", "24"), ("apgd", "8/255", "24"),
                ("apgd", "32/255", "24"), ("apgd", "32/255", "8")} <= attacks  # 8: autoattack
        checked = {(r["check"], r["eps"]) for r in runs.read_csv(run_dir / "diagnostics.csv")}
        assert {("transfer", "8/255"), ("transfer", "32/255"), ("noise", "32/255")} <= checked
        assert (run_dir / "generalization.json").is_file()
    saved = tomllib.loads((out / "study.toml").read_text())
    assert saved["methods"] == ["vanilla", "cutmix"] and saved["train"]["epochs"] == 2
    logged = runs.read_csv(out / study.STEPS_FILE)   # every step, its threads and time
    assert len(logged) == 13 and all(int(n) >= 1 for r in logged for n in r["threads"].split())
    planned = [r for r in logged if r["kind"] in ("train", "attack", "autoattack")]
    assert len(planned) == 6 and all(float(r["planned_seconds"]) > 0 for r in planned)


@pytest.mark.slow
def test_rerunning_does_no_training_attacking_or_evaluating_again(finished, capsys):
    base, out = finished
    before = stamps(out)
    code, printed, _ = run_cli(capsys, "study", "--quiet", "--config", str(write_config(base, out)))
    assert code == 0
    assert stamps(out) == before, "no run file may be rewritten"
    assert "[1/1] report" in printed
    code, printed, _ = run_cli(capsys, "study", "--dry-run", "--config",
                               str(write_config(base, out)))
    # per run: train, attack, autoattack, evaluate, corruptions; then a transfer check per
    # run and the report
    assert "1 of 13 steps to do" in printed and printed.count(" done ") == 12


@pytest.mark.slow
def test_an_interrupted_study_resumes_to_the_same_report(finished, monkeypatch):
    base, reference = finished
    out = base / "interrupted"
    config = str(write_config(base, out))
    from robustmix import data as data_module

    real = data_module.TensorSource.train_batches
    count = {"batches": 0}

    def batches_then_die(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            count["batches"] += 1
            if count["batches"] == 50:  # inside cutmix's first epoch (vanilla has 2 × 21)
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(data_module.TensorSource, "train_batches", batches_then_die)
    assert main(["study", "--quiet", "--config", config]) == 130
    monkeypatch.undo()
    assert runs.is_complete(out / "runs" / "vanilla-s0")
    assert not runs.is_complete(out / "runs" / "cutmix-s0")
    assert main(["study", "--quiet", "--config", config]) == 0
    assert tables(out) == tables(reference)


def test_presets_print_as_toml_that_loads_back(capsys, tmp_path):
    for name in study.PRESETS:
        code, printed, err = run_cli(capsys, "study", "--preset", name, "--print-config")
        assert code == 0, err
        path = tmp_path / f"{name}.toml"
        path.write_text(printed)
        assert study.load_config(None, str(path)) == study.load_config(name, None)


@pytest.mark.parametrize("name", list(study.PRESETS))
def test_every_preset_runs_the_strong_attack_at_every_eps_on_every_run(name):
    """APGD-CE + APGD-T on the same examples as FGSM and PGD, at every ε of the grid,
    on every seed: the worst case of every run and ε has the strong attack in it."""
    config = study.load_config(name, None)
    strong = config.attack.config()
    assert {"fgsm", "pgd", "apgd"} <= set(strong.attacks)
    assert strong.settings_for("apgd")["n_iter"] == 100, "the reference iterations"
    steps = study.plan(config, progress=False)
    attacked = {s.label for s in steps if s.kind == "attack"}
    assert attacked == {s.label for s in steps if s.kind == "train"}, "every run"


@pytest.mark.parametrize("name", [n for n in study.PRESETS if study.PRESETS[n].get("paper")])
def test_every_run_of_a_paper_preset_finds_its_row_of_the_paper_table(name):
    """The runs' names ([VARIANT-]METHOD-sSEED, a variant's name with dashes: large-crop)
    map onto the paper table's keys (METHOD or VARIANT/METHOD), one each, every key."""
    config = study.load_config(name, None)
    labels = [s.label for s in study.plan(config, progress=False) if s.kind == "train"]
    keys = [paper_key(label, config.variant_names()) for label in labels]
    assert sorted(set(keys)) == sorted(study.PAPER[config.paper]["rows"])
    assert len(keys) == len(set(keys)) * len(config.seeds)
    assert paper_key("a-b-mixup-s3", ["a", "a-b"]) == "a-b/mixup"   # longest first


def test_a_config_on_other_data_does_not_inherit_the_digits_image_size(tmp_path):
    path = tmp_path / "cifar.toml"
    path.write_text('[train]\ndataset = "cifar10"\n')
    assert study.load_config(None, str(path)).train.image_size is None
    path.write_text('[train]\nepochs = 3\n')                  # digits: keeps its 8×8
    assert study.load_config(None, str(path)).train.image_size == 8


@pytest.mark.parametrize("text, fragment", [
    ('bogus = 1', "unknown keys bogus"),
    ('methods = ["mixup", "blend"]', "methods must be a non-empty list"),
    ('seeds = []', "seeds must be a non-empty list of integers"),
    ('seeds = [0, "one"]', "seeds must be a non-empty list of integers"),
    ('[train]\nepochs = "ten"', "malformed"),
    ('[train]\nwarp = 9', "unknown training settings warp"),
    ('[attack]\neps = "8/0"', "zero denominator"),
    ('[attack]\nattacks = ["cw"]', "attack.attacks has unknown attack 'cw'"),
    ('[attack]\noptions = {pgd = {stepz = 3}}', "attack.attacks pgd has no setting stepz"),
    ('[attack]\nn_examples = -5', "attack.n_examples must be a non-negative integer"),
    ('[evaluate]\nq_draws = 1.5', "q_draws must be an integer, got 1.5"),
    ('[evaluate]\nq_draws = -1', "evaluate.q_draws must be a non-negative integer"),
    ('[evaluate]\nsteps = 3', "unknown [evaluate] settings steps"),
    ('[evaluate]\ncorruptions = 3', "corruptions must be true or false, got 3"),
    ('[train]\nseed = 3', "[train] cannot set seed"),
    ('methods = [', "not valid TOML"),
])
def test_bad_study_configs_are_one_line_and_exit_2(capsys, tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    code, _, err = run_cli(capsys, "study", "--config", str(path), "--out", str(tmp_path / "s"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["--preset", "imagenet1k"], "unknown preset 'imagenet1k'"),
    (["--config", "missing.toml"], "no such file"),
    (["--preset", "digits", "--config", "x.toml"], "not both"),
    (["--methods", "mixup,nope"], "methods must be a non-empty list"),
    (["--seeds", "0,x"], "expected comma-separated"),
])
def test_bad_study_flags_are_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "study", "--dry-run", *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err


@pytest.mark.slow
def test_a_run_trained_with_other_settings_is_not_silently_reused(capsys, tmp_path):
    out = tmp_path / "s"
    config = write_config(tmp_path, out)
    code, _, _ = run_cli(capsys, "train", "--quiet", "--epochs", "1", "--image-size", "12",
                         "--out", str(out / "runs" / "vanilla-s0"))
    assert code == 0
    code, _, err = run_cli(capsys, "study", "--quiet", "--config", str(config))
    assert code == 2 and "trained with other settings" in err
