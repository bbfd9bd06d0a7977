"""A torchrun rank of the GPU check's ddp check: a robustmix command, then the rank's peak
memory in DIR/rankN.json.

    torchrun ... -m benchmarks.gpu_check_rank DIR train ...

Apart from :mod:`benchmarks.gpu_check` because each rank imports it: this imports no more
than the robustmix command itself does (the benchmarks' common module pulls in torchvision,
and torchvision torch._dynamo: seconds per rank).
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any


def peak_memory() -> dict[str, Any]:
    """This process's peaks in MiB: CUDA's max_memory_allocated on the current device (None
    where CUDA was not used), and the max RSS of the largest process among this one and the
    children it waited for (Linux counts their descendants in)."""
    import torch

    rss_kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    gpu = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gpu = torch.cuda.max_memory_allocated() / 2**20
    return {"gpu_mib": gpu, "rss_mib": rss_kib / 1024}


def main(argv: list[str]) -> int:
    """``DIR COMMAND...``: run ``robustmix COMMAND...``, then write this rank's peaks."""
    from robustmix.app.cli import main as robustmix

    peak_dir, command = Path(argv[0]), argv[1:]
    code = robustmix(command)
    peak_dir.mkdir(parents=True, exist_ok=True)
    written = peak_dir / f"rank{os.environ.get('RANK', '0')}.json"
    written.write_text(json.dumps(peak_memory()) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
