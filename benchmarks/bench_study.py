"""Wall-clock time of the default study (`robustmix study`, digits preset) on this machine.

Run by hand, from the repository root:

    python -m benchmarks.bench_study [--out DIR] [--keep]

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


def run(out: Path, extra: list[str] | None = None) -> dict:
    """Run the study into ``out`` and return the total and per-kind seconds."""
    before = load_average()
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "robustmix", "study", "--quiet",
                             "--out", str(out), *(extra or [])],
                            capture_output=True, text=True, check=True)
    total = time.perf_counter() - start
    per_kind: dict[str, float] = {}
    kind = None
    for line in result.stdout.splitlines():
        if (match := STEP.match(line)):
            kind = match.group(1)
        elif kind and (took := TOOK.search(line.strip())):
            per_kind[kind] = per_kind.get(kind, 0.0) + float(took.group(1))
    return {"total_s": total, "per_kind_s": per_kind, "load_before": before,
            "load_after": load_average()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="study directory (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-study-")) / "study"
    print(machine_info("cpu"))
    numbers = run(out)
    print(f"default study: {numbers['total_s'] / 60:.1f} min in all "
          f"(load average before {numbers['load_before']}, after {numbers['load_after']})")
    for kind, seconds in numbers["per_kind_s"].items():
        print(f"  {kind:<10} {seconds:7.1f} s")
    if args.out is None and not args.keep:
        shutil.rmtree(out.parent)


if __name__ == "__main__":
    main()
