"""Training: the config, the loop with callbacks, LR schedules, and multi-process training."""

from prunelab.training.loop import OPTIMIZERS, SCHEDULES, Callback, TrainConfig, TrainState, evaluate, train

__all__ = ["OPTIMIZERS", "SCHEDULES", "Callback", "TrainConfig", "TrainState", "evaluate", "train"]
