"""Memory said before it is spent: whether a run's peak fits what its device has free.

A run's peak is ``fixed + per_example × batch``: ``fixed`` holds what does not grow with
the batch (weights, their gradients and momentum, the data set where it is held in memory),
``per_example`` what does (the activations a pass keeps for its backward pass, measured on
a tiny batch by :func:`robustmix.models.memory.measure`, and the batch's own copies). This
module holds the pure parts: the memory a device has free, the decision (fits, the largest
batch and image size that fit) and the one line that refuses a run that does not fit. The
training loop and the attack runner measure and call :func:`refuse_unless_fits` before
they write anything.

Setting ``ROBUSTMIX_NO_MEMORY_CHECK=1`` skips the refusal (the estimate is still made for
whoever asks): for a user who knows the estimate is wrong for their machine.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from robustmix.core import distributed
from robustmix.core.errors import ConfigError

NO_CHECK = "ROBUSTMIX_NO_MEMORY_CHECK"
GIB = 2 ** 30

# What the measured activations are multiplied by (SAFETY), what is added once (KERNELS),
# per device type, and why.
# CPU: the activations are counted (the tensors autograd saves, plus two gradients in
# flight), not observed. Observed (``python -m benchmarks.bench_memory``): the growth of a
# fresh process's peak resident memory over one training step (forward, backward, SGD, one
# thread; the weights' gradients and momentum taken off), as a multiple of the count:
#   PreActResNet-18   32 px, batch 32 / 128            1.29 / 1.19
#   PreActResNet-18  224 px, batch 2 / 4 / 8 / 16      1.29 / 1.27 / 1.12 / 0.94
#   SmallCNN         224 px, batch 2 / 16              1.44 / 0.85
#   WRN-28-2          32 px, batch 32 / 128 / 256      1.32 / 1.35 / 1.09
#   ResNet-56         32 px, batch 128                 1.57
#   an attack's input gradient, PreActResNet-18, 32 px batch 128 / 224 px batch 4: 1.32 / 1.26
# and the same step run again differed by up to a fifth (ResNet-56 at 128: 1.32 in an
# earlier run; WRN-28-2 at 128: 1.50). The excess is the backward pass's kernels (oneDNN's
# copies of a layer's input and gradient, its generated code and scratchpads: a part that
# does not grow with the batch, 25-100 MB here) and the C allocator's free-but-kept blocks:
# glibc keeps freed blocks under its mmap threshold (at most 32 MiB) in its heap, where
# the backward pass's different order of sizes leaves them fragmented, so small tensors
# (CIFAR-sized layers) cost the most and 224 px batches the least. 1.6 x the count plus
# 128 MiB is above every step observed (closest: ResNet-56 at batch 128, 999 MiB for 855),
# and at most 2.0 x it (large batches at 224 px, small batches where the 128 MiB weighs).
# CUDA: the caching allocator's peak is measured itself, backward and workspaces included;
# what it reserves beyond that is its rounding of blocks (to 512 B, large ones into 2 MiB
# segments) and fragmentation between steps. 1.15 allows for that; it was not measured on
# a GPU here. The CUDA context was made before the free memory is read.
SAFETY = {"cpu": 1.6, "cuda": 1.15}
KERNELS = {"cpu": 128 * 2 ** 20, "cuda": 0}


@dataclass(frozen=True)
class Estimate:
    """The peak of one run on ``device`` at ``batch_size``, and what that device has.

    ``per_example`` and ``data`` grow with the image's area (the activations of a conv net
    and the images held in memory), ``fixed`` does not. ``available`` counts what the run
    itself already holds (its data and model, loaded before the measurement) as available
    to it; None where it is unknown (the check then passes).
    """

    device: str
    batch_size: int
    per_example: float
    fixed: int
    data: int = 0
    available: int | None = None
    image_size: int | None = None
    parts: tuple[tuple[str, int], ...] = field(default=())
    processes: int = 1      # under torchrun: ``batch_size`` is each process's share

    @property
    def needed(self) -> int:
        return self.fixed + self.data + math.ceil(self.per_example * self.batch_size)

    @property
    def fits(self) -> bool:
        return self.available is None or self.needed <= self.available

    def largest_batch(self) -> int:
        """The largest batch that fits (0: not even one example); the batch itself when
        the available memory is unknown."""
        if self.available is None:
            return self.batch_size
        return largest_batch(self.per_example, self.fixed + self.data, self.available)

    def largest_image_size(self, step: int = 8) -> int:
        """The largest image side, a multiple of ``step`` not above this one, at which this
        batch fits, with ``per_example`` and ``data`` scaled by the image's area; 0 where
        none does (or the image size is unknown)."""
        if self.image_size is None or self.available is None:
            return 0
        room = self.available - self.fixed
        per_area = self.per_example * self.batch_size + self.data
        if room <= 0 or per_area <= 0:
            return 0 if room <= 0 else self.image_size
        side = self.image_size * math.sqrt(room / per_area)
        return min(self.image_size, int(side // step * step))

    def summary(self) -> str:
        """The estimate and what is available, in GiB, with its parts: for a plan's line."""
        return f"about {_gib(self.needed)} at batch size {self.batch_size} {self._detail()}"

    def _detail(self) -> str:
        parts = "".join(f", {name} {_gib(size)}" for name, size in self.parts if size)
        have = "unknown" if self.available is None else _gib(self.available)
        each = f" per process ({self.batch_size} examples each)" if self.processes > 1 else ""
        return (f"on {self.device}{each} (activations and batch "
                f"{_gib(self.per_example * self.batch_size)}{parts}), {have} available")


def largest_batch(per_example: float, fixed: int, available: int) -> int:
    """The largest batch whose peak ``fixed + per_example × batch`` is within
    ``available``; 0 when not even one example fits."""
    room = available - fixed
    if room < per_example or room <= 0:
        return 0
    if per_example <= 0:
        raise ValueError(f"per_example must be > 0 bytes, got {per_example}")
    batch = int(room // per_example)
    return batch + 1 if (batch + 1) * per_example <= room else batch  # // rounds below


def checking() -> bool:
    """Whether runs are checked (not when ``ROBUSTMIX_NO_MEMORY_CHECK`` is set and not 0)."""
    return os.environ.get(NO_CHECK, "").strip() in ("", "0")


def refusal(estimate: Estimate, knobs: dict[str, int]) -> ConfigError | None:
    """The error that refuses a run that does not fit (None when it fits): one line with
    the estimate, what is available, and the settings in ``knobs`` (field: value, 0 for
    none) at which it would; named as fields, the command line names them as flags."""
    if estimate.fits:
        return None
    fitting = [f"{name} {value}" for name, value in knobs.items() if value > 0]
    cure = (" or ".join(fitting) + " would fit" if fitting else
            "not even one example fits: use a device with more memory")
    return ConfigError("batch_size", f"{estimate.batch_size * estimate.processes} needs about "
                       f"{_gib(estimate.needed)} {estimate._detail()}: {cure} (or set "
                       f"{NO_CHECK}=1 to run anyway)", mentions=tuple(knobs))


def refuse_unless_fits(estimate: Estimate, knobs: dict[str, int]) -> None:
    """Raise :func:`refusal`'s error, unless the run fits or checks are switched off."""
    error = refusal(estimate, knobs)
    if error is not None and checking():
        raise error


def refuse_on_every_rank(error: ConfigError | None) -> None:
    """Raise, on every rank alike, the first rank's refusal (``error``: this rank's, None
    when its run fits); every rank must call it."""
    mine = None if error is None else (error.field, error.problem, error.mentions)
    failed = [e for e in distributed.all_gather(mine) if e is not None]
    if failed:
        field, problem, mentions = failed[0]
        raise distributed.shared_error(ConfigError(field, problem, mentions=mentions))


def _gib(size: float) -> str:
    """A size for a line: MiB below 1 GiB, else GiB with three figures."""
    if size < GIB:
        return f"{size / 2 ** 20:.0f} MiB"
    return f"{size / GIB:.2f} GiB" if size < 10 * GIB else f"{size / GIB:.1f} GiB"


# ----------------------------------------------------------------------- free memory


def available_bytes(device) -> int | None:
    """The bytes a run on ``device`` can still allocate: CUDA's free memory plus what this
    process's allocator holds unused; the CPU's MemAvailable, within the cgroup's limit
    where one is set; None for other devices."""
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if kind == "cpu":
        return cpu_available()
    return None


def cpu_available(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
                  ) -> int | None:
    """MemAvailable (/proc/meminfo), lowered to the room left under this process's cgroup
    limit where there is one; None where neither can be read (not Linux)."""
    found = [v for v in (_meminfo_available(proc / "meminfo"),
                         cgroup_room(proc / "self" / "cgroup", cgroup_root)) if v is not None]
    return min(found) if found else None


def _meminfo_available(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# cgroup v2: (limit, usage, reclaimable page cache in memory.stat); v1: the same, named so
_CGROUP_FILES = {2: ("memory.max", "memory.current", "inactive_file"),
                 1: ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")}


def cgroup_room(self_cgroup: Path, root: Path) -> int | None:
    """The least room (limit − usage + reclaimable page cache) under any memory limit of
    this process's cgroup and its ancestors (v2 at ``root``, v1 at ``root/memory``); None
    where no limit is set or none can be read."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if number == "0" and not controllers:
            rooms += _rooms(root, path, _CGROUP_FILES[2])
        elif "memory" in controllers.split(","):
            rooms += _rooms(root / "memory", path, _CGROUP_FILES[1])
    return min(rooms) if rooms else None


def _rooms(mount: Path, path: str, names: tuple[str, str, str]) -> list[int]:
    """The room under each limit from the cgroup at ``path`` up to the mount's root."""
    rooms, here = [], mount / path.strip("/")
    while True:
        room = _room(here, *names)
        if room is not None:
            rooms.append(room)
        if here == mount or mount not in here.parents:
            return rooms
        here = here.parent


def _room(folder: Path, limit_name: str, usage_name: str, cache_name: str) -> int | None:
    try:
        limit = (folder / limit_name).read_text().strip()
        usage = int((folder / usage_name).read_text().strip())
    except (OSError, ValueError):
        return None
    # v2 writes "max"; v1 an unset limit as a page-rounded 2**63 - 1
    if limit == "max" or int(limit) >= 2 ** 62:
        return None
    cache = 0
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == cache_name:
                cache = int(value)
    except (OSError, ValueError):
        pass
    return max(int(limit) - usage + cache, 0)
