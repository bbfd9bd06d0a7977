"""What every benchmark here shares: the machine it ran on, and how time is taken.

Timing follows airbench: on a GPU, CUDA events around exactly what is claimed, with the
device synchronized before the first event and after the last; on the CPU,
``time.perf_counter``. Either way warm-up calls come first and are not timed.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from typing import Any, Callable

import numpy as np
import torch
import torchvision

from robustmix.core.devices import resolve_device  # noqa: F401 - the rule of ``--device``


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine_info(device: torch.device | str) -> dict[str, Any]:
    """The machine a number was taken on: CPU, cores, threads, versions, GPU, load, date."""
    device = torch.device(device)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "gpu": None,
        "cuda": torch.version.cuda,
        "load_average": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def format_machine(info: dict[str, Any]) -> str:
    load = info["load_average"]
    load_text = " ".join(f"{v:.2f}" for v in load) if load else "unknown"
    device = info["device"] + (f" ({info['gpu']}, CUDA {info['cuda']})" if info["gpu"] else
                               " (no GPU used)")
    return "\n".join([
        f"date: {info['date']}",
        f"CPU: {info['cpu']}, {info['logical_cores']} logical cores "
        f"({info['usable_cores']} usable), torch threads {info['torch_threads']}",
        f"python {info['python']}, torch {info['torch']}, torchvision {info['torchvision']}, "
        f"numpy {info['numpy']}",
        f"device: {device}",
        f"load average (1, 5, 15 min): {load_text}",
    ])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Seconds between :meth:`start` and :meth:`stop` on ``device``.

    CUDA: events recorded on the current stream, the device synchronized before the start
    (so earlier work is not counted) and after the stop (so all of the timed work is).
    CPU: ``time.perf_counter``.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._cuda = device.type == "cuda"

    def start(self) -> None:
        sync(self.device)
        if self._cuda:
            self._begin = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._begin.record()
        else:
            self._begin_s = time.perf_counter()

    def stop(self) -> float:
        if self._cuda:
            self._end.record()
            torch.cuda.synchronize(self.device)
            return self._begin.elapsed_time(self._end) / 1000.0
        return time.perf_counter() - self._begin_s


def time_calls(fn: Callable[[], Any], *, device: torch.device, repeats: int,
               warmup: int) -> np.ndarray:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls.

    Each call starts on an idle device and ends when its last kernel is done, so on a GPU
    the time includes the host's launch overhead (the latency of one call, not its share
    of a busy stream).
    """
    for _ in range(warmup):
        fn()
    watch = Stopwatch(device)
    seconds = np.empty(repeats)
    for i in range(repeats):
        watch.start()
        fn()
        seconds[i] = watch.stop()
    return seconds


def time_interleaved(fns: dict[str, Callable[[], Any]], *, device: torch.device,
                     repeats: int, warmup: int, rounds: int = 10) -> dict[str, np.ndarray]:
    """:func:`time_calls` for several functions, taken in turns.

    The ``repeats`` calls of each function are split into ``rounds`` runs and the functions
    take turns, so a change in the machine's load (other jobs on a shared host) falls on
    all of them alike instead of on whichever ran at that moment.
    """
    rounds = max(1, min(rounds, repeats))
    chunks = [len(part) for part in np.array_split(np.arange(repeats), rounds)]
    samples: dict[str, list[np.ndarray]] = {name: [] for name in fns}
    for turn, chunk in enumerate(chunks):
        for name, fn in fns.items():
            samples[name].append(time_calls(fn, device=device, repeats=chunk,
                                            warmup=warmup if turn == 0 else 1))
    return {name: np.concatenate(parts) for name, parts in samples.items()}


def summarize_us(seconds: np.ndarray) -> dict[str, float]:
    """Median, quartiles and interquartile range of per-call times, in microseconds."""
    p25, median, p75 = np.percentile(np.asarray(seconds) * 1e6, [25, 50, 75])
    return {"median_us": float(median), "p25_us": float(p25), "p75_us": float(p75),
            "iqr_us": float(p75 - p25), "repeats": int(len(seconds))}


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
