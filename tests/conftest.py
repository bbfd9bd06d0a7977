"""Fixtures shared by the test modules. Plain helpers are in helpers.py; the kill harness
(robustmix commands in forked processes) in kill_harness.py.

The run fixtures are session-scoped: one forkserver and one reference training run serve
the kill tests (test_kill_resume.py) and the in-process reliability tests
(test_failed_writes.py, test_damaged_files.py).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Nothing here imports torch or robustmix at the top: under pytest-xdist this file is also
# loaded by the controlling process, which runs no test, and the workers start only after
# it has started (importing torch, scipy.stats and the harness there cost the fast tier
# about 4 s at start and 1 s at exit on the faster AMD EPYC).

# The suite runs on one intra-op torch thread, and so do the commands it runs (in this
# process and in the ones it starts): they take ROBUSTMIX_THREADS as the user's choice, not
# the automatic one (robustmix.core.threads; the tests of that policy clear it, and
# test_threads.py's two_torch_threads gives a test two). Its results must not depend on how
# busy the machine is, and its tiny models run faster on one thread: beside other work, two
# OpenMP threads wait on each other (test_attacks.py's sweep fixture: 5 s on one thread,
# 136 s on two, on 2 cores at load 11).
os.environ.setdefault("ROBUSTMIX_THREADS", "1")

# The image-folder check caches its results (robustmix.data.image_check): in a folder of
# this session, never in the user's cache. Commands the tests start inherit it.
os.environ["ROBUSTMIX_CACHE_DIR"] = tempfile.mkdtemp(prefix="robustmix-test-cache-")


def _exit_now():
    """A pytest-xdist worker's end: the other exit handlers have run (this one, registered
    when this file is loaded, runs last); the interpreter's own teardown with torch loaded
    (about 2-3 s on the faster AMD EPYC, mostly torch's libraries) is skipped. The
    controller gets the results before this, and does not read a worker's exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if "PYTEST_XDIST_WORKER" in os.environ:   # set before a worker loads this file
    atexit.register(_exit_now)


def pytest_configure(config):
    if not hasattr(config, "workerinput"):   # a pytest that a worker's test started
        atexit.unregister(_exit_now)
    if not _xdist_controller(config):
        import torch

        torch.set_num_threads(1)


def _xdist_controller(config) -> bool:
    """Whether this process only hands tests to pytest-xdist workers (``-n N``, N > 0)."""
    return not hasattr(config, "workerinput") and bool(config.getoption("numprocesses", 0))


# The longest test files, longest first: pytest-xdist hands out whole files in collection
# order (--dist loadfile), so a long file collected late leaves the other worker idle at the
# end. The whole suite's longest (seconds on one worker, faster AMD EPYC, 2026-12-07):
# test_verdict_calibration.py, collected last, kept one worker busy 4-5 minutes after the
# other had finished; then the fast tier's (test_fuzz.py last cost it 6 s).
LONGEST_FIRST = ("test_kill_resume.py",          # 460 s
                 "test_verdict_calibration.py",  # about 250 s
                 "test_pool.py",                 # 272 s
                 "test_distributed.py",          # 265 s
                 "test_benchmarks.py",           # 238 s
                 "test_presets_e2e.py",          # 154 s
                 "test_diagnostics.py",          # 142 s (fast tier: 5 s)
                 "test_study.py", "test_fmix.py", "test_gpu_check.py", "test_chain.py",
                 "test_fuzz.py",                 # fast tier: 11 s
                 "test_models.py",               # fast tier: 7 s
                 "test_predictions.py", "test_attacks.py", "test_damaged_files.py",
                 "test_threads.py")


def pytest_collection_modifyitems(items):
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: else as found


@pytest.fixture(autouse=True)
def registry_as_it_was():
    """The method registry is global: a method a test registers (a plugin written into
    its tmp_path) is gone after the test, so no later test draws its masks."""
    from robustmix.core import methods

    saved, read = dict(methods._REGISTRY), methods._entry_points_read
    yield
    methods._REGISTRY.clear()
    methods._REGISTRY.update(saved)
    methods._entry_points_read = read


@pytest.fixture
def torch_one_thread():
    """One intra-op torch thread for the test (modules use it with
    ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``)."""
    from helpers import one_thread

    with one_thread():
        yield


# ---------------------------------------------------------------------------- runs made by
# forked commands (tests/kill_harness.py)


@pytest.fixture(scope="session")
def commands(tmp_path_factory):
    from kill_harness import THREAD_VARIABLES, Commands

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


@pytest.fixture(scope="session")
def reference(commands, tmp_path_factory):
    """An uninterrupted training run and its number of writes and seconds."""
    from kill_harness import TRAIN, TRAIN_WRITES

    out = tmp_path_factory.mktemp("reference") / "run"
    outcome = commands.run(TRAIN + ["--out", out])
    assert outcome.exitcode == 0, outcome.log
    assert outcome.writes == TRAIN_WRITES
    return out, outcome


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The reference run's command, run in this process (on one thread, as the forked ones):
    a finished run for the tests that only read one, without starting the fork server."""
    from kill_harness import TRAIN

    out = tmp_path_factory.mktemp("trained") / "run"
    in_process(TRAIN + ["--out", out])
    return out


@pytest.fixture(scope="session")
def attack_base(trained, tmp_path_factory):
    """A finished run that an earlier, different attack has already written results to."""
    from kill_harness import FIRST_ATTACK

    base = tmp_path_factory.mktemp("attack-base") / "run"
    shutil.copytree(trained, base)
    in_process(FIRST_ATTACK + [base])
    return base


def in_process(argv) -> None:
    """Run a robustmix command here, quietly, on one torch thread; it must succeed."""
    from helpers import one_thread
    from robustmix.app.cli import main

    with one_thread(), contextlib.redirect_stdout(io.StringIO()) as out, \
            contextlib.redirect_stderr(io.StringIO()) as err:
        code = main([str(a) for a in argv])
    assert code == 0, (argv, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def attack_reference(commands, attack_base, tmp_path_factory):
    """The attack run uninterrupted, in the directory the kill tests use."""
    from kill_harness import ATTACK, rows_without_wall_clock
    from robustmix.core.runs import ATTACK_STATE, ROBUSTNESS

    run = tmp_path_factory.mktemp("attacked") / "run"
    shutil.copytree(attack_base, run)
    outcome = commands.run(ATTACK + [run])
    assert outcome.exitcode == 0, outcome.log
    states = [path for path in outcome.written if Path(path).parent.name == ATTACK_STATE]
    assert len(states) >= 4, "AutoAttack saves its state after every batch"
    return run, rows_without_wall_clock(run / ROBUSTNESS), outcome


@pytest.fixture
def unfinished(trained, tmp_path):
    """The reference run before its weights were written (checkpoint at the last epoch)."""
    from robustmix.core import runs

    out = tmp_path / "unfinished"
    shutil.copytree(trained, out)
    (out / runs.WEIGHTS).unlink()
    return out


@pytest.fixture
def finished(attack_base, tmp_path):
    out = tmp_path / "finished"
    shutil.copytree(attack_base, out)
    return out
