"""torch's thread count: the user's choice, or the cores free at start (robustmix.core.threads).

The policy is a pure function of (cores, busy, environment, flag, torch's default), tested
case by case and for its invariants; the CLI applies it once per command, says so in one
line, records it in config.json, and refuses a bad value in one line with exit code 2.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import assert_one_line_error, run_cli
from robustmix.core import runs, threads
from robustmix.core.errors import UsageError
from robustmix.training.run_files import threads_note

NO_CHOICE: dict[str, str] = {}
TRAIN = ["train", "--quiet", "--epochs", "1", "--image-size", "8", "--batch-size", "256"]


@pytest.fixture
def unchosen(monkeypatch):
    """No thread count chosen in the environment (conftest chooses one for the suite)."""
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv(threads.OMP, raising=False)


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- the policy


@pytest.mark.parametrize("cores, busy, cap, expected", [
    (2, 0.0, 2, 2),      # a quiet 2-core machine: both
    (2, 0.05, 2, 2),     # background noise
    (2, 1.0, 2, 1),      # one CPU-bound neighbour: one thread, never a stalled barrier
    (2, 2.0, 2, 1),      # every core taken: still one
    (2, 0.5, 2, 2),      # a core half free counts (rounded half up)
    (2, 0.51, 2, 1),     # less than half free does not
    (16, 4.0, 8, 8),     # hyperthreads: torch's physical-core default caps it
    (16, 10.0, 8, 6),
    (2, 0.0, 32, 2),     # a container given 2 of 64 CPUs: torch's default would be 32
    (4, None, 4, 4),     # load unknown: torch's default within the cores we may use
    (4, None, None, 4),
])
def test_automatic_choice_is_the_free_cores_within_torchs_default(cores, busy, cap, expected):
    choice = threads.choose(cores=cores, busy=busy, env=NO_CHOICE, flag=None, cap=cap,
                            measure="CPU time over the last 0.2 s")
    assert (choice.threads, choice.source, choice.cores) == (expected, "auto", cores)


@given(cores=st.integers(1, 256), busy=st.floats(0, 512), more=st.floats(0, 64),
       cap=st.integers(1, 256))
def test_automatic_choice_stays_in_range_and_never_rises_with_load(cores, busy, more, cap):
    quiet = threads.choose(cores=cores, busy=busy, env=NO_CHOICE, flag=None, cap=cap)
    loaded = threads.choose(cores=cores, busy=busy + more, env=NO_CHOICE, flag=None, cap=cap)
    assert 1 <= loaded.threads <= quiet.threads <= min(cores, cap)
    # never more threads than free cores (rounded half up), but always one
    assert quiet.threads == 1 or quiet.threads <= cores - busy + 0.5


@pytest.mark.parametrize("flag, env, expected, source", [
    (3, {"ROBUSTMIX_THREADS": "5", "OMP_NUM_THREADS": "7"}, 3, "--threads"),
    (None, {"ROBUSTMIX_THREADS": "5", "OMP_NUM_THREADS": "7"}, 5, "ROBUSTMIX_THREADS"),
    (None, {"OMP_NUM_THREADS": "7"}, 7, "OMP_NUM_THREADS"),
    (None, {"OMP_NUM_THREADS": "4,2"}, 4, "OMP_NUM_THREADS"),   # OpenMP's nested levels
    (None, {"ROBUSTMIX_THREADS": " ", "OMP_NUM_THREADS": "7"}, 7, "OMP_NUM_THREADS"),
    (None, {"ROBUSTMIX_THREADS": "64"}, 64, "ROBUSTMIX_THREADS"),   # a choice is kept
])
def test_the_flag_then_robustmix_threads_then_omp_num_threads_choose(flag, env, expected,
                                                                     source):
    choice = threads.choose(cores=2, busy=2.0, env=env, flag=flag, cap=2)
    assert (choice.threads, choice.source) == (expected, source)


@pytest.mark.parametrize("name, value", [
    ("ROBUSTMIX_THREADS", "0"), ("ROBUSTMIX_THREADS", "-1"), ("ROBUSTMIX_THREADS", "x"),
    ("ROBUSTMIX_THREADS", "2,1"), ("OMP_NUM_THREADS", "x"), ("OMP_NUM_THREADS", "0")])
def test_a_bad_variable_is_refused_by_name(name, value):
    with pytest.raises(UsageError, match=f"^{name} must be an integer >= 1, got '{value}'$"):
        threads.choose(cores=2, busy=0.0, env={name: value}, flag=None)


def test_the_line_says_the_choice_and_how_to_change_it():
    auto = threads.choose(cores=2, busy=1.04, env=NO_CHOICE, flag=None, cap=2,
                          measure="CPU time over the last 0.2 s")
    assert auto.line() == ("robustmix: 1 torch thread (2 cores, 1.0 busy with other work: "
                           "CPU time over the last 0.2 s); --threads N or "
                           "ROBUSTMIX_THREADS=N to choose")
    omp = threads.choose(cores=2, busy=None, env={"OMP_NUM_THREADS": "2"}, flag=None)
    assert omp.line() == ("robustmix: 2 torch threads (OMP_NUM_THREADS=2, your OpenMP "
                          "setting; --threads N or ROBUSTMIX_THREADS=N to choose)")
    flag = threads.choose(cores=2, busy=None, env=NO_CHOICE, flag=4)
    assert flag.line() == "robustmix: 4 torch threads (--threads 4)"


# ---------------------------------------------------------------------------- measuring


def write_stat(path, cpus):
    """A /proc/stat with one line per CPU: (user, system, idle, iowait, steal) ticks."""
    lines = ["cpu  1 1 1 1 1 1 1 1 0 0"]
    for n, (user, system, idle, iowait, steal) in enumerate(cpus):
        lines.append(f"cpu{n} {user} 0 {system} {idle} {iowait} 0 0 {steal} 0 0")
    path.write_text("\n".join(lines + ["intr 5 0", "ctxt 7"]) + "\n")


def test_busy_cores_are_the_busy_share_of_the_cpus_we_may_use(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    samples = [[(100, 0, 100, 0, 0), (100, 0, 100, 0, 0), (0, 0, 0, 0, 0)],
               # then cpu0: 40 user + 10 system of 100; cpu1: 90 user + 10 steal;
               # cpu2 (not ours) saturated; iowait is idle time
               [(140, 10, 140, 10, 0), (190, 0, 100, 0, 10), (100, 0, 0, 0, 0)]]
    write_stat(stat, samples[0])
    start = threads.cpu_times([0, 1], str(stat))
    write_stat(stat, samples[1])
    end = threads.cpu_times([0, 1], str(stat))
    assert start == (200, 400) and end == (350, 600)
    # measure_busy: the share of busy ticks times the CPUs: (150 / 200) * 2 = 1.5
    readings = iter([start, end])
    monkeypatch.setattr(threads, "cpu_times", lambda cpus: next(readings))
    busy, how = threads.measure_busy([0, 1], seconds=0)
    assert busy == pytest.approx(1.5) and how == "CPU time over the last 0 s"


def test_without_proc_stat_the_load_average_counts_our_share_of_the_machine(monkeypatch):
    assert threads.cpu_times([0], "/nonexistent/stat") is None
    monkeypatch.setattr(threads, "cpu_times", lambda cpus: None)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    assert threads.measure_busy([0, 1], seconds=0) == (1.5, "1-minute load average")


def test_this_machine_is_measured_within_its_cores():
    cpus = threads.usable_cores()
    busy, how = threads.measure_busy(cpus, seconds=0.05)
    if busy is not None:
        assert 0 <= busy <= (len(cpus) if cpus else 4096) + 1e-9, how


# ---------------------------------------------------------------------------- the command


def thread_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("robustmix: ")]


@pytest.mark.usefixtures("two_torch_threads")
def test_the_flag_sets_the_runs_threads_once_and_this_process_keeps_its_own(capsys, tmp_path):
    code, out, err = run_cli(capsys, *TRAIN, "--threads", "1", "--out", tmp_path / "r")
    assert code == 0, err
    assert thread_lines(out) == ["robustmix: 1 torch thread (--threads 1)"]
    assert runs.read_config(tmp_path / "r")["threads"] == 1
    assert torch.get_num_threads() == 2   # restored for the caller


@pytest.mark.usefixtures("unchosen")
def test_the_automatic_choice_is_said_once_and_recorded(capsys, tmp_path):
    code, out, err = run_cli(capsys, *TRAIN, "--out", tmp_path / "r")
    assert code == 0, err
    [line] = thread_lines(out)
    chosen = runs.read_config(tmp_path / "r")["threads"]
    assert line.startswith(f"robustmix: {chosen} torch thread")
    assert line.endswith("--threads N or ROBUSTMIX_THREADS=N to choose")
    assert 1 <= chosen <= max(1, len(threads.usable_cores() or [0]))


def test_robustmix_threads_is_a_choice_too(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(threads.ENV, "1")
    monkeypatch.setenv(threads.OMP, "2")
    code, out, err = run_cli(capsys, *TRAIN, "--out", tmp_path / "r")
    assert code == 0, err
    assert thread_lines(out) == ["robustmix: 1 torch thread (ROBUSTMIX_THREADS=1)"]


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_a_bad_flag_is_one_line_and_exit_2(capsys, value):
    code, _, err = run_cli(capsys, *TRAIN, "--threads", value)
    assert_one_line_error(code, err, "--threads")


@pytest.mark.parametrize("name", ["ROBUSTMIX_THREADS", "OMP_NUM_THREADS"])
@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_a_bad_variable_is_one_line_and_exit_2(capsys, monkeypatch, tmp_path, name, value):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setenv(name, value)
    code, out, err = run_cli(capsys, *TRAIN, "--out", tmp_path / "r")
    assert_one_line_error(code, err, f"robustmix train: error: {name} must be an integer")
    assert not (tmp_path / "r").exists() and not thread_lines(out)


def test_commands_that_do_not_compute_choose_nothing(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(threads.ENV, "x")   # would be refused if it were read
    code, out, err = run_cli(capsys, "study", "--print-config")
    assert code == 0, err
    assert not thread_lines(out)
    code, out, err = run_cli(capsys, "runs", tmp_path)
    assert not thread_lines(out) and "Traceback" not in err


def test_help_imports_no_torch():
    probe = ("import sys\nfrom robustmix.app.cli import main\ntry:\n    main(['train', '--help'])"
             "\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stderr


# ---------------------------------------------------------------------------- resume


def test_resuming_on_another_thread_count_is_said_with_the_way_back():
    note = threads_note("runs/x", 2, torch.device("cpu"))
    now = torch.get_num_threads()
    if now == 2:
        assert note is None
    else:
        assert note is not None and f"started with 2 torch thread(s) and resumes with {now}" \
            in note and "--threads 2" in note
    assert threads_note("runs/x", now, torch.device("cpu")) is None
    assert threads_note("runs/x", None, torch.device("cpu")) is None      # an older run
    assert threads_note("runs/x", now + 1, torch.device("cuda")) is None   # GPU: no CPU sums


@pytest.mark.slow
@pytest.mark.usefixtures("two_torch_threads")
def test_train_resume_with_other_threads_says_so(capsys, tmp_path):
    out = tmp_path / "r"
    code, _, err = run_cli(capsys, *TRAIN, "--threads", "1", "--out", out)
    assert code == 0, err
    (out / runs.WEIGHTS).unlink()   # killed after its last checkpoint
    code, printed, err = run_cli(capsys, "train", "--quiet", "--threads", "2",
                                 "--resume", out)
    assert code == 0, err
    assert "was started with 1 torch thread(s) and resumes with 2" in printed
    assert json.loads((out / runs.CONFIG).read_text())["threads"] == 1   # as it started
    assert runs.is_complete(out)


# ------------------------------------------------------------------ checking again (issue 33)


def test_an_automatic_count_follows_a_neighbour_that_comes_and_goes(two_torch_threads):
    start = threads.choose(cores=2, busy=0.0, env=NO_CHOICE, flag=None, cap=2)
    governor = threads.Governor(start)
    assert governor.recheck("attack fgsm 8/255", busy=1.0) == 1 == torch.get_num_threads()
    assert governor.recheck("attack pgd 8/255", busy=1.0) == 1
    assert governor.recheck("attack apgd 8/255", busy=0.0) == 2 == torch.get_num_threads()
    assert [where for where, _, _ in governor.changes] == ["attack fgsm 8/255",
                                                           "attack apgd 8/255"]
    assert governor.since_mark == [2, 1, 2]
    governor.mark()
    assert governor.since_mark == [2]


def test_a_count_chosen_at_a_busy_start_grows_back_to_the_free_cores(two_torch_threads):
    start = threads.choose(cores=2, busy=1.0, env=NO_CHOICE, flag=None, cap=2)
    assert start.threads == 1 and start.most == 2
    torch.set_num_threads(1)
    assert threads.Governor(start).recheck("train x", busy=0.2) == 2


@pytest.mark.parametrize("env, flag", [({threads.ENV: "2"}, None), ({}, 2), ({threads.OMP: "2"}, None)])
def test_a_count_the_user_chose_is_never_changed(two_torch_threads, monkeypatch, env, flag):
    choice = threads.choose(cores=2, busy=None, env=env, flag=flag)
    before = threads.apply(choice)
    try:
        monkeypatch.setattr(threads, "others_ready", lambda *a, **k: 2.0)
        threads.recheck("attack fgsm 8/255")
        assert torch.get_num_threads() == 2 and threads.used() == [2]
    finally:
        threads.release()
        torch.set_num_threads(before)


def test_recheck_applies_where_the_choice_was_automatic(two_torch_threads, monkeypatch):
    before = threads.apply(threads.choose(cores=2, busy=0.0, env=NO_CHOICE, flag=None, cap=2))
    try:
        monkeypatch.setattr(threads, "others_ready", lambda *a, **k: 1.0)
        threads.mark()
        threads.recheck("attack fgsm 8/255")
        assert torch.get_num_threads() == 1 and threads.used() == [2, 1]
    finally:
        threads.release()
        torch.set_num_threads(before)
    threads.recheck("after release")   # no governor: nothing changes
    assert torch.get_num_threads() == before


def test_threads_ready_to_run_are_read_from_proc(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3 4\nprocs_running 5\nprocs_blocked 0\n")
    assert threads.procs_running(str(stat)) == 5
    assert threads.procs_running(str(tmp_path / "none")) is None
    tasks = tmp_path / "task"
    for tid, state in [(10, "R"), (11, "S"), (12, "R"), (13, "D")]:
        (tasks / str(tid)).mkdir(parents=True)
        (tasks / str(tid) / "stat").write_text(f"{tid} (py thon) {state} 1 2 3\n")
    assert threads.own_running(str(tasks)) == 2
    monkeypatch.setattr(threads, "procs_running", lambda: 5)
    monkeypatch.setattr(threads, "own_running", lambda: 2)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    # 3 others on a 4-core machine, 2 of whose cores are ours: 1.5 against ours
    assert threads.others_ready([0, 1], reads=3, gap=0.0) == 1.5
    assert threads.others_ready(None, reads=1, gap=0.0) == 3.0


def test_this_process_is_seen_running_itself():
    assert threads.own_running() >= 1
    assert threads.procs_running() is None or threads.procs_running() >= 1


def test_an_attack_checks_the_count_again_before_every_eps(monkeypatch):
    from helpers import two_conv_cnn
    from robustmix.attacks import AttackConfig, robustness

    seen = []
    monkeypatch.setattr(threads, "recheck", seen.append)
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6) % 10
    config = AttackConfig(attacks=("fgsm", "pgd"), eps=("1/255", "2/255", "4/255"))
    robustness(two_conv_cnn(), x, y, config)
    assert seen == [f"{a} {e}/255" for a in ("fgsm", "pgd") for e in (1, 2, 4)]
