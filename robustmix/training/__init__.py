"""The training layer: the loop that turns a TrainConfig into a run directory
(:mod:`robustmix.training.trainer`). Above data, models and mixing; below attacks,
evaluations and the application, none of which it imports."""
