"""One run directory as the evaluations see it: now :mod:`robustmix.core.runs`.

The run directory, its file names and its checked readers live in the core
(:class:`robustmix.core.runs.RunDir`); opening a finished run is
:meth:`RunDir.open <robustmix.core.runs.RunDir.open>`. The names here are aliases of the
core's, kept for code that imports them from ``robustmix.evaluations.runinfo``.
"""

from robustmix.core.runs import (DATA_KEYS, GENERALIZATION, PROFILE_CSV, REGULARIZER_CSV,
                                 ROBUSTNESS, FinishedRun, open_run)

RunInfo = FinishedRun

__all__ = ["DATA_KEYS", "GENERALIZATION", "PROFILE_CSV", "REGULARIZER_CSV", "ROBUSTNESS",
           "RunInfo", "open_run"]
