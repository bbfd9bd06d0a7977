"""The kill harness of the system tests: robustmix commands run in processes forked from a
server that imported torch once (the standard library's forkserver), so a kill and its
rerun cost the command's own work, not interpreter start-up. Each such process runs
``robustmix.app.cli.main(argv)`` with one intra-op thread: bit-identity on the CPU holds
for a fixed thread count.

Kill points: every write of the command, killed halfway through it (the file system can
only be in a new state at a write, so these are all the states a kill can leave), and
moments drawn from a fixed seed. Wall-clock columns (``seconds``, ``images_per_s``) are
the only ones allowed to differ between a killed-and-rerun command and an uninterrupted one.

The fixtures built on it (``commands``, ``reference``, ``attack_base``, ...) are in conftest.py.
"""

from __future__ import annotations

import multiprocessing
import random
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import robustmix
from robustmix.attacks import diagnostics, worst_case
from robustmix.attacks.table import read_rows
from robustmix.core.runs import (ATTACK_STATE as STATE_DIR, GENERALIZATION, PROFILE_CSV,
                                 REGULARIZER_CSV, ROBUSTNESS)
from robustmix.core import runs

TRAIN = ["train", "--quiet", "--epochs", "2", "--image-size", "8", "--batch-size", "128",
         "--mix", "cutmix", "--log-interval", "3"]
STEPS_PER_EPOCH = 1400 // 128          # digits: 1,400 training images
TRAIN_WRITES = 6                       # config.json, (metrics.csv, checkpoint.pt) x 2, weights
# Few examples at a large ε keep AutoAttack to a second; batches of 2 give it several state
# saves. (tests/test_attacks.py and test_attack_checks.py resume APGD-T batches in-process.)
ATTACK = ["attack", "--quiet", "--attacks", "fgsm,pgd,apgd", "--eps",
          "48/255,96/255", "--pgd-steps", "5", "--n-examples", "8", "--batch-size", "2"]
FIRST_ATTACK = ["attack", "--quiet", "--attacks", "fgsm", "--eps", "4/255", "--n-examples", "16"]
WALL_CLOCK = {"seconds", "images_per_s"}
# A miniature study: two methods, one seed, every kind of step (train, attack, AutoAttack,
# evaluate, report). Its paths differ between the study directories compared, so the
# columns that hold them are left out of the comparison with the wall-clock ones.
PATHS = {"run", "path"}
THREAD_VARIABLES = ("ROBUSTMIX_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS")
TEMPORARY = re.compile(r"\..+\.\d+@[0-9a-f]{8}\.[^./]+\.tmp")
PRELOAD = ["torch", "torch._dynamo", "numpy", "sklearn.datasets", "sklearn.model_selection",
           "tqdm.auto", "safetensors.torch", "robustmix.app.cli", "robustmix.training.trainer",
           "robustmix.data", "robustmix.models", "robustmix.mixing", "robustmix.attacks.runner",
           "pyautoattack"]

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
    target = os.readlink(f"/proc/self/fd/{fd}")
    if target.endswith(".tmp"):
        writes += 1
        with open(__LOG__ + ".writes", "a") as written:
            written.write(target + "\n")
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
    written: list[str]  # the temporary file of each write, in order
    seconds: float

    @property
    def writes(self) -> int:
        return len(self.written)

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
        written = Path(f"{log}.writes")
        return Outcome(process.exitcode, log.read_text() if log.exists() else "",
                       written.read_text().splitlines() if written.exists() else [],
                       time.perf_counter() - started)


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
        elif path.name == runs.ROBUSTNESS_EXAMPLES:
            worst_case.read(path)
        elif path.name == runs.DIAGNOSTICS:
            assert diagnostics.read(path)
        elif path.parent.name == STATE_DIR and path.suffix == ".json":
            assert isinstance(runs.read_json(path), dict)
        elif path.name == GENERALIZATION:
            assert isinstance(runs.read_json(path), dict)
        elif path.name in (PROFILE_CSV, REGULARIZER_CSV):
            assert runs.read_csv(path)
        elif path.name == runs.CORRUPTIONS:
            from robustmix.evaluations.corruption_eval import COLUMNS
            rows = runs.read_csv(path)
            assert rows and list(rows[0]) == COLUMNS
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
