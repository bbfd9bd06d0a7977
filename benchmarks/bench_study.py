"""Wall-clock time of the default study (`robustmix study`, digits preset) on this machine.

Run by hand, from the repository root:

    python -m benchmarks.bench_study [--out DIR] [--keep] [--jobs N] [--seeds 0,1,2] [--methods a,b]

It runs the real command in a fresh directory (nothing is reused), prints the machine, the
load average before and after (other work on the machine inflates the figure), the total
time and the time of each kind of step, read from the study's own log lines.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import load_average, machine_info

STEP = re.compile(r"^\[\d+/\d+\] (\w+) ")
TOOK = re.compile(r"\((\d+\.\d+) s\)$")
# with --jobs, one line per finished step: "[3/8] train cutmix-s0: ... (4.9 s; elapsed 0:12...)"
POOLED = re.compile(r"^\[\d+/\d+\] (\w+) \S+: .*\((\d+\.\d+) s; elapsed ")


def run(out: Path, extra: list[str] | None = None, env: dict[str, str] | None = None) -> dict:
    """Run the study into ``out`` (in environment ``env``, default this one) and return the
    total and per-kind seconds, and the line that says its torch threads."""
    before = load_average()
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "robustmix", "study", "--quiet",
                             "--out", str(out), *(extra or [])],
                            capture_output=True, text=True, check=True, env=env)
    total = time.perf_counter() - start
    threads = next((line for line in result.stdout.splitlines()
                    if line.startswith("robustmix: ") and " torch thread" in line), None)
    return {"total_s": total, "per_kind_s": per_kind(result.stdout), "load_before": before,
            "load_after": load_average(), "threads": threads}


def per_kind(stdout: str) -> dict[str, float]:
    """Seconds per kind of step, from the study's log lines (inline, or with --jobs: then
    the steps overlap and the sums exceed the wall time)."""
    seconds: dict[str, float] = {}
    kind = None
    for line in stdout.splitlines():
        if (pooled := POOLED.match(line)):
            seconds[pooled.group(1)] = seconds.get(pooled.group(1), 0.0) + float(pooled.group(2))
        elif (match := STEP.match(line)):
            kind = match.group(1)
        elif kind and (took := TOOK.search(line.strip())):
            seconds[kind] = seconds.get(kind, 0.0) + float(took.group(1))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="study directory (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument("--jobs", type=int, default=None,
                        help="pass --jobs N to the study (default: inline, one run at a time)")
    parser.add_argument("--seeds", default=None, help="pass --seeds to the study")
    parser.add_argument("--methods", default=None, help="pass --methods to the study")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-study-")) / "study"
    extra = ([] if args.jobs is None else ["--jobs", str(args.jobs)]) + \
        ([] if args.seeds is None else ["--seeds", args.seeds]) + \
        ([] if args.methods is None else ["--methods", args.methods])
    print(machine_info("cpu"))
    numbers = run(out, extra)
    print(f"default study {' '.join(extra)}: {numbers['total_s'] / 60:.1f} min in all "
          f"(load average before {numbers['load_before']}, after {numbers['load_after']})")
    for kind, seconds in numbers["per_kind_s"].items():
        print(f"  {kind:<10} {seconds:7.1f} s")
    if args.out is None and not args.keep:
        shutil.rmtree(out.parent)


if __name__ == "__main__":
    main()
