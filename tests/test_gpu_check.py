"""benchmarks/gpu_check.py: the GPU check's helpers, its harness, and the whole command at toy
size on the CPU (``--device cpu``), whose gpu_check.json must hold every check, each passed
with numbers that fit together or skipped with its reason.

No assertion here is on a time: only the command's own timeouts (generous here: the suite
may share the machine) decide whether a check ran out of time.
"""

import json
import math
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import gpu_check  # noqa: E402
from robustmix.core.errors import UsageError  # noqa: E402
from robustmix.mixing import DATA_FREE_MIX_NAMES  # noqa: E402


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


# ---------------------------------------------------------------------------- pure helpers


def test_agreement_is_the_share_of_equal_flags_per_key():
    a = {("pgd", "8/255"): torch.tensor([True, False, True, True]),
         ("fgsm", "8/255"): torch.tensor([False, False]),
         ("square", "8/255"): torch.zeros(0, dtype=torch.bool)}
    b = {("pgd", "8/255"): torch.tensor([True, True, True, True]),
         ("fgsm", "8/255"): torch.tensor([False, False]),
         ("square", "8/255"): torch.zeros(0, dtype=torch.bool)}
    fractions = gpu_check.agreement(a, b)
    assert fractions == {("pgd", "8/255"): 0.75, ("fgsm", "8/255"): 1.0,
                         ("square", "8/255"): 1.0}
    assert gpu_check.disagreements(fractions) == ["pgd at 8/255: 0.750 < 0.99"]
    assert gpu_check.disagreements(fractions, minimum=0.75) == []
    assert gpu_check.disagreements({("pgd", "8/255"): float("nan")}) != []


def test_agreement_refuses_results_that_do_not_match():
    flags = {("pgd", "8/255"): torch.tensor([True, False])}
    with pytest.raises(ValueError, match="different keys"):
        gpu_check.agreement(flags, {("pgd", "16/255"): torch.tensor([True, False])})
    with pytest.raises(ValueError, match=r"\(2,\) flags against \(3,\)"):
        gpu_check.agreement(flags, {("pgd", "8/255"): torch.tensor([True, False, True])})


def report(card=None, checks=None):
    machine = {"torch": "2.9", "cuda": "12.8", "device": "cuda:0" if card else "cpu",
               "cpu": "a CPU", "date": "2026-12-07T12:00:00", "gpu": card and card["name"]}
    return {"machine": machine, "card": card, "threads": 4, "seconds": 300.0, "cpu_s": 900.0,
            "command": "python -m benchmarks.gpu_check", "checks": checks or {}}


def test_the_markdown_names_the_card_and_says_why_a_check_failed_or_was_skipped():
    card = {"name": "NVIDIA H100 80GB HBM3", "count": 1, "capability": "9.0",
            "memory_gib": 79.1, "cuda": "12.8", "cudnn": 91002}
    checks = {
        "train": {"status": "passed", "summary": "robustmix 20,000 images/s | 4.1×",
                  "seconds": 40.04, "peak": {"gpu_mib": 2048.4, "rss_mib": 900}},
        "ddp": {"status": "failed", "reason": "timed out after 55 s", "seconds": 65.0},
        "compile": {"status": "skipped", "reason": "Triton is not installed", "seconds": 1.0,
                    "peak": {"gpu_mib": 0.0}},
        "study": {"status": "passed", "summary": "2 of 2 runs", "seconds": 50.0,
                  "peak": {"gpu_mib": None, "gpu_note": "in the study's workers"}}}
    text = gpu_check.markdown(report(card, checks))
    lines = text.splitlines()
    assert lines[0] == "# GPU check: NVIDIA H100 80GB HBM3"
    assert "compute capability 9.0" in text and "CUDA 12.8" in text and "torch 2.9" in text
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| check")]
    assert [row.split(" | ")[0] for row in rows] == ["| train", "| ddp", "| compile", "| study"]
    assert all(row.count(" | ") == 4 for row in rows), "a | in a summary is escaped"
    assert "robustmix 20,000 images/s \\| 4.1×" in rows[0] and "GPU 2,048 MiB" in rows[0]
    assert "| failed | failed: timed out after 55 s | 65.0 |" in rows[1]
    assert "skipped: Triton is not installed" in rows[2] and "GPU 0 MiB" in rows[2]
    assert rows[3].endswith("| GPU: in the study's workers |")


def test_a_cpu_report_says_no_gpu_ran_it_and_gives_rss():
    checks = {"model": {"status": "passed", "summary": "ok", "seconds": 3.0,
                        "peak": {"gpu_mib": None, "rss_mib": 512.4}}}
    text = gpu_check.markdown(report(None, checks))
    assert text.startswith("# GPU check: no GPU (a CPU toy run")
    assert "card: none; torch 2.9; CUDA 12.8 (torch's build)" in text
    assert "| RSS 512 MiB |" in text and "GPU" not in text.split("\n", 1)[1].split("|")[-2]
    assert gpu_check.exit_code(report(None, checks)) == 0
    checks["ddp"] = {"status": "failed", "reason": "x"}
    assert gpu_check.exit_code(report(None, checks)) == 1


def test_only_takes_known_checks_and_brings_the_model_for_the_attack_checks():
    assert gpu_check.selected(None) == gpu_check.CHECKS
    assert gpu_check.selected("autoattack, train") == ("model", "train", "autoattack")
    assert gpu_check.selected("study") == ("study",)
    for bad in ("nope", "train,nope", ","):
        with pytest.raises(UsageError, match="--only takes a comma list"):
            gpu_check.selected(bad)


def test_the_timeouts_leave_the_command_within_8_minutes():
    assert set(gpu_check.TIMEOUTS) == set(gpu_check.CHECKS)
    assert sum(gpu_check.TIMEOUTS.values()) <= 7.5 * 60


@pytest.mark.parametrize("argv, fragment", [
    (["--only", "nope"], "--only takes a comma list"),
    (["--timeout-scale", "0"], "--timeout-scale must be > 0"),
    (["--threads", "0"], "--threads must be an integer >= 1"),
    (["--device", "tpu"], "--device takes auto, cpu, cuda or cuda:N, got 'tpu'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, fragment, tmp_path, capsys):
    code = gpu_check.main(argv + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "out").exists(), "nothing written before the input is judged"


@pytest.mark.parametrize("name, expected", [("cuda", "cuda:0"), ("auto", "cuda:0"),
                                            ("cuda:1", "cuda:1"), ("cuda:2", None)])
def test_a_gpu_is_named_with_its_index_and_must_be_there(name, expected, tmp_path,
                                                          monkeypatch):
    """The checks call torch.cuda.set_device, which refuses a device without an index."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    args = gpu_check.parse(["--device", name, "--out", str(tmp_path), "--threads", "3"])
    if expected is None:
        with pytest.raises(UsageError, match="--device cuda:2: 2 GPU"):
            gpu_check.setting_from(args)
        return
    setting = gpu_check.setting_from(args)
    assert (setting.device, setting.toy, setting.threads) == (expected, False, 3)
    assert setting.compile_backend == "inductor" and setting.sizes("train")["arch"] == \
        "preactresnet18"


def test_a_malformed_option_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--threads", "many"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--threads: invalid int value: 'many'" in err


def test_an_out_that_is_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert gpu_check.main(["--out", str(tmp_path / "file"), "--device", "cpu"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the harness
# The checks below run in processes forked from this one (the command forks them from a
# server; forking here saves the test that server's start-up). They compute nothing.


def overruns(setting):
    """Starts a grandchild that would outlive the check, then waits past any timeout."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    (Path(setting.out) / "grandchild").write_text(str(child.pid))
    time.sleep(600)


def skips(setting):
    raise gpu_check.Skip("no such card here")


def breaks(setting):
    print("the check's own output")
    raise RuntimeError("first line\nthe line that says what broke")


def fails(setting):
    return {"failures": ["pgd at 8/255: 0.970 < 0.99"], "summary": "flags differ",
            "peak": {"gpu_note": "x"}, "n": 3}


def passes(setting):
    return {"summary": "fine", "n": 3}


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.slow
def test_each_check_is_recorded_as_it_ended_and_an_overrun_is_killed_whole(tmp_path):
    setting = gpu_check.Setting("cpu", 1, "aot_eager", str(tmp_path), toy=True)
    for folder in ("logs", "checks", "work"):
        (tmp_path / folder).mkdir()
    context = multiprocessing.get_context("fork")
    records = {name: gpu_check.run_check(context, name, setting, timeout, function)
               for name, timeout, function in (("overruns", 3, overruns), ("skips", 60, skips),
                                               ("breaks", 60, breaks), ("fails", 60, fails),
                                               ("passes", 60, passes))}
    assert records["overruns"]["status"] == "failed"
    assert records["overruns"]["reason"] == "timed out after 3 s"
    assert records["overruns"]["seconds"] >= 3
    grandchild = int((tmp_path / "grandchild").read_text())
    deadline = time.monotonic() + 30
    while not gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(grandchild), "the check's whole process group was ended"
    assert (records["skips"]["status"], records["skips"]["reason"]) == \
        ("skipped", "no such card here")
    assert records["breaks"]["status"] == "failed"
    assert records["breaks"]["reason"] == "RuntimeError: the line that says what broke"
    log = (tmp_path / "logs" / "breaks.log").read_text()
    assert "the check's own output" in log and "Traceback" in log
    assert records["fails"]["status"] == "failed"
    assert records["fails"]["reason"] == "pgd at 8/255: 0.970 < 0.99"
    assert records["fails"]["numbers"] == {"n": 3}
    assert records["fails"]["peak"]["gpu_note"] == "x"
    assert records["passes"]["status"] == "passed" and records["passes"]["reason"] is None
    assert records["passes"]["summary"] == "fine" and records["passes"]["numbers"] == {"n": 3}
    assert positive(records["passes"]["peak"]["rss_mib"])
    assert records["passes"]["peak"]["gpu_mib"] is None


# ---------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """``python -m benchmarks.gpu_check --device cpu`` with one thread per process."""
    out = tmp_path_factory.mktemp("gpu-check")
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu",
                           "--out", str(out), "--threads", "1", "--timeout-scale", "20"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    return out, done, json.loads((out / "gpu_check.json").read_text())


def ran(record: dict) -> bool:
    """Passed (True), or skipped with a reason (False); anything else fails the test."""
    assert record["status"] in ("passed", "skipped"), record
    if record["status"] == "skipped":
        assert record["reason"], record
    return record["status"] == "passed"


@pytest.mark.slow
def test_the_cpu_run_writes_every_check_passed_or_skipped_with_its_reason(cpu_run):
    out, done, result = cpu_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list(result["checks"]) == list(gpu_check.CHECKS)
    assert result["card"] is None and result["machine"]["gpu"] is None
    assert result["setting"]["toy"] and result["threads"] == 1
    for name, record in result["checks"].items():
        ran(record)
        assert positive(record["seconds"]) and record["seconds"] <= record["timeout_s"]
        assert positive(record["peak"]["rss_mib"]) and positive(record["cpu_s"]), name
        assert (out / "logs" / f"{name}.log").is_file()
    table = (out / "gpu_check.md").read_text()
    assert table.startswith("# GPU check: no GPU")
    for name, record in result["checks"].items():
        assert f"| {name} | {record['status']} |" in table
    assert table in done.stdout


@pytest.mark.slow
def test_the_cpu_runs_training_numbers_fit_together(cpu_run):
    _, _, result = cpu_run
    checks = result["checks"]
    model = checks["model"]["numbers"]
    assert ran(checks["model"]) and 0 < model["test_acc"] <= 1 and positive(model["images_per_s"])
    train = checks["train"]["numbers"]
    assert ran(checks["train"])
    assert train["speedup"] == pytest.approx(
        train["robustmix_images_per_s"] / train["dataloader_images_per_s"])
    if ran(checks["compile"]):
        compiled = checks["compile"]["numbers"]
        assert compiled["backend"] == "aot_eager" and positive(compiled["compiled_images_per_s"])
        assert compiled["compiled_over_eager"] == pytest.approx(
            compiled["compiled_images_per_s"] / compiled["eager_images_per_s"])
    mixing = checks["mixing"]["numbers"]
    assert ran(checks["mixing"]) and set(mixing["shares"]) == set(DATA_FREE_MIX_NAMES)
    assert all(0 < row["share"] < 1 for row in mixing["shares"].values())
    assert positive(mixing["puzzlemix"]["over_cutmix"])


@pytest.mark.slow
def test_the_cpu_runs_attack_numbers_fit_together(cpu_run):
    from robustmix.attacks.registry import registered

    _, _, result = cpu_run
    attacks = result["checks"]["attacks"]
    assert ran(attacks)
    numbers = attacks["numbers"]
    assert numbers["paths"] == ["cpu contiguous", "cpu channels_last"]
    built_in = [name for name in registered() if gpu_check._built_in(name)]
    assert {"fgsm", "pgd", "apgd", "autoattack", "square", "fab-t"} <= set(built_in)
    expected = {f"{name} {eps}" for name in built_in for eps in numbers["eps"]}
    assert set(numbers["agreement"]) == expected | {"clean 0"}, "every built-in attack, every ε"
    assert all(0.99 <= value <= 1 for value in numbers["agreement"].values())
    assert math.isfinite(numbers["max_logit_difference"])
    for path in numbers["paths"]:
        assert all(0 <= v <= 1 for v in numbers["robust_acc"][path].values())
    autoattack = result["checks"]["autoattack"]["numbers"]
    assert ran(result["checks"]["autoattack"]) and autoattack["n_examples"] == 20
    assert 0 <= autoattack["robust_acc"] <= autoattack["clean_acc"] <= 1
    assert autoattack["backward_passes"] > 0


@pytest.mark.slow
def test_the_cpu_runs_ddp_and_study_did_what_they_say(cpu_run):
    from robustmix.core import runs

    out, _, result = cpu_run
    ddp = result["checks"]["ddp"]
    assert ran(ddp) and ddp["numbers"]["backend"] == "gloo"
    assert set(ddp["numbers"]["processes"]) == {"1", "2"}
    for count, numbers in ddp["numbers"]["processes"].items():
        assert numbers["world_size"] == int(count) and positive(numbers["images_per_s"])
        assert len(numbers["rank_peaks"]) == int(count)
        assert runs.is_complete(out / "work" / f"ddp-{count}" / "run")
    study = result["checks"]["study"]
    assert ran(study) and study["numbers"]["complete_runs"] == 2
    assert "--devices" in study["numbers"]["argv"] and "cpu" in study["numbers"]["argv"]
    assert (out / "work" / "study" / "study" / "report.md").is_file()
    assert {"train", "attack", "evaluate"} <= set(study["numbers"]["per_kind_s"])
