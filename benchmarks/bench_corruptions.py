"""What the corruptions step adds to the digits study, against the evaluate step beside it.

Run by hand, from the repository root:

    python -m benchmarks.bench_corruptions [--run RUN_DIR] [--repeats 5]

Without ``--run`` it trains a digits smallcnn run at the preset's 8×8 (3 epochs: the forward
pass, which dominates both steps, costs the same at any epoch). It then times, alternately
and ``--repeats`` times each, the study's evaluate step (``evaluate_run`` with the digits
preset's settings) and its corruptions step (``evaluate_corruptions`` on the same 200 test
images), and prints the medians and their ratio with the machine and its load average: the
ratio × the study's evaluate time (docs/time.md) is what the step adds to the study.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import format_machine, load_average, machine_info


def run(run_dir: str | None = None, *, repeats: int = 5, n_examples: int | None = None,
        q_draws: int | None = None) -> dict:
    """Median seconds of the evaluate and corruptions steps on one run, and their ratio
    (the digits preset's settings unless ``n_examples`` / ``q_draws`` say otherwise)."""
    from robustmix.evaluations import evaluate_corruptions, evaluate_run
    from robustmix.app.presets import PRESETS
    from robustmix.core.config import TrainConfig
    from robustmix.training.trainer import train

    settings = PRESETS["digits"]["evaluate"]
    n_examples = n_examples or settings["n_examples"]
    if run_dir is None:
        run_dir = str(Path(tempfile.mkdtemp()) / "run")
        train(TrainConfig(epochs=3, image_size=8, device="cpu"), run_dir, progress=False)
    machine = machine_info("cpu")
    times: dict[str, list[float]] = {"evaluate": [], "corruptions": []}
    for _ in range(repeats):
        started = time.perf_counter()
        evaluate_run(run_dir, device="cpu", n_examples=n_examples,
                     q_draws=q_draws or settings["q_draws"], seed=settings["seed"])
        times["evaluate"].append(time.perf_counter() - started)
        started = time.perf_counter()
        evaluate_corruptions(run_dir, device="cpu", n_examples=n_examples,
                             seed=settings["seed"])
        times["corruptions"].append(time.perf_counter() - started)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {"machine": machine, "seconds": medians, "load_after": load_average(),
            "ratio": medians["corruptions"] / medians["evaluate"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = run(args.run, repeats=args.repeats)
    print(format_machine(result["machine"]))
    print({k: f"{v:.2f} s" for k, v in result["seconds"].items()},
          f"ratio corruptions / evaluate: {result['ratio']:.2f}",
          "load after", result["load_after"])


if __name__ == "__main__":
    main()
