"""System tests: `robustmix train`, `robustmix attack` and `robustmix study` killed (SIGKILL)
at any moment and rerun end as an uninterrupted command would; the real
``python -m robustmix train`` killed and resumed; bit-identical results from a fixed seed
in another process; the same command rerun continues an unfinished run.

The commands run in forked processes (tests/kill_harness.py, fixtures in conftest.py).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustmix.core.runs import ATTACK_STATE as STATE_DIR, GENERALIZATION, ROBUSTNESS
from helpers import assert_one_line_error, mini_study, run_cli
from kill_harness import (ATTACK, THREAD_VARIABLES, TRAIN, TRAIN_WRITES, WALL_CLOCK,
                          assert_same_training, check_files, continue_train, kill,
                          kill_points, metrics_without_wall_clock, rows_without_wall_clock)
from robustmix.core import runs

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# A miniature study: two methods, one seed, every kind of step (train, attack, AutoAttack,
# evaluate, report). Its paths differ between the study directories compared, so the
# columns that hold them are left out of the comparison with the wall-clock ones.
PATHS = {"run", "path"}


# ---------------------------------------------------------------------------- SIGKILL


@pytest.mark.slow
def test_train_killed_anywhere_then_rerun_ends_as_an_uninterrupted_run(commands, reference,
                                                                      tmp_path):
    expected, outcome = reference
    out = tmp_path / "run"

    def reset():
        shutil.rmtree(out, ignore_errors=True)

    for sequence in kill_points(outcome, 7, list(range(1, TRAIN_WRITES + 1)), moments=2):
        reset()
        argv = TRAIN + ["--out", out]
        for how, where in sequence:
            kill(commands, argv, how, where, reset)
            left = check_files(out) if out.exists() else []
            if how == "write":
                assert left, f"{sequence}: the cut write left its temporary file"
            assert not runs.is_complete(out)
            argv = continue_train(out)
        finished = commands.run(argv)
        assert finished.exitcode == 0, (sequence, finished.log)
        assert check_files(out) == [], "the rerun removed the killed writer's temporary file"
        assert_same_training(expected, out)


@pytest.mark.slow
def test_attack_killed_anywhere_then_rerun_gives_the_uninterrupted_csv(
        commands, attack_base, attack_reference):
    run, expected, outcome = attack_reference
    old = (attack_base / ROBUSTNESS).read_bytes()

    def reset():
        shutil.rmtree(run)
        shutil.copytree(attack_base, run)

    # Cut: the first write, one that finds an earlier AutoAttack state on disk (the write
    # after a state write, drawn from a fixed seed), and the last (robustness.csv).
    after_state = [k + 1 for k, path in enumerate(outcome.written[:-1], start=1)
                   if Path(path).parent.name == STATE_DIR]
    writes = [1, random.Random(11).choice(after_state), outcome.writes]
    states_left = 0
    for sequence in kill_points(outcome, 11, writes, moments=1):
        reset()
        for how, where in sequence:
            kill(commands, ATTACK + [run], how, where, reset)
            check_files(run)
            states_left += len(list((run / STATE_DIR).glob("*.json")))
            csv = (run / ROBUSTNESS).read_bytes()
            assert csv == old or rows_without_wall_clock(run / ROBUSTNESS) == expected, \
                "robustness.csv is the earlier complete file or the new complete one"
        finished = commands.run(ATTACK + [run])
        assert finished.exitcode == 0, (sequence, finished.log)
        assert check_files(run) == []
        assert not (run / STATE_DIR).exists()
        assert rows_without_wall_clock(run / ROBUSTNESS) == expected, sequence
    assert states_left, "some kill left an AutoAttack state that a rerun resumed from"


def study_command(folder: Path) -> list:
    config = folder.parent / f"{folder.name}.toml"
    config.write_text(mini_study(
        folder, train={"epochs": 1, "image_size": 8, "batch_size": 128},
        attack={"eps": "16/255,48/255", "pgd_steps": 2, "n_examples": 12,
                "autoattack_eps": "48/255", "autoattack_examples": 4},
        evaluate={"n_examples": 8, "q_draws": 8}))
    return ["study", "--quiet", "--config", config]


def study_results(out: Path) -> dict:
    """What a study leaves: each run's weights and CSVs, and the report's tables, without
    wall-clock columns and paths; every file whole."""
    results = {}
    for run_dir in sorted((out / "runs").iterdir()):
        assert check_files(run_dir) == []
        results[run_dir.name] = {
            "weights": (run_dir / runs.WEIGHTS).read_bytes(),
            "metrics": metrics_without_wall_clock(run_dir),
            "robustness": [{k: v for k, v in row.items() if k not in PATHS}
                           for row in rows_without_wall_clock(run_dir / ROBUSTNESS)],
            "generalization": {k: v for k, v in runs.read_json(run_dir / GENERALIZATION).items()
                               if k not in WALL_CLOCK | PATHS}}
    for path in sorted(p for p in out.glob("*.csv") if p.name != "steps.csv"):  # a log
        results[path.name] = [{k: v for k, v in row.items() if k not in WALL_CLOCK | PATHS}
                              for row in runs.read_csv(path)]
    for name in ("report.md", "study.toml", "robust_accuracy_linf.png", "mask_gallery.png"):
        assert (out / name).stat().st_size > 0, name
    return results


@pytest.fixture(scope="module")
def study_reference(commands, tmp_path_factory):
    out = tmp_path_factory.mktemp("study-reference") / "study"
    outcome = commands.run(study_command(out))
    assert outcome.exitcode == 0, outcome.log
    return study_results(out), outcome


@pytest.mark.slow
def test_study_killed_anywhere_then_rerun_ends_as_an_uninterrupted_study(
        commands, study_reference, tmp_path):
    expected, outcome = study_reference
    out = tmp_path / "study"
    argv = study_command(out)

    def reset():
        shutil.rmtree(out, ignore_errors=True)

    rng = random.Random(13)
    # the first write (a config.json), two inside the steps, the last (the report's)
    writes = [1, *sorted(rng.sample(range(2, outcome.writes), 2)), outcome.writes]
    for sequence in kill_points(outcome, 13, writes, moments=1):
        reset()
        for how, where in sequence:
            kill(commands, argv, how, where, reset)
            for run_dir in (out / "runs").glob("*") if (out / "runs").exists() else []:
                check_files(run_dir)
        finished = commands.run(argv)
        assert finished.exitcode == 0, (sequence, finished.log)
        assert study_results(out) == expected, sequence


@pytest.mark.slow
def test_the_real_command_killed_by_sigkill_resumes_to_the_same_bits(reference, tmp_path):
    expected, _ = reference
    out = tmp_path / "run"
    env = {**os.environ, **{name: "1" for name in THREAD_VARIABLES}}
    command = [sys.executable, "-m", "robustmix", *TRAIN, "--out", str(out)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    delay = random.Random(3).uniform(0.0, 0.3)
    deadline = time.monotonic() + 300
    while not (out / runs.CHECKPOINT).exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(delay)  # somewhere in epoch 2 (or its writes)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0].decode()
    assert process.returncode == -signal.SIGKILL, output
    check_files(out)
    resumed = subprocess.run([sys.executable, "-m", "robustmix", "train", "--quiet",
                              "--resume", str(out)], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert check_files(out) == []
    assert_same_training(expected, out)


# ---------------------------------------------------------------------------- determinism


@pytest.mark.slow
def test_a_fixed_seed_gives_bit_identical_weights_and_csvs_in_another_process(
        commands, reference, trained, attack_base, attack_reference, tmp_path):
    expected, _ = reference
    again = tmp_path / "again"
    assert commands.run(TRAIN + ["--out", again]).exitcode == 0
    assert_same_training(expected, again)
    assert_same_training(expected, trained)   # run in the test process itself

    run, rows, _ = attack_reference
    shutil.rmtree(run)
    shutil.copytree(attack_base, run)
    assert commands.run(ATTACK + [run]).exitcode == 0
    assert rows_without_wall_clock(run / ROBUSTNESS) == rows


# ---------------------------------------------------------------------------- the same command


def test_the_same_train_command_rerun_continues_an_unfinished_run(unfinished, trained,
                                                                   tmp_path, capsys):
    """Rerunning the very command that was killed (as a requeued batch job does) continues
    the run; other settings in the same directory are refused."""
    code, out, err = run_cli(capsys, *TRAIN, "--out", unfinished)
    assert code == 0, err
    assert "continuing it" in out
    assert_same_training(trained, unfinished)
    code, out, err = run_cli(capsys, *TRAIN, "--out", unfinished)
    assert code == 0 and "complete; nothing to do" in out, err
    code, _, err = run_cli(capsys, *TRAIN, "--seed", "1", "--out", unfinished)
    assert_one_line_error(code, err, "already holds a run with other settings (seed differ)",
                          "--resume", "--overwrite")
