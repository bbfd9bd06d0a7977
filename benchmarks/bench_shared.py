"""The default study on a machine shared with other work: quiet, and beside a busy neighbour.

Run by hand, from the repository root, on an otherwise quiet machine:

    python -m benchmarks.bench_shared [--methods a,b] [--seeds 0,1] [--at S] [--keep]

It runs `robustmix study --quiet` (the digits preset, every method and seed unless
``--methods``/``--seeds`` narrow it; ``--methods vanilla,cutmix --seeds 102`` is a
few-minute subset) four times into fresh directories, all with robustmix's automatic
thread choice (``ROBUSTMIX_THREADS`` and ``OMP_NUM_THREADS`` are removed from the study's
environment), beside one CPU-bound neighbour (a busy loop in a subprocess):

- ``busy``: the neighbour runs from before the study to its end;
- ``arrives``: the neighbour starts ``--at`` seconds after the study (issue 33: the thread
  count is checked again before every step and every ε, so the study gives it a core);
- ``leaves``: the neighbour runs from before the study and stops ``--at`` seconds in (the
  study takes the core back);
- ``quiet``: no neighbour.

It prints each time, its ratio to the quiet one (issue 33's target: at most 2 on 2 cores),
the thread counts the study's steps ran with (its steps.csv), and the neighbour's CPU
time. The quiet run goes last, so file caches warmed by the first runs favour it: the
ratios err high, not low.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import bench_study
from benchmarks.common import format_machine, machine_info
from robustmix.core import runs

CHOICES = ("ROBUSTMIX_THREADS", "OMP_NUM_THREADS")   # removed: the automatic choice is measured
BUSY_LOOP = "while True:\n    pass\n"
WARM_UP_S = 1.0   # the neighbour runs this long before the study starts (and samples the load)


def automatic_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name not in CHOICES}


def start_neighbour() -> subprocess.Popen:
    """One CPU-bound process: a Python busy loop."""
    neighbour = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    time.sleep(WARM_UP_S)
    return neighbour


def stop_neighbour(neighbour: subprocess.Popen) -> float:
    """End the neighbour; the CPU seconds it used (from the kernel, when it is reaped)."""
    neighbour.send_signal(signal.SIGTERM)
    _, _, usage = os.wait4(neighbour.pid, 0)
    neighbour.returncode = -signal.SIGTERM   # reaped here: Popen must not wait again
    return usage.ru_utime + usage.ru_stime


SCENARIOS = ("busy", "arrives", "leaves", "quiet")


def run_scenario(name: str, folder: Path, extra: list[str], at: float) -> dict:
    """One study into ``folder``/``name`` beside the neighbour the scenario names."""
    env, neighbour, timer = automatic_env(), None, None
    box: dict[str, subprocess.Popen] = {}
    if name in ("busy", "leaves"):
        neighbour = box["n"] = start_neighbour()
    if name == "arrives":
        timer = threading.Timer(at, lambda: box.setdefault("n", start_neighbour()))
    if name == "leaves":
        timer = threading.Timer(at, lambda: box.update(cpu=stop_neighbour(neighbour)))
    if timer is not None:
        timer.start()
    try:
        numbers = bench_study.run(folder / name, extra, env=env)
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()
        if "n" in box and "cpu" not in box:
            box["cpu"] = stop_neighbour(box["n"])
    numbers["neighbour_cpu_s"] = box.get("cpu", 0.0)
    numbers["step_threads"] = step_threads(folder / name)
    return numbers


def step_threads(out: Path) -> dict[str, int]:
    """How many steps ran with each sequence of thread counts (OUT/steps.csv)."""
    counts: dict[str, int] = {}
    for row in runs.read_csv(out / "steps.csv"):
        counts[row["threads"]] = counts.get(row["threads"], 0) + 1
    return counts


def run(folder: Path, extra: list[str] | None = None, at: float = 60.0) -> dict:
    """Every scenario in turn, the quiet one last; each one's ratio to the quiet time."""
    result = {"machine": machine_info("cpu"), "at_s": at}
    for name in SCENARIOS:
        result[name] = run_scenario(name, folder, extra or [], at)
    quiet = result["quiet"]["total_s"]
    result["ratios"] = {name: result[name]["total_s"] / quiet for name in SCENARIOS[:-1]}
    return result


def format_results(result: dict, extra: list[str]) -> str:
    lines = [format_machine(result["machine"]),
             f"default study {' '.join(extra) or '(every method and seed)'}, automatic threads"]
    told = {"busy": " beside one busy-loop process", "quiet": "",
            "arrives": f" with a busy loop from {result['at_s']:g} s in",
            "leaves": f" with a busy loop until {result['at_s']:g} s in"}
    for name in SCENARIOS:
        numbers = result[name]
        load = numbers["load_before"]
        load = "unknown" if load is None else " ".join(f"{x:.2f}" for x in load)
        ratio = f" = {result['ratios'][name]:.2f} × quiet" if name != "quiet" else ""
        threads = ", ".join(f"{k}: {v}" for k, v in numbers["step_threads"].items())
        lines.append(f"  {name:<7} {numbers['total_s'] / 60:6.2f} min{ratio}{told[name]} "
                     f"(load before: {load}; neighbour {numbers['neighbour_cpu_s']:.0f} CPU-s)"
                     f"\n          {numbers['threads']}\n          steps by threads: {threads}")
    lines.append("  target: at most 2 × quiet for every scenario")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=None, help="pass --methods to the study")
    parser.add_argument("--seeds", default=None, help="pass --seeds to the study")
    parser.add_argument("--at", type=float, default=60.0,
                        help="seconds into the study the neighbour arrives or leaves")
    parser.add_argument("--keep", action="store_true", help="keep the studies' folders")
    args = parser.parse_args()
    extra = ([] if args.methods is None else ["--methods", args.methods]) + \
        ([] if args.seeds is None else ["--seeds", args.seeds])
    folder = Path(tempfile.mkdtemp(prefix="bench-shared-"))
    try:
        print(format_results(run(folder, extra, args.at), extra))
    finally:
        if args.keep:
            print(f"studies kept in {folder}")
        else:
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()
