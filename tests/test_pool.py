"""`robustmix study --jobs N`: the runs in worker processes give the inline study's files;
a failed run stops only itself; SIGTERM leaves a study that the rerun finishes; bad
--jobs/--devices are one line."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustmix.app import pool, study
from robustmix.app.study_config import load_config
from robustmix.core import runs
from robustmix.core.errors import UsageError

from helpers import assert_one_line_error, mini_study, one_thread, run_cli

VOLATILE = {"seconds", "images_per_s", "path", "run"}  # wall clock, and where a run lives
RUNS = ("vanilla-s0", "cutmix-s0")


def write_config(base: Path, out: Path) -> Path:
    path = base / f"{out.name}.toml"
    path.write_text(mini_study(out))
    return path


def tables(folder: Path) -> dict[str, list[dict]]:
    """Every CSV under ``folder`` (recursively) without its wall-clock and path columns."""
    result = {}
    for path in sorted(p for p in folder.rglob("*.csv") if p.name != "steps.csv"):  # a log
        with path.open(newline="") as handle:
            result[str(path.relative_to(folder))] = [
                {k: v for k, v in row.items() if k not in VOLATILE} for row in csv.DictReader(handle)]
    return result


def without_transfer(found: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The tables without what the transfer step adds once every run is attacked: its
    check, its breaks, Square where it flagged, and the worst cases that include them."""
    later = {"transfer", "square", "worst-case"}
    # the per-example file is rewritten whole once transfer's breaks join it: compared in
    # full after the rerun below, with every other table
    return {name: [row for row in rows if row.get("check") != "transfer"
                   and row.get("attack") not in later] for name, rows in found.items()
            if name != "robustness_examples.csv"}


@pytest.fixture(scope="module")
def inline(tmp_path_factory):
    """The miniature study run inline, one torch thread."""
    base = tmp_path_factory.mktemp("pool")
    out = base / "inline"
    with one_thread():
        study.run_study(load_config(None, str(write_config(base, out))), progress=False,
                        echo=lambda line: None)
    return base, out


@pytest.mark.slow
def test_two_workers_write_the_inline_studys_files(inline):
    base, reference = inline
    out = base / "pooled"
    lines = []
    failures = pool.run_pool(load_config(None, str(write_config(base, out))), jobs=2,
                             threads=1, echo=lines.append)
    assert failures == []
    for name in RUNS:
        mine, theirs = out / "runs" / name, reference / "runs" / name
        assert (mine / runs.WEIGHTS).read_bytes() == (theirs / runs.WEIGHTS).read_bytes()
        assert runs.read_config(mine)["threads"] == runs.read_config(theirs)["threads"] == 1
        assert (out / pool.LOGS / f"{name}.log").is_file()
    assert tables(out) == tables(reference)
    assert (out / "report.md").is_file()
    finished = [line for line in lines if line.startswith("[")]
    # train, attack, autoattack, evaluate and corruptions, for each of the 2 runs
    assert len(finished) == 10 and finished[-1].startswith("[10/10] ")


@pytest.mark.slow
def test_a_failed_run_is_listed_and_the_others_finish(inline, capsys):
    base, reference = inline
    out = base / "one-fails"
    # vanilla: its settings, but a damaged checkpoint, so that resuming it fails in the
    # worker; cutmix: trained, with its attacks and evaluation still to do
    (out / "runs" / "vanilla-s0").mkdir(parents=True)
    shutil.copy(reference / "runs" / "vanilla-s0" / runs.CONFIG, out / "runs" / "vanilla-s0")
    (out / "runs" / "vanilla-s0" / runs.CHECKPOINT).write_bytes(b"not a checkpoint")
    cutmix = out / "runs" / "cutmix-s0"
    cutmix.mkdir()
    for name in (runs.CONFIG, runs.METRICS, runs.CHECKPOINT, runs.WEIGHTS):
        shutil.copy(reference / "runs" / "cutmix-s0" / name, cutmix)
    config = write_config(base, out)
    code, printed, err = run_cli(capsys, "study", "--config", config, "--jobs", "2")
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[0].startswith("robustmix study: 1 run(s) failed") and len(lines) == 2
    assert lines[1].startswith("  vanilla-s0: train: ") and "checkpoint" in lines[1]
    assert "Traceback" not in err and not (out / "report.md").exists()
    assert "Traceback" in (out / pool.LOGS / "vanilla-s0.log").read_text()
    # all but the transfer checks, which wait until every run is attacked
    assert without_transfer(tables(cutmix)) == \
        without_transfer(tables(reference / "runs" / "cutmix-s0"))
    # mended, the rerun does only what is not done: vanilla's steps and the report
    shutil.rmtree(out / "runs" / "vanilla-s0")
    shutil.copytree(reference / "runs" / "vanilla-s0", out / "runs" / "vanilla-s0")
    code, printed, err = run_cli(capsys, "study", "--config", config, "--jobs", "2")
    assert code == 0, err
    assert "0 steps of 0 runs" in printed and "wrote" in printed
    assert tables(out) == tables(reference)


@pytest.mark.slow
def test_sigterm_ends_every_worker_and_the_rerun_finishes(inline, tmp_path):
    base, reference = inline
    out = tmp_path / "stopped"
    config = write_config(tmp_path, out)
    command = [sys.executable, "-m", "robustmix", "study", "--config", str(config),
               "--jobs", "2"]
    env = {**os.environ, "ROBUSTMIX_THREADS": "2"}   # two workers, one thread each
    parent = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 120
    while not list((out / "runs").glob("*/" + runs.METRICS)):   # an epoch is done
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    workers = _children(parent.pid)
    assert len(workers) == 2
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 130, err
    assert "interrupted" in err
    assert not [pid for pid in workers if _alive(pid)], "every worker must be gone"
    assert not (out / "report.md").exists()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert tables(out) == tables(reference)
    for name in RUNS:
        assert (out / "runs" / name / runs.WEIGHTS).read_bytes() == \
            (reference / "runs" / name / runs.WEIGHTS).read_bytes()


def _children(pid: int) -> list[int]:
    """The worker processes that ``pid`` spawned (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ------------------------------------------------------------------------------ devices


def test_each_worker_sees_one_gpu_round_robin(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert pool.worker_slots("auto", None, 4) == ["0", "1", "2", "0"]
    assert pool.worker_slots("cuda", "cuda:2,cuda:0", 2) == ["2", "0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")   # cuda:N is the N-th visible GPU
    assert pool.worker_slots("auto", "cuda:1", 2) == ["7", "7"]
    assert pool.worker_slots("cpu", None, 2) == [None, None]


@pytest.mark.parametrize("device, devices, fragment", [
    ("cpu", "cuda:0", "needs the study's device to be auto or cuda"),
    ("auto", "gpu0", "cpu or a comma list of cuda:N, got 'gpu0'"),
    ("auto", "cuda:9", "cuda:9: 2 GPU(s) visible"),
    ("cuda:1", "cpu", "--devices cpu, but the study's device is cuda:1"),
])
def test_bad_devices_are_refused(monkeypatch, device, devices, fragment):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        pool.worker_slots(device, devices, 2)


def test_threads_share_the_parents(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert [pool.default_threads(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


@pytest.mark.parametrize("argv, fragment", [
    (["--jobs", "0"], "--jobs: expected an integer >= 1, got 0"),
    (["--jobs", "2", "--devices", "tpu:0"], "--devices takes cpu or a comma list of cuda:N"),
])
def test_bad_jobs_and_devices_are_one_line_and_exit_2(capsys, tmp_path, argv, fragment):
    config = write_config(tmp_path, tmp_path / "study")
    code, _, err = run_cli(capsys, "study", "--config", config, *argv)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "study").exists()


def test_the_display_counts_steps_and_drops_a_failed_runs_rest():
    lines = []
    display = pool.Display({"a": ["train", "attack"], "b": ["train", "attack"]}, 2,
                           lines.append)
    display.done("a", "train", "ok", 2.0)
    display.failed("b", "train", "train: broken")
    display.done("a", "attack", "ok", 1.0)
    assert lines[0].startswith("[1/4] train a: ok (2.0 s; elapsed ")
    assert "about 0:03 left" in lines[0]     # 3 steps left at train's mean 2 s, 2 workers
    assert lines[1] == "[1/2] train b: FAILED: train: broken"
    assert lines[2].startswith("[2/2] attack a: ok") and "left" not in lines[2]


# ------------------------------------------------------------------------------ submitit


@pytest.mark.slow
def test_submitit_local_jobs_write_the_inline_studys_files(inline, capsys):
    pytest.importorskip("submitit")
    from robustmix.app import slurm

    base, reference = inline
    out = base / "submitit-local"
    config = load_config(None, str(write_config(base, out)))
    options = slurm.SlurmOptions(time_min=30)
    assert slurm.submit_study(config, "submitit-local", options, threads=1) == []
    assert tables(out) == tables(reference)
    for name in RUNS:
        assert (out / "runs" / name / runs.WEIGHTS).read_bytes() == \
            (reference / "runs" / name / runs.WEIGHTS).read_bytes()
    assert sorted(json_of(out / slurm.JOBS_FILE)) == sorted(RUNS)
    lines = []   # the rerun submits nothing
    assert slurm.submit_study(config, "submitit-local", options, echo=lines.append) == []
    assert "0 runs not done: 0 submitted" in lines[0]


def json_of(path):
    import json

    return json.loads(path.read_text())
