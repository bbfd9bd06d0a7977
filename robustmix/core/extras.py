"""Optional extras: a module that only some commands need, imported when one of them runs.

A missing extra is one line that names the ``pip install`` bringing it, and exit code 2
(a UsageError), before any work starts: ``require("submitit", "slurm", needed_by=
"--executor")`` returns the module or raises.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from robustmix.core.errors import UsageError

# what to say beside an extra's pip install, where the extra has a cost worth avoiding
HINTS = {
    # torchattacks 3.5.1 pins requests~=2.25.1 (downgrading idna and urllib3 beside
    # huggingface_hub); its code never imports requests, so --no-deps installs it intact
    "torchattacks": "or, leaving requests and idna as they are: pip install --no-deps "
                    "torchattacks",
}


def require(module: str, extra: str, *, needed_by: str) -> ModuleType:
    """``module`` imported, or a one-line UsageError: ``needed_by`` needs it, and the
    ``pip install 'robustmix[EXTRA]'`` that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        hint = f" ({HINTS[extra]})" if extra in HINTS else ""
        raise UsageError(f"{needed_by} needs the {module} package, an optional extra: "
                         f"pip install 'robustmix[{extra}]'{hint}") from None
