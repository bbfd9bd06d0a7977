"""How many intra-op threads torch computes with: the user's choice, or the cores free now.

On a machine shared with other work, torch's OpenMP threads wait for each other at every
barrier whenever a core they were given is taken: a training run beside one CPU-bound
process took 17 times as long with 2 threads on 2 cores (issue 27). So unless the user
chooses, robustmix takes the cores it may use (``os.sched_getaffinity``) less those busy
with other work at start, and never more threads than torch would take on its own.

Precedence: ``--threads N``, then ``ROBUSTMIX_THREADS``, then ``OMP_NUM_THREADS`` (the
user's OpenMP setting, which torch itself reads), then the automatic choice.

How busy the cores are: on Linux, the CPU time the cores we may use spent busy over
:data:`SAMPLE_S` seconds (``/proc/stat``): it sees a neighbour started a second ago and
forgets one stopped a second ago, counts only our cores, and not processes asleep on I/O.
The one-minute load average (the fallback elsewhere) lags by most of a minute both ways
and counts every core of the machine. The sample costs 0.2 s, paid only by the commands
that compute (``--help`` and a mistyped flag answer before it).

Checked again as the work goes on (issue 33): a neighbour that starts after the command
would otherwise stall it for the rest of its run. Where the choice was automatic,
:func:`recheck` decides again before every step of a study and before every ε of an
attack, from the threads other processes have ready to run on our cores at that moment
(/proc/stat's ``procs_running`` less our own running threads, the mean of a few reads a
few ms apart). That is demand, not CPU time: a neighbour at nice 19 gets little CPU
beside our threads yet stalls them at every barrier, and a CPU-time sample taken while we
compute counts our own spinning threads. A training run keeps the count it started with
(its weights' last bits depend on it; config.json records it). :func:`used` lists the
counts in force since the last :func:`mark`, so a study records them per step.

No torch at module level: :func:`choose` is a pure function; :func:`apply` imports torch.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Mapping

from robustmix.core.errors import UsageError

ENV = "ROBUSTMIX_THREADS"
OMP = "OMP_NUM_THREADS"
SAMPLE_S = 0.2
HOW_TO_CHOOSE = f"--threads N or {ENV}=N to choose"


@dataclass(frozen=True)
class Choice:
    """torch's intra-op thread count and why: ``source`` is ``--threads``, ``ROBUSTMIX_THREADS``,
    ``OMP_NUM_THREADS`` or ``auto``; ``busy`` (cores busy with other work) and ``measure``
    (how it was measured) are set for ``auto`` where the load could be read."""

    threads: int
    source: str
    cores: int
    busy: float | None = None
    measure: str | None = None
    most: int | None = None   # auto: the most it may take (all free), for checks later

    def line(self) -> str:
        """The one line that says the choice and how to change it."""
        count = f"robustmix: {self.threads} torch thread{'s' if self.threads != 1 else ''}"
        if self.source == "--threads":
            return f"{count} (--threads {self.threads})"
        if self.source == ENV:
            return f"{count} ({ENV}={self.threads})"
        if self.source == OMP:
            return f"{count} ({OMP}={self.threads}, your OpenMP setting; {HOW_TO_CHOOSE})"
        if self.busy is None:
            return f"{count} ({self.cores} cores, load unknown); {HOW_TO_CHOOSE}"
        return (f"{count} ({self.cores} cores, {self.busy:.1f} busy with other work: "
                f"{self.measure}); {HOW_TO_CHOOSE}")


def choose(*, cores: int, busy: float | None, env: Mapping[str, str], flag: int | None,
           cap: int | None = None, measure: str | None = None) -> Choice:
    """The thread count for ``cores`` usable cores of which ``busy`` are taken by other work
    (None: unknown; ``measure`` says how it was measured), unless ``flag`` (``--threads``)
    or ``env`` chooses it.

    Automatic: the free cores, ``cores - busy`` rounded half up (a core more than half free
    counts), at least 1, at most ``cap`` (torch's own default, which counts physical cores
    of the whole machine: robustmix never takes more threads than torch would, only fewer
    where cores are taken or not ours). A bad ``ROBUSTMIX_THREADS`` or ``OMP_NUM_THREADS`` is a
    UsageError naming the variable.
    """
    if flag is not None:
        if flag < 1:
            raise UsageError(f"--threads must be an integer >= 1, got {flag}")
        return Choice(flag, "--threads", cores)
    for name in (ENV, OMP):
        if env.get(name, "").strip():
            return Choice(_count(name, env[name]), name, cores)
    most = max(1, min(cores, cap) if cap else cores)
    if busy is None:
        return Choice(most, "auto", cores, most=most)
    free = math.floor(cores - busy + 0.5)
    return Choice(max(1, min(most, free)), "auto", cores, busy, measure, most)


def _count(name: str, text: str) -> int:
    """A positive thread count from variable ``name``; OpenMP's nested list ``4,2`` gives
    its first level."""
    first = text.split(",")[0].strip()
    try:
        value = int(first)
    except ValueError:
        value = 0
    if value < 1 or name == ENV and "," in text:
        raise UsageError(f"{name} must be an integer >= 1, got {text!r}")
    return value


# ---------------------------------------------------------------------------- measuring


def usable_cores() -> list[int] | None:
    """The CPUs this process may run on; None where the OS does not say which."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:   # macOS, Windows
        return None


def cpu_times(cpus: list[int], path: str = "/proc/stat") -> tuple[int, int] | None:
    """(busy, total) clock ticks of ``cpus`` since boot, from /proc/stat; None without it.
    Busy is every tick but idle and iowait (a core waiting on I/O is free to compute)."""
    wanted, busy, total = {f"cpu{n}" for n in cpus}, 0, 0
    try:
        with open(path, encoding="ascii") as stat:
            for line in stat:
                name, *fields = line.split()
                if name in wanted:
                    # user nice system idle iowait irq softirq steal (guest is in user)
                    ticks = [int(f) for f in fields[:8]]
                    total += sum(ticks)
                    busy += sum(ticks) - ticks[3] - ticks[4]
    except (OSError, ValueError, IndexError):
        return None
    return (busy, total) if total else None


def measure_busy(cpus: list[int] | None, seconds: float = SAMPLE_S) -> tuple[float | None, str]:
    """How many of ``cpus`` are busy with other work, and how that was measured."""
    if cpus is not None and (start := cpu_times(cpus)) is not None:
        time.sleep(seconds)
        end = cpu_times(cpus)
        if end is not None and end[1] > start[1]:
            share = (end[0] - start[0]) / (end[1] - start[1])
            return share * len(cpus), f"CPU time over the last {seconds:g} s"
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None, "load unknown"
    every = os.cpu_count() or 1   # the load average counts every core of the machine
    mine = len(cpus) if cpus is not None else every
    return load * mine / every, "1-minute load average"


def decide(flag: int | None, env: Mapping[str, str] | None = None) -> Choice:
    """The choice for this process: the flag or the environment, else measured now."""
    env = os.environ if env is None else env
    cpus = usable_cores()
    cores = len(cpus) if cpus is not None else (os.cpu_count() or 1)
    if flag is not None or any(env.get(name, "").strip() for name in (ENV, OMP)):
        return choose(cores=cores, busy=None, env=env, flag=flag)
    import torch   # here: the caller computes with torch next; --help never gets here

    busy, measure = measure_busy(cpus)
    return choose(cores=cores, busy=busy, env={}, flag=None, cap=torch.get_num_threads(),
                  measure=measure)


def apply(choice: Choice) -> int:
    """Set torch's intra-op threads to the choice; returns the count it had before. An
    automatic choice is checked again by :func:`recheck` from now on; any other is kept."""
    import torch

    global _GOVERNOR
    before = torch.get_num_threads()
    set_count(choice.threads)
    _GOVERNOR = Governor(choice) if choice.source == "auto" else None
    return before


# ----------------------------------------------------------------------- checking again

RECHECK_READS = 8        # reads of /proc/stat per check ...
RECHECK_GAP_S = 0.002    # ... this far apart: 16 ms a check


def own_running(task_dir: str = "/proc/self/task") -> int:
    """How many of this process's threads are running or ready to run (state R)."""
    count = 0
    try:
        tasks = os.listdir(task_dir)
    except OSError:
        return 1
    for task in tasks:
        try:
            with open(os.path.join(task_dir, task, "stat"), encoding="ascii") as stat:
                text = stat.read()
        except OSError:   # the thread ended
            continue
        count += text[text.rindex(")") + 2:].startswith("R")
    return max(count, 1)   # this thread is running, reading


def procs_running(path: str = "/proc/stat") -> int | None:
    """The threads running or ready to run on the whole machine; None without /proc/stat."""
    try:
        with open(path, encoding="ascii") as stat:
            for line in stat:
                if line.startswith("procs_running "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def others_ready(cpus: list[int] | None, reads: int = RECHECK_READS,
                 gap: float = RECHECK_GAP_S) -> float | None:
    """The mean number of other processes' threads ready to run, counted against our
    cores (the machine's count times our share of its cores); None where unknown."""
    counts = []
    for index in range(reads):
        total = procs_running()
        if total is None:
            return None
        counts.append(max(0, total - own_running()))
        if index + 1 < reads:
            time.sleep(gap)
    every = os.cpu_count() or 1
    mine = len(cpus) if cpus is not None else every
    return sum(counts) / len(counts) * min(1.0, mine / every)


class Governor:
    """Decides an automatic thread count again when asked (:func:`recheck`) and keeps the
    counts in force (:func:`used`)."""

    def __init__(self, start: Choice) -> None:
        self.cpus = usable_cores()
        self.cores, self.cap = start.cores, start.most or start.threads
        self.current = start.threads
        self.since_mark = [start.threads]
        self.changes: list[tuple[str, int, float]] = []   # (where, threads, busy)

    def recheck(self, where: str, busy: float | None = None) -> int:
        busy = others_ready(self.cpus) if busy is None else busy
        if busy is None:
            return self.current
        choice = choose(cores=self.cores, busy=busy, env={}, flag=None, cap=self.cap)
        if choice.threads != self.current:
            set_count(choice.threads)
            self.current = choice.threads
            self.changes.append((where, choice.threads, busy))
            self.since_mark.append(choice.threads)
        return self.current

    def mark(self) -> None:
        self.since_mark = [self.current]


_GOVERNOR: Governor | None = None


def recheck(where: str) -> None:
    """Decide the thread count again, where it was chosen automatically (a no-op where
    the user chose it, or where no command chose it: a library caller keeps its own)."""
    if _GOVERNOR is not None:
        _GOVERNOR.recheck(where)


def mark() -> None:
    """Start a new record of the counts in force (a study calls it before each step)."""
    if _GOVERNOR is not None:
        _GOVERNOR.mark()


def used() -> list[int]:
    """The thread counts in force since the last :func:`mark`, in order (the current count
    alone where none was chosen automatically)."""
    if _GOVERNOR is not None:
        return list(_GOVERNOR.since_mark)
    import torch

    return [torch.get_num_threads()]


def release() -> None:
    """Stop checking again (the command is over)."""
    global _GOVERNOR
    _GOVERNOR = None


def set_count(threads: int) -> None:
    """torch.set_num_threads, skipped when it would change nothing (it rebuilds torch's
    thread pools, which need not happen in a torchrun rank at exit)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
