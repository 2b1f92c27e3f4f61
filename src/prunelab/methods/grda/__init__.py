"""gRDA, directional pruning inside the optimizer (Chao et al., NeurIPS 2020): the optimizer and the method."""

from prunelab.methods.grda.method import DirectionalPruning, search_c, train_grda  # noqa: F401
from prunelab.methods.grda.optim import GRDA, grda_param_groups  # noqa: F401
