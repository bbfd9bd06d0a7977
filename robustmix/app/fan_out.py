"""Where a study's runs go: this process (the default), ``--jobs N`` worker processes
(:mod:`robustmix.app.pool`) or a SLURM job array (:mod:`robustmix.app.slurm`).

Exit codes: 0 when every run is done (or, with ``--no-wait``, submitted), 1 when a run
failed (each listed on stderr with its one-line error), 2 for bad input (refused before
anything runs), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys

from robustmix.app import pool, slurm
from robustmix.app.study_config import StudyConfig
from robustmix.core.errors import UsageError


def run(config: StudyConfig, args: argparse.Namespace) -> int | None:
    """Run the study as the flags ask; None when it runs in this process (no --jobs,
    --devices or --executor)."""
    options = slurm_options(args)
    if options is not None:
        if args.jobs is not None or args.devices is not None:
            raise UsageError("--jobs and --devices are for this machine; with --executor, "
                             "--slurm-array-parallelism caps the runs at once")
        failures = slurm.submit_study(config, args.executor, options, wait=not args.no_wait)
    elif args.jobs is not None or args.devices is not None:
        jobs = args.jobs or len([d for d in args.devices.split(",") if d.strip()])
        failures = pool.run_pool(config, jobs=jobs, devices=args.devices)
    else:
        return None
    return pool.say_failures(failures, lambda line: print(line, file=sys.stderr))


def slurm_options(args: argparse.Namespace) -> slurm.SlurmOptions | None:
    """The --slurm-* flags as options; None without --executor (where they are refused)."""
    given = [f"--{name.replace('_', '-')}" for name, value in vars(args).items()
             if (name.startswith("slurm_") or name == "no_wait") and value not in (None, [], False)]
    if args.executor is None:
        if given:
            raise UsageError(f"{given[0]} needs --executor slurm (or submitit-local)")
        return None
    return slurm.SlurmOptions(
        partition=args.slurm_partition,
        time_min=slurm.parse_time(args.slurm_time) if args.slurm_time else 24 * 60,
        gpus_per_job=args.slurm_gpus_per_job, cpus_per_job=args.slurm_cpus_per_job,
        mem=args.slurm_mem, array_parallelism=args.slurm_array_parallelism,
        extra=slurm.parse_extra(args.slurm_extra or []))
