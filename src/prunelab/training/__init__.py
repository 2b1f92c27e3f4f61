"""Training: the config, the loop with callbacks, evaluation, LR schedules, mixed precision, the
divergence check, and multi-process training."""

from prunelab.training.loop import AMP_MODES, OPTIMIZERS, SCHEDULES, Callback, TrainConfig, TrainState, evaluate, train

__all__ = ["AMP_MODES", "OPTIMIZERS", "SCHEDULES", "Callback", "TrainConfig", "TrainState", "evaluate", "train"]
