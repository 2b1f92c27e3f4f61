"""The protocol of the ``pitas`` suite: targets, gaps, methods and the two networks with their budgets."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TARGETS", "RETRAIN_TARGET", "GAPS", "DATA_KWARGS", "METHODS", "ModelPlan", "MODELS"]

#: target sparsities of experiment 1 (each pruned layer loses this fraction of its weights).
TARGETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: the sparsity whose networks are retrained in experiment 3.
RETRAIN_TARGET = 0.9
#: distances to the dense model's validation top-1, in points, of experiment 3.
GAPS = (0.5, 1.0, 2.0, 5.0)
#: data options: the authors' /255 inputs; the default 5,000-image validation split.
DATA_KWARGS = {"normalize": "unit"}

#: ``(display name, method, hparams)``: one line adds a method to the three experiments.
METHODS = (
    ("hard thresholding", "hard-threshold", {}),   # the paper's 100-bin histogram threshold, per layer
    ("magnitude", "magnitude", {}),                # global magnitude (classifier included)
    ("FeTa", "feta", {}),
    ("Net-Trim", "nettrim", {}),
    ("L-OBS", "lobs", {}),
)


@dataclass(frozen=True)
class ModelPlan:
    """One network of the suite and its budgets."""

    #: model name.
    model: str
    #: ``TrainConfig`` fields of the dense training.
    dense: dict
    #: retraining epochs of the 90 % runs (the dense recipe otherwise).
    retrain_epochs: int
    #: training images handed to the methods as calibration data.
    calib_size: int
    #: method → hyperparameters added to :data:`METHODS`' (budget cuts).
    overrides: dict = field(default_factory=dict)
    #: the model's options.
    kwargs: dict = field(default_factory=dict)
    #: what was scaled down, for the suite's notes.
    note: str = ""

    def retrain(self, epochs: int) -> dict:
        """The retraining budget: the dense recipe for ``epochs`` epochs, mask fixed."""
        return {**self.dense, "epochs": int(epochs)}


_RECIPE = {"optimizer": "adam", "lr": 1e-3, "batch_size": 300, "schedule": "inverse"}

#: the two networks. Budgets keep the suite near 20–25 minutes of one free CPU core. Every
#: layer-wise method runs at its defaults on the FC net (10,000 images); on lenet5 (5,000 images,
#: 576 / 64 rows per image in the convolutions) FeTa and L-OBS hold at most 10,000 rows per layer,
#: Net-Trim 2,000, and L-OBS takes the one-shot update (its default hybrid update is exact on
#: these layers' rows of at most 256 weights, and slower).
MODELS = (
    ModelPlan("fc", {**_RECIPE, "epochs": 30}, retrain_epochs=40, calib_size=10000,
              note="fc: 10,000 calibration images for every method (the paper: all 60,000)"),
    ModelPlan("lenet5", {**_RECIPE, "epochs": 10}, retrain_epochs=4, calib_size=5000,
              overrides={"feta": {"max_samples": 10000}, "lobs": {"update": "oneshot", "max_samples": 10000},
                         "nettrim": {"max_samples": 2000}},
              note="lenet5: 10 dense and 4 retraining epochs, 5,000 calibration images (at most 10,000 rows per "
                   "layer; Net-Trim 2,000 rows), L-OBS with the one-shot update"),
)
