"""Which runs a folder holds, and how far each got: what ``attack``, ``evaluate`` and
``report`` take when no run is named, and the table of ``robustmix runs``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from robustmix.attacks.eps import Eps
from robustmix.attacks.table import read_rows
from robustmix.core import runs
from robustmix.core.errors import UsageError

DEFAULT_FOLDER = "runs"   # where `robustmix train` writes by default


def run_folder(folder: str | Path) -> Path:
    """A folder of runs; a study's folder means its ``runs/``."""
    folder = Path(folder)
    return folder / "runs" if (folder / "runs").is_dir() and not runs.holds_run(folder) \
        else folder


def candidates(folder: str | Path) -> list[Path]:
    """Every directory under ``folder`` that holds a run (finished or not), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if d.is_dir() and runs.holds_run(d))


def finished_runs(command: str, folder: str | Path = DEFAULT_FOLDER) -> tuple[list[str], str]:
    """The finished runs under ``folder`` and the line that says which were taken.

    No finished run there is a UsageError that names ``robustmix train`` as the way on.
    """
    found = candidates(folder)
    done = [str(d) for d in found if runs.is_complete(d)]
    unfinished = [d.name for d in found if not runs.is_complete(d)]
    skipped = (f"; skipped {len(unfinished)} unfinished ({', '.join(unfinished)}: no "
               f"{runs.WEIGHTS} yet; finish with robustmix train --resume DIR)"
               if unfinished else "")
    if not done:
        raise UsageError(f"no finished run under {folder}/{skipped}; make one with: "
                         "robustmix train --mix cutmix (or name run directories)")
    names = ", ".join(Path(d).name for d in done)
    return done, f"robustmix {command}: {len(done)} finished runs under {folder}/: {names}{skipped}"


@dataclass(frozen=True)
class Status:
    """One row of ``robustmix runs``."""

    run: str
    method: str
    seed: str
    epochs: str
    test_acc: str
    attacked: str
    evaluated: str
    converged: str


def status(run_dir: Path) -> Status:
    """How far one run got, read from its files (never loads the model)."""
    from robustmix.evaluations.convergence import check  # here: the evaluations load pandas

    run = runs.RunDir(run_dir)
    config = run.read_config()
    train = config.get("train", {})
    planned = int(train.get("epochs", 0))
    metrics = run.read_metrics() if run.metrics_path.exists() else []
    accuracies = [float(row["test_acc"]) for row in metrics]
    held = [float(row["holdout_acc"]) for row in metrics if row.get("holdout_acc")]
    held_loss = [float(row["holdout_loss"]) for row in metrics if row.get("holdout_loss")]
    classes = int(config.get("dataset", {}).get("num_classes") or 10)
    eps = sorted({Eps(r["eps"]): r["eps"] for r in read_rows(run.robustness_path)}.items()) \
        if run.robustness_path.exists() else []
    verdict = check(held, held_loss, planned, classes)   # on the held-out images
    imported = "imported" in config   # trained elsewhere: no epochs, no curve to judge
    return Status(
        run=run_dir.name, method=str(train.get("mix", {}).get("mix", "vanilla")),
        seed=str(train.get("seed", 0)),
        epochs="imported" if imported else f"{len(metrics)}/{planned}",
        test_acc=f"{accuracies[-1]:.2%}" if accuracies else "-",
        attacked=",".join(text for _, text in eps) or "no",
        evaluated="yes" if run.generalization_path.exists() else "no",
        converged="unknown (imported)" if imported else verdict.reason
        if verdict.converged is None else "yes" if verdict.converged else
        f"no ({verdict.reason})")


def table(folder: str | Path) -> str:
    """The runs under ``folder`` as an aligned text table, with the next command to run."""
    found = candidates(folder)
    if not found:
        raise UsageError(f"no run under {folder}/; make one with: robustmix train --mix cutmix")
    rows = [status(d) for d in found]
    header = Status("run", "method", "seed", "epochs", "test acc", "attacked at ε",
                    "evaluated", "converged")
    columns = list(zip(*[list(vars(r).values()) for r in [header, *rows]]))
    widths = [max(len(cell) for cell in column) for column in columns]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in zip(*columns)]
    return "\n".join(lines) + "\n\nnext: " + _next_step(found, rows)


def _next_step(found: list[Path], rows: list[Status]) -> str:
    """The command that takes these runs one step further."""
    unfinished = [d for d in found if not runs.is_complete(d)]
    if unfinished:
        return f"robustmix train --resume {unfinished[0]}"
    if any(r.attacked == "no" for r in rows):
        return "robustmix attack --eps 8/255"
    if any(r.evaluated == "no" for r in rows):
        return "robustmix evaluate"
    return "robustmix report"
