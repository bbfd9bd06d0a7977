"""The training layer: the loop that turns a TrainConfig into a run directory
(:mod:`robustmix.training.trainer`), with the run directory's files
(:mod:`~robustmix.training.run_files`) and each epoch's bookkeeping
(:mod:`~robustmix.training.progress`) beside it. Above data, models and mixing; below attacks,
evaluations and the application, none of which it imports."""

from robustmix.training.trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
