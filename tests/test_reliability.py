"""Reliability through the commands themselves: `robustmix train`, `robustmix attack` and
`robustmix study` killed (SIGKILL) at any moment and rerun, a full disk, diverging training, damaged or
code-carrying files, and bit-identical results from a fixed seed.

The killed commands run in processes forked from a server that imported torch once (the
standard library's forkserver), so a kill and its rerun cost the command's own work, not
interpreter start-up. Each such process runs ``robustmix.app.cli.main(argv)`` with one intra-op
thread: bit-identity on the CPU holds for a fixed thread count. One test kills the real
``python -m robustmix train`` as well.

Kill points: every write of the command, killed halfway through it (the file system can
only be in a new state at a write, so these are all the states a kill can leave), and
moments drawn from a fixed seed. Wall-clock columns (``seconds``, ``images_per_s``) are
the only ones allowed to differ between a killed-and-rerun command and an uninterrupted one.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import robustmix
from attacks import worst_case
from attacks.runner import ROBUSTNESS, STATE_DIR, read_rows
from evaluations.runinfo import GENERALIZATION, PROFILE_CSV, REGULARIZER_CSV
from robustmix.core import runs
from robustmix.app.cli import main
from robustmix.core.errors import UsageError

TRAIN = ["train", "--quiet", "--epochs", "2", "--image-size", "8", "--batch-size", "128",
         "--mix", "cutmix", "--log-interval", "3"]
STEPS_PER_EPOCH = 1400 // 128          # digits: 1,400 training images
TRAIN_WRITES = 6                       # config.json, (metrics.csv, checkpoint.pt) x 2, weights
# Few examples at a large ε keep AutoAttack to a second; batches of 2 give it several state
# saves. (tests/test_attacks.py and test_attack_checks.py resume APGD-T batches in-process.)
ATTACK = ["attack", "--quiet", "--attacks", "fgsm,pgd,autoattack-fast", "--eps",
          "48/255,96/255", "--pgd-steps", "5", "--n-examples", "8", "--batch-size", "2"]
FIRST_ATTACK = ["attack", "--quiet", "--attacks", "fgsm", "--eps", "4/255", "--n-examples", "16"]
WALL_CLOCK = {"seconds", "images_per_s"}
# A miniature study: two methods, one seed, every kind of step (train, attack, AutoAttack,
# evaluate, report). Its paths differ between the study directories compared, so the
# columns that hold them are left out of the comparison with the wall-clock ones.
STUDY = """
preset = "digits"
out = "{out}"
methods = ["vanilla", "cutmix"]
seeds = [0]
device = "cpu"

[train]
epochs = 1
image_size = 8
batch_size = 128

[attack]
eps = "16/255,48/255"
pgd_steps = 2
n_examples = 12
autoattack = "autoattack-fast"
autoattack_eps = "48/255"
autoattack_examples = 4
autoattack_seeds = []

[evaluate]
n_examples = 8
q_draws = 8
"""
PATHS = {"run", "path"}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
TEMPORARY = re.compile(r"\..+\.\d+@[0-9a-f]{8}\.[^./]+\.tmp")
PRELOAD = ["torch", "torch._dynamo", "numpy", "sklearn.datasets", "sklearn.model_selection",
           "tqdm.auto", "safetensors.torch", "robustmix.app.cli", "robustmix.training.trainer",
           "robustmix.data", "robustmix.models", "robustmix.mixing", "attacks.runner",
           "torchattacks", "pyautoattack"]

# What a forked command runs. __KILL_AT__: the number of the write (a file opened under a
# temporary name) that receives half of its bytes before the process SIGKILLs itself.
CHILD = r'''
import os, signal, sys
log = os.open(__LOG__, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.dup2(log, 1)
os.dup2(log, 2)
import threading
import torch
from tqdm import tqdm
torch.set_num_threads(1)
tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock: os._exit leaks it
writes = 0
real_fdopen = os.fdopen


class HalfWrittenThenKilled:
    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)

    def fileno(self):
        return self.handle.fileno()

    def write(self, data):
        self.handle.write(data[:len(data) // 2])
        self.handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def fdopen(fd, *args, **kwargs):
    global writes
    handle = real_fdopen(fd, *args, **kwargs)
    if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
        writes += 1
        with open(__LOG__ + ".writes", "w") as counter:
            counter.write(str(writes))
        if writes == __KILL_AT__:
            return HalfWrittenThenKilled(handle)
    return handle


os.fdopen = fdopen
from robustmix.app.cli import main
try:
    code = main(__ARGV__)
except SystemExit as exit_:
    code = exit_.code
sys.stdout.flush()
sys.stderr.flush()
os._exit(code if isinstance(code, int) else 1)
'''


@dataclass
class Outcome:
    exitcode: int
    log: str
    writes: int
    seconds: float

    @property
    def killed(self) -> bool:
        return self.exitcode == -signal.SIGKILL


class Commands:
    """Runs robustmix commands in forked processes, killing them where asked."""

    def __init__(self, folder: Path):
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)
        self.folder = folder
        self.count = 0

    def run(self, argv, *, kill_at_write: int | None = None,
            kill_after: float | None = None, timeout: float = 300) -> Outcome:
        self.count += 1
        log = self.folder / f"command-{self.count}.log"
        code = (CHILD.replace("__LOG__", repr(str(log)))
                .replace("__ARGV__", repr([str(a) for a in argv]))
                .replace("__KILL_AT__", repr(kill_at_write)))
        started = time.perf_counter()
        process = self.context.Process(target=exec, args=(code, {"__name__": "child"}))
        process.start()
        if kill_after is not None:
            process.join(kill_after)
            if process.is_alive():
                process.kill()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            pytest.fail(f"robustmix {' '.join(map(str, argv))} hung")
        counter = Path(f"{log}.writes")
        return Outcome(process.exitcode, log.read_text() if log.exists() else "",
                       int(counter.read_text()) if counter.exists() else 0,
                       time.perf_counter() - started)


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: "1" for name in THREAD_VARIABLES})
    try:
        commands = Commands(tmp_path_factory.mktemp("logs"))
        assert commands.run(["masks", "--help"]).exitcode == 0  # starts the server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    yield commands
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)
    if stop is not None:
        stop()


@pytest.fixture(autouse=True)
def one_thread():
    """In-process commands use one thread too, like the forked ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(commands, tmp_path_factory):
    """An uninterrupted training run and its number of writes and seconds."""
    out = tmp_path_factory.mktemp("reference") / "run"
    outcome = commands.run(TRAIN + ["--out", out])
    assert outcome.exitcode == 0, outcome.log
    assert outcome.writes == TRAIN_WRITES
    return out, outcome


@pytest.fixture(scope="module")
def attack_base(commands, reference, tmp_path_factory):
    """A finished run that an earlier, different attack has already written results to."""
    base = tmp_path_factory.mktemp("attack-base") / "run"
    shutil.copytree(reference[0], base)
    outcome = commands.run(FIRST_ATTACK + ["--run", base])
    assert outcome.exitcode == 0, outcome.log
    return base


@pytest.fixture(scope="module")
def attack_reference(commands, attack_base, tmp_path_factory):
    """The attack run uninterrupted, in the directory the kill tests use."""
    run = tmp_path_factory.mktemp("attacked") / "run"
    shutil.copytree(attack_base, run)
    outcome = commands.run(ATTACK + ["--run", run])
    assert outcome.exitcode == 0, outcome.log
    assert outcome.writes >= 5, "AutoAttack saves its state after every batch"
    return run, rows_without_wall_clock(run / ROBUSTNESS), outcome


def rows_without_wall_clock(path):
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in read_rows(path)]


def metrics_without_wall_clock(run_dir):
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK}
            for row in runs.read_metrics(run_dir / runs.METRICS)]


def assert_same_training(expected: Path, actual: Path) -> None:
    assert (actual / runs.WEIGHTS).read_bytes() == (expected / runs.WEIGHTS).read_bytes()
    assert metrics_without_wall_clock(actual) == metrics_without_wall_clock(expected)
    assert runs.read_config(actual) == runs.read_config(expected)


def check_files(run_dir: Path) -> list[Path]:
    """Every file in a run directory is whole and passes its reader's checks.

    Returns the temporary files that a killed writer left (they are not run files).
    """
    from robustmix.core.config import TrainConfig

    temporaries = []
    for path in sorted(run_dir.rglob("*")):
        if path.is_dir():
            continue
        if TEMPORARY.fullmatch(path.name):
            temporaries.append(path)
        elif path.name == runs.CONFIG:
            TrainConfig.from_dict(runs.read_config(run_dir)["train"])
        elif path.name == runs.METRICS:
            runs.read_metrics(path)
        elif path.name == runs.CHECKPOINT:
            epoch = runs.load_checkpoint(path)["epoch"]
            assert len(runs.read_metrics(run_dir / runs.METRICS)) >= epoch
        elif path.name == runs.WEIGHTS:
            robustmix.load_model(path)
        elif path.name == ROBUSTNESS:
            read_rows(path)
        elif path.name == worst_case.EXAMPLES:
            worst_case.read(path)
        elif path.parent.name == STATE_DIR and path.suffix == ".json":
            assert isinstance(runs.read_json(path), dict)
        elif path.name == GENERALIZATION:
            assert isinstance(runs.read_json(path), dict)
        elif path.name in (PROFILE_CSV, REGULARIZER_CSV):
            assert runs.read_csv(path)
        else:
            pytest.fail(f"unexpected file {path}")
    return temporaries


def continue_train(out: Path) -> list:
    """What the user runs after a crash: --resume once the run has a config, else the
    same command again."""
    if (out / runs.CONFIG).exists():
        return ["train", "--quiet", "--resume", out]
    return TRAIN + ["--out", out]


def kill_points(outcome: Outcome, seed: int, writes: list[int], moments: int
                ) -> list[list[tuple]]:
    """Kill sequences: each write of ``writes`` halfway through, ``moments`` moments drawn
    from a fixed seed, and one kill of the rerun after a kill."""
    rng = random.Random(seed)
    return ([[("write", k)] for k in writes]
            + [[("time", rng.uniform(0.15, 0.9) * outcome.seconds)] for _ in range(moments)]
            + [[("write", writes[len(writes) // 2]), ("write", 1)]])


def kill(commands, argv, how, where, reset) -> Outcome:
    """Run ``argv`` and kill it at a write or after a delay; a delay that the command
    outlived is halved until the kill lands. Returns the killed command's outcome."""
    for _ in range(8):
        outcome = commands.run(argv, kill_at_write=where if how == "write" else None,
                               kill_after=where if how == "time" else None)
        if outcome.killed or how == "write":
            break
        reset()  # it finished first (a faster moment of the machine): try earlier
        where /= 2
    assert outcome.killed, f"{how} {where}: not killed ({outcome.exitcode}): {outcome.log}"
    return outcome


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

    rng = random.Random(11)
    writes = [1, rng.randrange(2, outcome.writes), outcome.writes]  # the last: robustness.csv
    states_left = 0
    for sequence in kill_points(outcome, 11, writes, moments=1):
        reset()
        for how, where in sequence:
            kill(commands, ATTACK + ["--run", run], how, where, reset)
            check_files(run)
            states_left += len(list((run / STATE_DIR).glob("*.json")))
            csv = (run / ROBUSTNESS).read_bytes()
            assert csv == old or rows_without_wall_clock(run / ROBUSTNESS) == expected, \
                "robustness.csv is the earlier complete file or the new complete one"
        finished = commands.run(ATTACK + ["--run", run])
        assert finished.exitcode == 0, (sequence, finished.log)
        assert check_files(run) == []
        assert not (run / STATE_DIR).exists()
        assert rows_without_wall_clock(run / ROBUSTNESS) == expected, sequence
    assert states_left, "some kill left an AutoAttack state that a rerun resumed from"


def study_command(folder: Path) -> list:
    config = folder.parent / f"{folder.name}.toml"
    config.write_text(STUDY.format(out=folder))
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
    for path in sorted(out.glob("*.csv")):
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
        commands, reference, attack_base, attack_reference, tmp_path):
    expected, _ = reference
    again = tmp_path / "again"
    assert commands.run(TRAIN + ["--out", again]).exitcode == 0
    assert_same_training(expected, again)

    run, rows, _ = attack_reference
    shutil.rmtree(run)
    shutil.copytree(attack_base, run)
    assert commands.run(ATTACK + ["--run", run]).exitcode == 0
    assert rows_without_wall_clock(run / ROBUSTNESS) == rows


# ---------------------------------------------------------------------------- failed writes


def run_cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def full_disk_at(name, occurrence, monkeypatch, seen_before):
    """fsync of the ``occurrence``-th temporary file of ``name`` fails with ENOSPC;
    ``seen_before`` receives the bytes of ``name`` on disk at that moment."""
    real = os.fsync
    count = {"n": 0}

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if f"/.{name}." in target:
            count["n"] += 1
            if count["n"] == occurrence:
                old = Path(target).parent / name
                seen_before.append(old.read_bytes() if old.exists() else None)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_during_training_keeps_the_checkpoint_and_stops_in_one_line(
        reference, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    before = []
    full_disk_at(runs.CHECKPOINT, 2, monkeypatch, before)
    code, _, err = run_cli(capsys, *TRAIN, "--out", out)
    one_line(code, err, f"could not write {out / runs.CHECKPOINT}",
             "No space left on device", "the previous checkpoint.pt is kept")
    assert before[0] is not None and (out / runs.CHECKPOINT).read_bytes() == before[0]
    assert runs.load_checkpoint(out / runs.CHECKPOINT)["epoch"] == 1
    assert check_files(out) == [] and not runs.is_complete(out)
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "train", "--quiet", "--resume", out)
    assert code == 0, err
    assert_same_training(reference[0], out)


def test_a_full_disk_during_an_attack_keeps_the_earlier_results(attack_base, tmp_path,
                                                                 capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(attack_base, run)
    old = (run / ROBUSTNESS).read_bytes()
    full_disk_at(ROBUSTNESS, 1, monkeypatch, [])
    code, _, err = run_cli(capsys, "attack", "--quiet", "--run", run, "--attacks", "fgsm",
                           "--eps", "8/255", "--n-examples", "16")
    one_line(code, err, f"could not write {run / ROBUSTNESS}", "No space left on device",
             "the previous robustness.csv is kept")
    assert (run / ROBUSTNESS).read_bytes() == old
    assert check_files(run) == []


# ---------------------------------------------------------------------------- divergence


def nan_loss_at(step, monkeypatch, value=float("nan")):
    """The training loss becomes ``value`` at global step ``step`` (1-based)."""
    from robustmix.training import trainer as train_module

    real = train_module.soft_cross_entropy
    calls = {"n": 0}

    def loss(logits, target):
        calls["n"] += 1
        result = real(logits, target)
        return result * value if calls["n"] == step else result

    monkeypatch.setattr(train_module, "soft_cross_entropy", loss)


@pytest.mark.parametrize("value, shown", [(float("nan"), "nan"), (float("inf"), "inf")])
def test_divergence_names_epoch_and_step_and_keeps_the_last_good_checkpoint(
        tmp_path, capsys, monkeypatch, value, shown):
    out = tmp_path / "run"
    nan_loss_at(STEPS_PER_EPOCH + 4, monkeypatch, value)  # epoch 2, step 4 (logged at 6)
    code, _, err = run_cli(capsys, *TRAIN, "--out", out)
    one_line(code, err, f"training diverged: the loss is {shown} at epoch 2, step 4;",
             f"the last good checkpoint ({out / runs.CHECKPOINT}, epoch 1) is kept")
    assert runs.load_checkpoint(out / runs.CHECKPOINT)["epoch"] == 1
    assert len(runs.read_metrics(out / runs.METRICS)) == 1
    assert not runs.is_complete(out) and check_files(out) == []
    code, _, err = run_cli(capsys, "attack", "--run", out, "--attacks", "fgsm")
    one_line(code, err, "holds no finished run")


def test_divergence_in_the_first_epoch_says_that_no_checkpoint_exists(tmp_path, capsys,
                                                                      monkeypatch):
    out = tmp_path / "run"
    nan_loss_at(2, monkeypatch)
    code, _, err = run_cli(capsys, *TRAIN, "--out", out)
    one_line(code, err, "at epoch 1, step 2;", "no checkpoint was written")
    assert sorted(p.name for p in out.iterdir()) == [runs.CONFIG]


def test_weights_or_test_loss_that_turn_non_finite_at_an_epoch_end_stop_the_run(
        tmp_path, capsys, monkeypatch):
    from robustmix.training import trainer as train_module

    real = train_module.evaluate
    calls = {"n": 0}

    def evaluate(*args, **kwargs):
        calls["n"] += 1
        accuracy, loss = real(*args, **kwargs)
        return accuracy, (float("nan") if calls["n"] == 2 else loss)

    monkeypatch.setattr(train_module, "evaluate", evaluate)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *TRAIN, "--out", out)
    one_line(code, err, "the test loss is not finite at the end of epoch 2", "epoch 1) is kept")
    assert not runs.is_complete(out)
    assert runs.load_checkpoint(out / runs.CHECKPOINT)["epoch"] == 1


# ---------------------------------------------------------------------------- damaged files


@pytest.fixture
def unfinished(reference, tmp_path):
    """The reference run before its weights were written (checkpoint at the last epoch)."""
    out = tmp_path / "unfinished"
    shutil.copytree(reference[0], out)
    (out / runs.WEIGHTS).unlink()
    return out


def replace_in(path, old, new, count=1):
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, count))


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: replace_in(d / runs.CONFIG, '"epochs": 2', '"epochs": "2"'),
     'malformed training settings: epochs must be an integer, got "2"'),
    (lambda d: replace_in(d / runs.CONFIG, '"epochs": 2', '"epochs": 2.5'),
     "epochs must be an integer, got 2.5"),
    (lambda d: replace_in(d / runs.CONFIG, '"seed": 0', '"seed": "0"'),
     "seed must be an integer"),
    (lambda d: replace_in(d / runs.CONFIG, '"train": {', '"train": {"bogus": 1, '),
     "unknown training settings bogus"),
    (lambda d: replace_in(d / runs.CONFIG, '"train": {', '"extra": 1, "train": {'),
     "unknown keys 'extra'"),
    (lambda d: (d / runs.CONFIG).write_text("[]"), "holds a JSON list"),
    (lambda d: (d / runs.CONFIG).write_text('{"train": '), "is not valid JSON"),
    (lambda d: replace_in(d / runs.METRICS, "\n2,", "\nX,"),
     "metrics.csv, line 3: epoch is 'X', not an integer"),
    (lambda d: replace_in(d / runs.METRICS, "test_acc,", "test_accuracy,"),
     "lacks the column 'test_acc'"),
    (lambda d: (d / runs.METRICS).write_text(
        (d / runs.METRICS).read_text().splitlines()[0] + "\n"),
     "holds 0 epochs, but checkpoint.pt was saved after epoch 2"),
    (lambda d: (d / runs.METRICS).unlink(), "metrics.csv not found"),
    (lambda d: (d / runs.CHECKPOINT).write_bytes((d / runs.CHECKPOINT).read_bytes()[:5000]),
     "not a readable robustmix checkpoint"),
    (lambda d: (d / runs.CHECKPOINT).write_bytes(b"\x00" * 100),
     "not a readable robustmix checkpoint"),
    (lambda d: runs.save_checkpoint(d / runs.CHECKPOINT, {
        **runs.load_checkpoint(d / runs.CHECKPOINT), "model": {"w": torch.zeros(1)}}),
     "checkpoint.pt does not fit this run"),
    (lambda d: runs.save_checkpoint(d / runs.CHECKPOINT, {
        **runs.load_checkpoint(d / runs.CHECKPOINT), "epoch": 7}),
     "its epoch 7 is not one of 1..2"),
    (lambda d: runs.save_checkpoint(d / runs.CHECKPOINT, {
        **runs.load_checkpoint(d / runs.CHECKPOINT), "rng": 5}),
     "checkpoint.pt does not fit this run"),
])
def test_resume_checks_every_file_it_reads(unfinished, capsys, damage, fragment):
    damage(unfinished)
    before = {p.name: p.read_bytes() for p in unfinished.iterdir()}
    code, _, err = run_cli(capsys, "train", "--quiet", "--resume", unfinished)
    line = one_line(code, err, fragment)
    assert str(unfinished) in line, "the line names the file"
    assert {p.name: p.read_bytes() for p in unfinished.iterdir()} == before
    assert not runs.is_complete(unfinished)


@pytest.fixture
def finished(attack_base, tmp_path):
    out = tmp_path / "finished"
    shutil.copytree(attack_base, out)
    return out


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: (d / runs.WEIGHTS).write_bytes((d / runs.WEIGHTS).read_bytes()[:3000]),
     "not a readable safetensors weights file"),
    (lambda d: (d / runs.WEIGHTS).write_bytes(b"garbage" * 50),
     "not a readable safetensors weights file"),
    (lambda d: replace_in(d / runs.CONFIG, '"lr": 0.05', '"lr": "fast"'),
     "lr must be a number"),
    (lambda d: replace_in(d / ROBUSTNESS, ",0.015686275,", ",0.2,"),
     "robustness.csv, line 2: eps 4/255 is 0.015686275, but eps_value is 0.2"),
    (lambda d: (d / ROBUSTNESS).write_text((d / ROBUSTNESS).read_text().replace(
        "\n", "\nnot,a,row\n", 1)), "robustness.csv, line 2: 3 values"),
    (lambda d: (d / ROBUSTNESS).write_text((d / ROBUSTNESS).read_text().replace(
        ",checks", ",notes", 1)), "lacks the column 'checks'"),
])
def test_attack_checks_every_file_it_reads_before_attacking(finished, capsys, damage,
                                                            fragment):
    damage(finished)
    before = {p.name: p.read_bytes() for p in finished.iterdir()}
    code, _, err = run_cli(capsys, "attack", "--quiet", "--run", finished, "--attacks", "fgsm",
                           "--n-examples", "16")
    line = one_line(code, err, fragment)
    assert str(finished) in line
    assert {p.name: p.read_bytes() for p in finished.iterdir()} == before


def edit_robust_acc(run_dir, value):
    rows = read_rows(run_dir / ROBUSTNESS)
    rows[0]["robust_acc"] = value
    from attacks.runner import CSV_FIELDS

    runs.write_csv(run_dir / ROBUSTNESS, rows, CSV_FIELDS)


@pytest.mark.parametrize("value, fragment", [
    ("abc", "robust_acc is 'abc', not a number"),
    ("1.5", "robust_acc is 1.5, outside [0, 1]"),
    ("0.99", "robust_acc 0.99 is above clean_acc"),
])
def test_a_hand_edited_robustness_csv_is_refused_by_attack_and_report(finished, tmp_path,
                                                                      capsys, value, fragment):
    edit_robust_acc(finished, value)
    code, _, err = run_cli(capsys, "attack", "--quiet", "--run", finished, "--attacks", "fgsm",
                           "--n-examples", "16")
    one_line(code, err, f"{finished / ROBUSTNESS}, line 2: {fragment}")
    code, _, err = run_cli(capsys, "report", finished, "--out", tmp_path / "report")
    one_line(code, err, f"{finished / ROBUSTNESS}, line 2: {fragment}")


def test_a_hand_edited_metrics_csv_is_refused_by_report(finished, tmp_path, capsys):
    replace_in(finished / runs.METRICS, "\n2,", "\n2,-")
    code, _, err = run_cli(capsys, "report", finished, "--out", tmp_path / "report")
    one_line(code, err, f"{finished / runs.METRICS}, line 3: train_loss is -")


# ---------------------------------------------------------------------------- code in files


class RunsCode:
    """A pickle that creates ``marker`` when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_no_command_that_reads_weights_runs_code_from_them(finished, unfinished, tmp_path,
                                                          capsys):
    marker = tmp_path / "code-ran"
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": RunsCode(marker)},
               finished / runs.WEIGHTS)
    torch.save({"model": RunsCode(marker), "epoch": 2}, unfinished / runs.CHECKPOINT)
    with open(finished / runs.WEIGHTS, "rb") as handle:  # the control: it does run code
        torch.load(handle, weights_only=False)
    assert marker.exists()
    marker.unlink()

    for argv, fragment in [
        (["attack", "--quiet", "--run", finished, "--attacks", "fgsm"],
         "not a readable safetensors"),
        (["evaluate", "--run", finished, "--n-examples", "8", "--q-draws", "8"],
         "not a readable safetensors"),
        (["train", "--quiet", "--resume", unfinished], "not a readable robustmix checkpoint"),
    ]:
        code, _, err = run_cli(capsys, *argv)
        one_line(code, err, fragment)
    for path in (finished, finished / runs.WEIGHTS):
        with pytest.raises(UsageError, match="not a readable safetensors"):
            robustmix.load_model(path)
    assert not marker.exists(), "no code from a weights or checkpoint file ran"


# ---------------------------------------------------------------------------- the same command


def test_the_same_train_command_rerun_continues_an_unfinished_run(unfinished, reference,
                                                                   tmp_path, capsys):
    """Rerunning the very command that was killed (as a requeued batch job does) continues
    the run; other settings in the same directory are refused."""
    code, out, err = run_cli(capsys, *TRAIN, "--out", unfinished)
    assert code == 0, err
    assert "continuing it" in out
    assert_same_training(reference[0], unfinished)
    code, out, err = run_cli(capsys, *TRAIN, "--out", unfinished)
    assert code == 0 and "complete; nothing to do" in out, err
    code, _, err = run_cli(capsys, *TRAIN, "--seed", "1", "--out", unfinished)
    one_line(code, err, "already holds a run with other settings (seed differ)", "--resume",
             "--overwrite")


def test_an_attack_that_breaks_a_guard_stops_and_writes_nothing(finished, monkeypatch):
    """A planted bug (a robust accuracy rising with ε) stops the command before any row
    is written; the earlier results stay as they were."""
    import dataclasses

    from attacks import AttackError, runner

    @dataclasses.dataclass
    class Planted(runner.Row):
        def __post_init__(self):
            if self.attack == "fgsm" and self.eps.text == "80/255":
                self.robust_acc = self.clean_acc

    monkeypatch.setattr(runner, "Row", Planted)
    before = {p.name: p.read_bytes() for p in finished.iterdir()}
    with pytest.raises(AttackError, match="fgsm: robust accuracy rises from ε = 40/255 to "
                                          "80/255: a bug"):
        main(["attack", "--quiet", "--run", str(finished), "--attacks", "fgsm", "--eps",
              "40/255,80/255", "--n-examples", "16"])
    assert {p.name: p.read_bytes() for p in finished.iterdir()} == before


def test_evaluate_checks_config_json_too(finished, capsys):
    replace_in(finished / runs.CONFIG, '"train": {', '"extra": 1, "train": {')
    code, _, err = run_cli(capsys, "evaluate", "--run", finished, "--n-examples", "8")
    one_line(code, err, f"{finished / runs.CONFIG} has unknown keys 'extra'")
