"""`robustmix study --executor slurm`: one SLURM job per run, through submitit.

Each run not yet done becomes one job of a job array (its train → attack → evaluate in
order, :func:`robustmix.app.pool.run_steps`). A job that is preempted or reaches its time
limit is requeued by submitit's checkpointing hook (:meth:`RunJob.checkpoint`) and
continues where its run directory says it stopped. The job ids are kept in
``OUT/slurm-jobs.json``; a rerun of the same command resubmits no run that is done or
whose job is still queued or running. Logs go to ``OUT/slurm-logs/``. The command waits
for the jobs and writes the report, or with ``no_wait`` returns once they are submitted.

``--executor submitit-local`` drives the same code with submitit's LocalExecutor (jobs as
local processes), which is how this is tested without a cluster.

submitit is an optional extra (``pip install 'robustmix[slurm]'``), imported only here
and only when a study is submitted.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from robustmix.app import pool, study
from robustmix.app.study_config import StudyConfig
from robustmix.core import extras, runs
from robustmix.core.errors import UsageError

JOBS_FILE = "slurm-jobs.json"
LOGS = "slurm-logs"
EXECUTORS = ("slurm", "submitit-local")
# SLURM states of a job that will still run (a rerun does not submit its run again).
# UNKNOWN (sacct has no record yet, or keeps no accounting) counts too: better a run
# waited for than submitted twice; delete OUT/slurm-jobs.json to submit regardless.
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
          "COMPLETING", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "PREEMPTED",
          "UNKNOWN"}


@dataclass(frozen=True)
class SlurmOptions:
    """The job array's resources (None: the cluster's default)."""
    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_job: int | None = None
    cpus_per_job: int | None = None
    mem: str | None = None
    array_parallelism: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def parameters(self) -> dict[str, Any]:
        """The options as submitit's AutoExecutor parameters."""
        values = {"timeout_min": self.time_min, "slurm_partition": self.partition,
                  "gpus_per_node": self.gpus_per_job, "cpus_per_task": self.cpus_per_job,
                  "slurm_mem": self.mem, "slurm_array_parallelism": self.array_parallelism,
                  "slurm_additional_parameters": dict(self.extra) or None}
        return {key: value for key, value in values.items() if value is not None}


def parse_time(text: str) -> int:
    """``--slurm-time``: minutes, H:MM, H:MM:SS or D-H:MM:SS (SLURM's forms), as minutes."""
    days, _, clock = text.rpartition("-") if "-" in text else ("0", "", text)
    try:
        parts = [int(part) for part in clock.split(":")]
        days_n = int(days)
        if len(parts) > 3 or min(parts + [days_n]) < 0:
            raise ValueError
    except ValueError:
        raise UsageError(f"--slurm-time takes minutes, H:MM, H:MM:SS or D-H:MM:SS, got "
                         f"{text!r}") from None
    hours, minutes, seconds = ([*parts, 0] if len(parts) == 2 else
                               [0, parts[0], 0] if len(parts) == 1 else parts)
    total = days_n * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    if total < 1:
        raise UsageError(f"--slurm-time must be at least a minute, got {text!r}")
    return total


def parse_extra(items: list[str]) -> dict[str, str]:
    """``--slurm-extra KEY=VALUE`` (repeatable): sbatch options submitit has no name for."""
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not key.replace("-", "_").replace("_", "").isalnum():
            raise UsageError(f"--slurm-extra takes KEY=VALUE (an sbatch option without its "
                             f"dashes, e.g. account=myproject), got {item!r}")
        extra[key.strip().replace("-", "_")] = value
    return extra


def require_submitit():
    """The submitit module, or a one-line UsageError saying how to install it."""
    return extras.require("submitit", "slurm", needed_by="--executor")


class RunJob:
    """One run's steps in a job; picklable. ``checkpoint`` is submitit's hook on preemption
    or time-out: it requeues the same job, which resumes from the run directory."""

    def __init__(self, config: StudyConfig, label: str, threads: int | None):
        self.config, self.label, self.threads = config, label, threads

    def __call__(self) -> str | None:
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))
        if threads:
            torch.set_num_threads(threads)
        return pool.run_steps(self.config, self.label, lambda event: print(*event, flush=True))

    def checkpoint(self, *args: Any, **kwargs: Any):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def to_submit(labels: list[str], saved: dict[str, str],
              state_of: Callable[[str], str]) -> tuple[list[str], dict[str, str]]:
    """Of the runs not done, those to submit, and those whose saved job will still run
    (run -> job id): a saved job counts when SLURM reports it queued, running or requeued."""
    submit, waiting = [], {}
    for label in labels:
        job_id = saved.get(label)
        if job_id is not None and (state_of(job_id).split() or ["?"])[0].upper() in ACTIVE:
            waiting[label] = job_id
        else:
            submit.append(label)
    return submit, waiting


def submit_study(config: StudyConfig, executor: str, options: SlurmOptions, *,
                 wait: bool = True, threads: int | None = None,
                 echo: Callable[[str], None] = print) -> list[pool.Failure]:
    """Submit every run of ``config`` not done as a job array; with ``wait``, follow the
    jobs and write the report. Returns the failed runs."""
    submitit = require_submitit()
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if executor == "slurm" and missing:
        raise UsageError(f"--executor slurm: no {missing[0]} on this machine's PATH; submit "
                         "from a SLURM login node, or use --jobs N on this machine")
    out = Path(config.out)
    pending = [s for s in study.plan(config, progress=False)
               if not s.final and not s.done()]
    labels = list(dict.fromkeys(step.label for step in pending))
    jobs_path = out / JOBS_FILE
    saved = _read_jobs(jobs_path)
    folder = out / LOGS / "%j"
    state_of = (lambda job_id: submitit.SlurmJob(folder, job_id).state) \
        if executor == "slurm" else (lambda job_id: "GONE")  # local jobs end with us
    fresh, waiting = to_submit(labels, saved, state_of)
    jobs = {label: submitit.SlurmJob(folder, job_id) for label, job_id in waiting.items()}
    if fresh:
        if executor == "submitit-local" and threads is None:   # the jobs share this machine
            threads = pool.default_threads(len(fresh))
        jobs.update(_submit(submitit, executor, options, config, fresh, folder, threads))
        saved.update({label: str(job.job_id) for label, job in jobs.items()})
        runs.atomic_write_text(jobs_path, json.dumps(saved, indent=1, sort_keys=True) + "\n")
    echo(f"robustmix study: {len(labels)} runs not done: {len(fresh)} submitted, "
         f"{len(waiting)} still queued or running (job ids in {jobs_path}; logs in "
         f"{out / LOGS})")
    if not wait:
        for label, job in jobs.items():
            echo(f"  {label}: job {job.job_id}")
        return []
    failures = _follow(submitit, jobs, echo)
    if not failures:
        echo(f"robustmix study: {study.finish(config)}")
    return failures


def _submit(submitit, executor: str, options: SlurmOptions, config: StudyConfig,
            labels: list[str], folder: Path, threads: int | None) -> dict[str, Any]:
    """One job array of ``labels``; a refused submission is a one-line UsageError."""
    from submitit.core.utils import FailedJobError

    auto = submitit.AutoExecutor(folder=folder,
                                 cluster="slurm" if executor == "slurm" else "local")
    try:
        auto.update_parameters(name="robustmix-study", **options.parameters())
        with auto.batch():
            jobs = [auto.submit(RunJob(config, label, threads)) for label in labels]
    except (ValueError, TypeError) as err:
        raise UsageError(f"--slurm options refused by submitit: {pool.first_line(err)}") \
            from None
    except (OSError, FailedJobError) as err:
        raise UsageError(f"the job array was not submitted: {pool.first_line(err)}") from None
    return dict(zip(labels, jobs))


def _follow(submitit, jobs: dict[str, Any], echo: Callable[[str], None]) -> list[pool.Failure]:
    """Wait for every job; a line as each ends; the failed runs."""
    started, failures = time.perf_counter(), []
    label_of = {id(job): label for label, job in jobs.items()}
    poll = 1.0 if all(type(job).__name__ == "LocalJob" for job in jobs.values()) else 30.0
    for number, job in enumerate(submitit.helpers.as_completed(list(jobs.values()),
                                                               poll_frequency=poll), 1):
        label = label_of[id(job)]
        try:
            error = job.result()
        except Exception as err:  # noqa: BLE001 - a job that failed, was cancelled, timed out
            error = f"job {job.job_id}: {pool.first_line(err)}"
        if error is not None:
            failures.append((label, error))
        state = "done" if error is None else f"FAILED: {error}"
        echo(f"[{number}/{len(jobs)}] {label} (job {job.job_id}) {state} "
             f"(elapsed {pool.clock(time.perf_counter() - started)})")
    return failures


def _read_jobs(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}   # a damaged file: resubmit what is not done (done runs are never redone)
    return {str(k): str(v) for k, v in saved.items()} if isinstance(saved, dict) else {}
