"""`robustmix study --executor slurm` without a cluster: a fake sbatch and sacct on PATH
stand in for SLURM (what is submitted, what a rerun resubmits); bad options, a missing
submitit and a missing sbatch are one line and exit 2. The end-to-end run through
submitit's local executor is in test_pool.py."""

import json
import os
import sys

import pytest

from robustmix.app import slurm
from robustmix.core.errors import UsageError

from helpers import assert_one_line_error, mini_study, run_cli


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(mini_study(tmp_path / "study"))
    return path


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` that keeps the script it is given and answers job 4242; ``sacct`` that
    reports the state written in ``STATE`` for every job."""
    bin_dir, kept = tmp_path / "bin", tmp_path / "sbatch-scripts"
    bin_dir.mkdir()
    kept.mkdir()
    (tmp_path / "STATE").write_text("PENDING")
    (bin_dir / "sbatch").write_text(
        f"#!/bin/sh\ncp \"$1\" {kept}/\necho 'Submitted batch job 4242'\n")
    (bin_dir / "sacct").write_text(
        "#!/bin/sh\necho 'JobID|State|NodeList'\n"
        f"for id in 4242_0 4242_1; do echo \"$id|$(cat {tmp_path}/STATE)|\"; done\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")   # submitit looks for it
    for name in ("sbatch", "sacct", "srun"):
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return kept, tmp_path / "STATE"


def test_no_wait_submits_one_array_and_a_rerun_resubmits_nothing_queued(
        config, fake_slurm, capsys, tmp_path):
    pytest.importorskip("submitit")
    kept, state = fake_slurm
    argv = ["study", "--config", config, "--executor", "slurm", "--no-wait",
            "--slurm-partition", "gpu", "--slurm-time", "2:30:00", "--slurm-gpus-per-job", "1",
            "--slurm-cpus-per-job", "8", "--slurm-mem", "32G",
            "--slurm-array-parallelism", "4", "--slurm-extra", "account=vision",
            "--slurm-extra", "qos=high"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "2 submitted, 0 still queued" in out and "job 4242_0" in out
    (script,) = kept.iterdir()
    lines = script.read_text().splitlines()
    for flag in ("--partition=gpu", "--time=150", "--gpus-per-node=1", "--cpus-per-task=8",
                 "--mem=32G", "--array=0-1%2", "--account=vision", "--qos=high"):
        assert f"#SBATCH {flag}" in lines, flag
    saved = json.loads((tmp_path / "study" / slurm.JOBS_FILE).read_text())
    assert saved == {"vanilla-s0": "4242_0", "cutmix-s0": "4242_1"}
    assert (tmp_path / "study" / slurm.LOGS).is_dir()
    code, out, err = run_cli(capsys, *argv)          # still pending: nothing submitted
    assert code == 0 and "0 submitted, 2 still queued or running" in out
    assert len(list(kept.iterdir())) == 1
    state.write_text("CANCELLED by 0")                # gone: submitted again
    code, out, err = run_cli(capsys, *argv)
    assert code == 0 and "2 submitted, 0 still queued" in out


def test_a_saved_job_counts_only_while_slurm_will_still_run_it():
    states = {"1": "RUNNING", "2": "COMPLETED", "3": "PENDING", "4": "FAILED",
              "5": "CANCELLED by 12", "6": "UNKNOWN", "7": ""}
    saved = {"a": "1", "b": "2", "c": "3", "d": "4", "f": "5", "g": "6", "h": "7"}
    fresh, waiting = slurm.to_submit(list("abcdefgh"), saved, states.__getitem__)
    assert fresh == ["b", "d", "e", "f", "h"] and waiting == {"a": "1", "c": "3", "g": "6"}


@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30", 90), ("1:30:01", 91),
                                           ("2-00:00:00", 2880), ("0:00:30", 1)])
def test_slurm_time_takes_slurms_forms(text, minutes):
    assert slurm.parse_time(text) == minutes


def test_options_become_submitit_parameters():
    options = slurm.SlurmOptions(partition="p", time_min=60, mem="8G", extra={"qos": "x"})
    assert options.parameters() == {"timeout_min": 60, "slurm_partition": "p",
                                    "slurm_mem": "8G",
                                    "slurm_additional_parameters": {"qos": "x"}}


@pytest.mark.parametrize("argv, fragment", [
    (["--executor", "slurm", "--slurm-time", "soon"], "--slurm-time takes minutes"),
    (["--executor", "slurm", "--slurm-time", "0"], "at least a minute"),
    (["--executor", "slurm", "--slurm-extra", "account"], "--slurm-extra takes KEY=VALUE"),
    (["--executor", "slurm", "--slurm-gpus-per-job", "0"], "expected an integer >= 1"),
    (["--executor", "pbs"], "invalid choice: 'pbs'"),
    (["--slurm-partition", "gpu"], "--slurm-partition needs --executor slurm"),
    (["--no-wait"], "--no-wait needs --executor slurm"),
    (["--executor", "submitit-local", "--jobs", "2"], "--jobs and --devices are for this"),
])
def test_bad_slurm_options_are_one_line_and_exit_2(capsys, config, fake_slurm, argv,
                                                    fragment):
    code, _, err = run_cli(capsys, "study", "--config", config, *argv)
    assert_one_line_error(code, err, fragment)


def test_no_sbatch_is_one_line_and_exit_2(capsys, config, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    code, _, err = run_cli(capsys, "study", "--config", config, "--executor", "slurm")
    assert_one_line_error(code, err, "no sbatch on this machine's PATH")
    assert not (tmp_path / "study").exists()


def test_no_submitit_is_one_line_and_exit_2(capsys, config, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)   # import submitit now fails
    code, _, err = run_cli(capsys, "study", "--config", config, "--executor",
                           "submitit-local")
    assert_one_line_error(code, err, "pip install 'robustmix[slurm]'")
    with pytest.raises(UsageError):
        slurm.require_submitit()


def test_a_preempted_job_requeues_itself_whole(config):
    pytest.importorskip("submitit")
    import pickle

    from submitit.helpers import DelayedSubmission

    from robustmix.app.study_config import load_config

    job = slurm.RunJob(load_config(None, str(config)), "cutmix-s0", 1)
    again = job.checkpoint()
    assert isinstance(again, DelayedSubmission) and again.function is job
    copy = pickle.loads(pickle.dumps(job))     # what submitit sends to the node
    assert (copy.config, copy.label, copy.threads) == (job.config, "cutmix-s0", 1)
