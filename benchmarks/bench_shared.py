"""The default study on a machine shared with other work: quiet, and beside a busy neighbour.

Run by hand, from the repository root, on an otherwise quiet machine:

    python -m benchmarks.bench_shared [--methods a,b] [--seeds 0,1] [--keep]

It runs `robustmix study --quiet` (the digits preset, every method and seed unless
``--methods``/``--seeds`` narrow it; ``--methods vanilla,cutmix --seeds 0`` is a few-minute
subset) twice into fresh directories, both with robustmix's automatic thread choice
(``ROBUSTMIX_THREADS`` and ``OMP_NUM_THREADS`` are removed from the study's environment):
first beside one CPU-bound neighbour, a busy loop in a subprocess that this benchmark
starts before the study and stops after it, then on the machine as it is. It prints both
times, the thread line each study printed, the neighbour's CPU time, and the ratio
busy / quiet. Issue 27's target: at most 2 on 2 cores. The busy run goes first, so file
caches warmed by the first run favour the quiet one: the ratio errs high, not low.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import bench_study
from benchmarks.common import format_machine, machine_info

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


def run(folder: Path, extra: list[str] | None = None) -> dict:
    """The study into ``folder``/busy beside a neighbour, then into ``folder``/quiet."""
    env = automatic_env()
    neighbour = start_neighbour()
    try:
        busy = bench_study.run(folder / "busy", extra, env=env)
    finally:
        neighbour_cpu_s = stop_neighbour(neighbour)
    quiet = bench_study.run(folder / "quiet", extra, env=env)
    return {"machine": machine_info("cpu"), "busy": busy, "quiet": quiet,
            "neighbour_cpu_s": neighbour_cpu_s, "neighbour_pid": neighbour.pid,
            "ratio": busy["total_s"] / quiet["total_s"]}


def format_results(result: dict, extra: list[str]) -> str:
    lines = [format_machine(result["machine"]),
             f"default study {' '.join(extra) or '(every method and seed)'}, automatic threads"]
    for name in ("quiet", "busy"):
        numbers = result[name]
        beside = " beside one busy-loop process" if name == "busy" else ""
        load = numbers["load_before"]
        load = "unknown" if load is None else " ".join(f"{x:.2f}" for x in load)
        lines.append(f"  {name:<5} {numbers['total_s'] / 60:6.2f} min{beside} "
                     f"(load average before: {load})\n        {numbers['threads']}")
    lines.append(f"  neighbour used {result['neighbour_cpu_s']:.0f} CPU-s")
    lines.append(f"  busy / quiet = {result['ratio']:.2f} (target: at most 2)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=None, help="pass --methods to the study")
    parser.add_argument("--seeds", default=None, help="pass --seeds to the study")
    parser.add_argument("--keep", action="store_true", help="keep the studies' folders")
    args = parser.parse_args()
    extra = ([] if args.methods is None else ["--methods", args.methods]) + \
        ([] if args.seeds is None else ["--seeds", args.seeds])
    folder = Path(tempfile.mkdtemp(prefix="bench-shared-"))
    try:
        print(format_results(run(folder, extra), extra))
    finally:
        if args.keep:
            print(f"studies kept in {folder}")
        else:
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()
