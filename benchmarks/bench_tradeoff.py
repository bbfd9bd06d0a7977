"""What the study's attack budget buys: how the primary statistic moves with more effort.

Run by hand, from the repository root, on a finished study:

    python -m benchmarks.bench_tradeoff STUDY_DIR [--per-method 2]

For the first runs of each method (``--per-method``), on copies of their run directories
(the study is not touched), the primary statistic (per run, the worst case's robust ÷
clean accuracy averaged over the study's ε grid, as the report computes it) is measured:

- ``study``: as the study ran it (FGSM, PGD, APGD-CE + APGD-T with 9 target classes);
- ``+restart``: with APGD once more from other random starts (seed + 1), folded into the
  worst case: what a second restart would have added;
- ``3 targets``: with APGD-T on the 3 most likely target classes instead of 9;
- ``100 examples``: the study's attacks on a fixed subset of 100 test images, not 200.

It prints per method the mean of each and the mean ± std over runs of its difference from
``study`` (points), and the seconds each variant's attacks took. Diagnostics are off.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from robustmix.app.study_config import load_config
from robustmix.attacks import attack_run, worst_case
from robustmix.attacks.eps import Eps
from robustmix.attacks.table import read_rows
from robustmix.core import runs
from robustmix.evaluations.declaration import grid_mean
from robustmix.evaluations.grouping import summarize

from benchmarks.common import format_machine, machine_info


def primary(run_dir: Path, grid: list[Eps], n: int) -> float:
    """The primary statistic of a run from its robustness.csv (worst case, subset n)."""
    worst = {Eps(r["eps"]): float(r["robust_acc"]) / float(r["clean_acc"])
             for r in read_rows(run_dir / runs.ROBUSTNESS)
             if r["attack"] == "worst-case" and r["n_examples"] == str(n)}
    return 100 * grid_mean([worst[e] for e in grid], [e.value for e in grid])


def _copy(run_dir: Path, into: Path, keep_attacks: bool) -> Path:
    copy = into / run_dir.name
    shutil.copytree(run_dir, copy)
    if not keep_attacks:
        for name in (runs.ROBUSTNESS, runs.ROBUSTNESS_EXAMPLES, runs.DIAGNOSTICS):
            (copy / name).unlink(missing_ok=True)
    return copy


def _without(copy: Path, attack: str) -> None:
    """Drop one attack's rows from a copy, so that the worst case is recomputed without it."""
    rows = [r for r in worst_case.read(copy / runs.ROBUSTNESS_EXAMPLES) if r["attack"] != attack]
    runs.write_csv(copy / runs.ROBUSTNESS_EXAMPLES, rows, worst_case.FIELDS)
    kept = [r for r in read_rows(copy / runs.ROBUSTNESS) if r["attack"] != attack]
    runs.write_csv(copy / runs.ROBUSTNESS, kept, list(kept[0]))


def variants(run_dir: Path, config, n: int, scratch: Path) -> dict[str, tuple[float, float]]:
    """(primary statistic, attack seconds) of each variant for one run."""
    grid = list(config.eps)
    out = {"study": (primary(run_dir, grid, n), 0.0)}
    plans = {
        "+restart": (True, None, dataclasses.replace(config, attacks=("apgd",), seed=1), n),
        "3 targets": (True, "apgd", dataclasses.replace(config, attacks=("apgd",),
                                                        options={"apgd": {"targets": 3}}), n),
        "100 examples": (False, None, config, 100),
    }
    for name, (keep, drop, attack_config, size) in plans.items():
        copy = _copy(run_dir, scratch / name.replace(" ", "-"), keep)
        if drop:
            _without(copy, drop)
        start = time.perf_counter()
        attack_run(copy, attack_config, n_examples=size, diagnostics=False)
        out[name] = (primary(copy, grid, size), time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--per-method", type=int, default=2)
    args = parser.parse_args()
    study = load_config(None, str(args.study / "study.toml"))
    config, n = study.attack.config(), study.attack.n_examples
    print(format_machine(machine_info("cpu")))
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for spec in study.methods:
            for seed in study.seeds_of(spec)[:args.per_method]:
                run = args.study / "runs" / f"{spec}-s{seed}"
                found = variants(run, config, n, Path(scratch) / run.name)
                results.setdefault(spec, []).append(found)
                print(run.name, {k: round(v[0], 2) for k, v in found.items()}, flush=True)
    _table(results)


def _table(results: dict[str, list[dict]]) -> None:
    names = ["study", "+restart", "3 targets", "100 examples"]
    print("\n| method | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for method, found in results.items():
        cells = [f"{summarize([f['study'][0] for f in found])[0]:.1f}"]
        for name in names[1:]:
            diff = [f[name][0] - f["study"][0] for f in found]
            mean, std, count = summarize(diff)
            cells.append(f"{mean:+.2f}" + (f" ± {std:.2f}" if count > 1 else ""))
        print(f"| {method} | " + " | ".join(cells) + " |")
    seconds = {n: summarize([f[n][1] for fs in results.values() for f in fs])[0]
               for n in names[1:]}
    print("\nattack seconds per run:", {k: round(v, 1) for k, v in seconds.items()})


if __name__ == "__main__":
    main()
