"""`robustmix study --jobs N`: up to N of the study's runs at once, each in its own process.

A worker process takes whole runs: one run's train → attack → evaluate steps in order,
quiet (no progress bars; whatever a step prints goes to ``OUT/logs/RUN.log``). The parent
prints one line per finished step for the whole study (run, step, elapsed, time left),
and writes the report itself once every run is done. A run that fails stops only itself:
the others go on, and :func:`run_pool` returns the failed runs with their one-line errors
(the report is then not written; rerunning the command redoes only what is not done).

Workers are spawned, never forked (CUDA and OpenMP do not survive a fork). Ctrl-C or
SIGTERM in the parent ends every worker with SIGTERM: a step cut off leaves what a kill
leaves, files written whole or not at all and training's last checkpoint, so the rerun
continues exactly (see :mod:`robustmix.training.trainer`).

Where a run computes: on CUDA each worker sees one GPU only (``CUDA_VISIBLE_DEVICES`` is
set before CUDA starts), so a run's own settings (device ``auto`` or ``cuda``) are those
of the inline study and a rerun with other ``--jobs`` continues the same runs. Every
worker runs torch with ``threads`` intra-op threads (default: the parent's thread count,
which the command chose from ``--threads``, the environment or the free cores
(:mod:`robustmix.core.threads`), divided by the workers), recorded in each run's
config.json; on the CPU a run's weights depend on it, and with the same threads per run
the pool writes byte for byte the files of the inline study (tested).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from robustmix.app import study
from robustmix.app.study_config import StudyConfig
from robustmix.core.errors import UsageError

LOGS = "logs"   # the workers' output, one file per run, in the study's folder

Failure = tuple[str, str]   # (run name, one-line error)


# ------------------------------------------------------------------------------ devices


def worker_slots(device: str, devices: str | None, jobs: int) -> list[str | None]:
    """What each of ``jobs`` workers sets ``CUDA_VISIBLE_DEVICES`` to (None: leave it).

    ``devices`` is ``cpu`` or a comma list of ``cuda:N``; without it, a study on CUDA
    (device auto with a GPU, or cuda) shares every visible GPU, worker i on GPU i mod n.
    """
    if devices is None:
        if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
            devices = ",".join(f"cuda:{i}" for i in range(torch.cuda.device_count()))
        else:
            return [None] * jobs
    names = [name.strip() for name in devices.split(",") if name.strip()]
    if names == ["cpu"]:
        if device not in ("cpu", "auto"):
            raise UsageError(f"--devices cpu, but the study's device is {device}")
        return [None] * jobs
    visible = _visible_gpus()
    indices = [_gpu_index(name, len(visible)) for name in names]
    if device not in ("auto", "cuda"):
        raise UsageError(f"--devices {devices} needs the study's device to be auto or cuda, "
                         f"not {device} (each worker sees its GPU as cuda)")
    return [visible[indices[i % len(indices)]] for i in range(jobs)]


def _visible_gpus() -> list[str]:
    """The physical ids behind cuda:0, cuda:1, ... of this process."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [part.strip() for part in given.split(",") if part.strip()]
    return [str(i) for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]


def _gpu_index(name: str, visible: int) -> int:
    prefix, _, number = name.partition(":")
    if prefix != "cuda" or not number.isdigit():
        raise UsageError(f"--devices takes cpu or a comma list of cuda:N, got {name!r}")
    if int(number) >= visible:
        raise UsageError(f"--devices {name}: {visible} GPU(s) visible")
    return int(number)


def default_threads(workers: int) -> int:
    """The parent's torch threads shared by ``workers`` processes, at least one each."""
    return max(1, torch.get_num_threads() // workers)


# ------------------------------------------------------------------------------ workers

_EVENTS = None   # in a worker: the queue to the parent


def _start_worker(events, slots, threads: int) -> None:
    """A worker's set-up: its GPU (before CUDA starts), its threads, SIGINT left to the
    parent (Ctrl-C reaches the whole process group; the parent ends workers itself)."""
    global _EVENTS
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    slot = slots.get()
    if slot is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot
    torch.set_num_threads(threads)
    _EVENTS = events
    events.put(("worker", os.getpid()))


def _run_one(config: StudyConfig, label: str, log_dir: str) -> str | None:
    """In a worker: :func:`run_steps`, its output in the run's log."""
    with open(Path(log_dir) / f"{label}.log", "a", encoding="utf-8") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        return run_steps(config, label, _EVENTS.put)


def run_steps(config: StudyConfig, label: str, emit: Callable[[tuple], None]) -> str | None:
    """Every step of run ``label`` not yet done, in order, quiet; ``emit`` hears of each
    finished or failed step. None when all went well, else the failed step and its
    one-line error (its traceback goes to stderr)."""
    steps = [s for s in study.plan(config, progress=False)
             if s.label == label and not s.final]
    for step in steps:
        try:
            if step.done():
                continue
            started = time.perf_counter()
            summary = step.action()
            emit(("done", label, step.kind, summary, time.perf_counter() - started))
        except Exception as err:  # noqa: BLE001 - a failed run must not stop the others
            traceback.print_exc()
            message = f"{step.kind}: {first_line(err)}"
            emit(("failed", label, step.kind, message))
            return message
    return None


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else ""
    return line if isinstance(err, UsageError) else f"{type(err).__name__}: {line}".rstrip(": ")


# ------------------------------------------------------------------------------ the parent


@dataclass
class Display:
    """The study's one progress display: a line per finished step, with the time left
    estimated as each kind's mean step time × the steps left ÷ the workers."""
    left: dict[str, list[str]]          # run -> kinds of its steps not yet finished
    workers: int
    echo: Callable[[str], None]
    started: float = field(default_factory=time.perf_counter)
    spent: dict[str, list[float]] = field(default_factory=dict)
    finished: int = 0

    def __post_init__(self):
        self.total = sum(len(kinds) for kinds in self.left.values())

    def done(self, label: str, kind: str, summary: str, seconds: float) -> None:
        self.finished += 1
        self.spent.setdefault(kind, []).append(seconds)
        if kind in self.left.get(label, []):
            self.left[label].remove(kind)
        self.echo(f"[{self.finished}/{self.total}] {kind} {label}: {summary} ({seconds:.1f} s; "
                  f"elapsed {clock(time.perf_counter() - self.started)}{self._eta()})")

    def failed(self, label: str, kind: str, message: str) -> None:
        self.total -= len(self.left.pop(label, []))
        self.echo(f"[{self.finished}/{self.total}] {kind} {label}: FAILED: {message}")

    def _eta(self) -> str:
        mean = {kind: sum(v) / len(v) for kind, v in self.spent.items()}
        overall = sum(mean.values()) / len(mean)
        left = sum(mean.get(kind, overall) for kinds in self.left.values() for kind in kinds)
        busy = min(self.workers, sum(1 for kinds in self.left.values() if kinds)) or 1
        return f", about {clock(left / busy)} left" if left else ""


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def run_pool(config: StudyConfig, *, jobs: int, devices: str | None = None,
             threads: int | None = None, echo: Callable[[str], None] = print) -> list[Failure]:
    """Run every step of ``config`` not yet done in ``jobs`` worker processes, then the
    report; returns the failed runs (then no report is written)."""
    slots = worker_slots(config.device, devices, jobs)
    # from --jobs, not from the runs left: a run resumed by a rerun keeps its thread count
    threads = threads or default_threads(jobs)
    pending = [s for s in study.plan(config, progress=False)
               if not s.final and not s.done()]
    left: dict[str, list[str]] = {}
    for step in pending:
        left.setdefault(step.label, []).append(step.kind)
    slots = slots[:max(1, len(left))]   # no idle worker holding a GPU
    out = Path(config.out)
    (out / LOGS).mkdir(parents=True, exist_ok=True)
    echo(f"robustmix study: {len(pending)} steps of {len(left)} runs in {len(slots)} worker "
         f"processes ({threads} torch thread(s) each); their output in {out / LOGS}")
    display = Display(left, len(slots), echo)
    failures = _fan_out(config, list(left), slots, threads, display) if left else []
    if failures:
        return failures
    echo(f"robustmix study: {study.finish(config)}; {out} done in "
         f"{clock(time.perf_counter() - display.started)}")
    return []


def _fan_out(config: StudyConfig, labels: list[str], slots: list[str | None], threads: int,
             display: Display) -> list[Failure]:
    """The pool itself: submit each run, follow the workers' events, end them on an
    interrupt (Ctrl-C, or SIGTERM, which the parent turns into one)."""
    context = multiprocessing.get_context("spawn")
    events, slot_queue = context.Queue(), context.Queue()
    for slot in slots:
        slot_queue.put(slot)
    pids: list[int] = []
    log_dir = str(Path(config.out) / LOGS)
    with _sigterm_as_interrupt():
        executor = ProcessPoolExecutor(len(slots), mp_context=context,
                                       initializer=_start_worker,
                                       initargs=(events, slot_queue, threads))
        try:
            futures = {executor.submit(_run_one, config, label, log_dir): label
                       for label in labels}
            failures = _follow(futures, events, display, pids)
        except BaseException:
            _drain(events, display, pids)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            executor.shutdown(wait=True, cancel_futures=True)
            raise
        executor.shutdown(wait=True)
    return failures


def _follow(futures: dict[Future, str], events, display: Display,
            pids: list[int]) -> list[Failure]:
    """Show the workers' events until every run's future is settled; the failures."""
    while not all(future.done() for future in futures):
        _drain(events, display, pids, timeout=0.2)
    _drain(events, display, pids)
    failures = []
    for future, label in futures.items():
        try:
            error = future.result()
        except Exception as err:  # noqa: BLE001 - a worker that died (killed, out of memory)
            error = f"the worker process died ({first_line(err)})"
            display.failed(label, "run", error)
        if error is not None:
            failures.append((label, error))
    return failures


def _drain(events, display: Display, pids: list[int], timeout: float | None = None) -> None:
    """Handle the events waiting (waiting up to ``timeout`` for the first)."""
    while True:
        try:
            event = events.get(timeout=timeout) if timeout else events.get_nowait()
        except queue.Empty:
            return
        timeout = None
        if event[0] == "worker":
            pids.append(event[1])
        elif event[0] == "done":
            display.done(*event[1:])
        elif event[0] == "failed":
            display.failed(*event[1:])


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the parent for as long as the pool runs."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:   # not the main thread: SIGTERM stays as it was
        previous = _UNSET
    try:
        yield
    finally:
        if previous is not _UNSET:
            signal.signal(signal.SIGTERM, previous)


_UNSET = object()


def say_failures(failures: list[Failure], echo: Callable[[str], None]) -> int:
    """List the failed runs; the study's exit code: 0, or 1 when a run failed (2 stays
    the code of bad input, refused before anything runs)."""
    if not failures:
        return 0
    echo(f"robustmix study: {len(failures)} run(s) failed; the others are done, and "
         "rerunning the same command redoes only what is not:")
    for label, error in failures:
        echo(f"  {label}: {error}")
    return 1
