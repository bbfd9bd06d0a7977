"""Which runs a command takes, and how far each got.

``attack``, ``evaluate``, ``report`` and ``runs`` take one positional list of run
directories: a folder of runs (a study's folder: its ``runs/``) stands for its runs, and
none named means every run under ``./runs/`` (:func:`chosen_runs`, :func:`every_run`).
:func:`table` is the table of ``robustmix runs``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

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


def chosen_runs(named: Sequence[str], command: str,
                check: bool = True) -> tuple[list[str], list[str]]:
    """The runs ``robustmix COMMAND RUN_DIR...`` takes, and a line for each folder of runs
    that says which it gave: each run directory named (``check``: refused when missing or
    unfinished), each folder of runs as its finished runs, none named: those of ./runs/."""
    if not named:
        found, line = finished_runs(command)
        return found, [line]
    chosen, lines = [], []
    for path in map(str, named):
        folder = run_folder(path)
        if not runs.holds_run(path) and candidates(folder):
            found, line = finished_runs(command, folder)
            chosen += found
            lines.append(line)
            continue
        if check:
            check_finished(path)
        chosen.append(path)
    return list(dict.fromkeys(chosen)), lines


def check_finished(path: str) -> None:
    """Refuse a missing directory or an unfinished run before any work starts."""
    if not Path(path).is_dir():
        raise UsageError(f"{path}: no such run directory")
    if not runs.is_complete(path):
        raise UsageError(f"{path} holds no finished run ({runs.WEIGHTS} is missing); "
                         f"finish it with: robustmix train --resume {path}")


def every_run(named: Sequence[str]) -> list[Path]:
    """Every run, finished or not, that the run directories and folders of runs ``named``
    hold (none named: those under ./runs/); none is a UsageError."""
    found = []
    for path in map(Path, named or [DEFAULT_FOLDER]):
        if named and not path.is_dir():
            raise UsageError(f"{path}: no such run directory or folder of runs")
        found += [path] if runs.holds_run(path) else candidates(run_folder(path))
    if not found:
        where = ", ".join(f"{p}/" for p in (named or [DEFAULT_FOLDER]))
        raise UsageError(f"no run under {where}; make one with: robustmix train --mix cutmix")
    return list(dict.fromkeys(found))


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


def table(found: Sequence[Path]) -> str:
    """The runs ``found`` (:func:`every_run`) as an aligned text table, with the next command
    to run."""
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
