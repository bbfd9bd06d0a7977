"""What the corruptions step adds to the digits study, against the evaluate step beside it.

Run by hand, from the repository root:

    python -m benchmarks.bench_corruptions [--run RUN_DIR] [--repeats 5]

Without ``--run`` it trains a digits smallcnn run at the preset's 8×8 (3 epochs: the forward
pass, which dominates both steps, costs the same at any epoch). It then times, alternately
and ``--repeats`` times each, the study's evaluate step (``evaluate_run`` with the digits
preset's settings) and its corruptions step (``evaluate_corruptions`` on the same 200 test
images), and prints the medians and their ratio with the machine and its load average: the
ratio × the study's evaluate time (README, "Time") is what the step adds to the study.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import load_average, machine_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from evaluations import evaluate_corruptions, evaluate_run
    from robustmix.app.presets import PRESETS
    from robustmix.core.config import TrainConfig
    from robustmix.training.trainer import train

    settings = PRESETS["digits"]["evaluate"]
    run = args.run
    if run is None:
        run = str(Path(tempfile.mkdtemp()) / "run")
        train(TrainConfig(epochs=3, image_size=8, device="cpu"), run, progress=False)
    print(machine_info("cpu"), "load before", load_average())
    times = {"evaluate": [], "corruptions": []}
    for _ in range(args.repeats):
        started = time.perf_counter()
        evaluate_run(run, device="cpu", n_examples=settings["n_examples"],
                     q_draws=settings["q_draws"], seed=settings["seed"])
        times["evaluate"].append(time.perf_counter() - started)
        started = time.perf_counter()
        evaluate_corruptions(run, device="cpu", n_examples=settings["n_examples"],
                             seed=settings["seed"])
        times["corruptions"].append(time.perf_counter() - started)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print({k: f"{v:.2f} s" for k, v in medians.items()},
          f"ratio corruptions / evaluate: {medians['corruptions'] / medians['evaluate']:.2f}",
          "load after", load_average())


if __name__ == "__main__":
    main()
