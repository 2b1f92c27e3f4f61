"""The protocol of the ``layerwise`` suite: targets, the 2:4 pattern, the method table and the three networks."""

from __future__ import annotations

from dataclasses import dataclass, field

from prunelab.reproductions.pitas.protocol import MODELS as PITAS_MODELS
from prunelab.reproductions.pitas.protocol import ModelPlan

__all__ = ["TARGETS", "PATTERN", "PATTERN_TARGET", "COST_TARGET", "CALIB_SIZE", "RETRAIN_EPOCHS", "DATA_KWARGS",
           "Method", "METHODS", "MODELS", "ModelPlan"]

#: target sparsities of every pruned layer (unstructured).
TARGETS = (0.5, 0.7, 0.9, 0.95)
#: the semi-structured pattern, run by the methods that offer it, and its sparsity (1 - 2/4).
PATTERN = "2:4"
PATTERN_TARGET = 0.5
#: the target whose prune time and peak memory the tables show (with the pattern's).
COST_TARGET = 0.9
#: calibration images for every method and model.
CALIB_SIZE = 4096
#: the short retraining of every run: epochs of the dense recipe, mask fixed.
RETRAIN_EPOCHS = 1
#: data options: /255 inputs (as the ``pitas`` suite); the default 5,000-image validation split.
DATA_KWARGS = {"normalize": "unit"}


@dataclass(frozen=True)
class Method:
    """One line of the method table.

    Attributes:
        name: the report's name.
        method: the registered method.
        hparams: its hyperparameters (the models' overrides are added).
        pattern: also run at :data:`PATTERN` (``hparams["pattern"]``) when the method offers it.
        prunable: the run's ``RunSpec.prunable`` (restricts what a one-shot method may prune).
    """

    name: str
    method: str
    hparams: dict = field(default_factory=dict)
    pattern: bool = False
    prunable: dict = field(default_factory=dict)


#: every layer-wise method, pruning every layer but the classifier: one line adds a method.
METHODS = (
    # per-layer magnitude on the same layers as the others (the harness gives it all but the last)
    Method("magnitude", "magnitude", {"scope": "layer"}, pattern=True, prunable={"exclude_last": True}),
    Method("hard thresholding", "hard-threshold"),   # Pitas et al.'s 100-bin histogram threshold, per layer
    Method("FeTa", "feta"),
    Method("Net-Trim", "nettrim"),
    Method("L-OBS", "lobs", pattern=True),
    Method("SparseGPT", "sparsegpt", pattern=True),
    Method("Wanda", "wanda", pattern=True),
)

_FC, _LENET5 = PITAS_MODELS

#: the three networks: ``pitas``' FC 784-100-100-10 and LeNet-5 (same dense recipes, so a shared
#: output folder shares their dense models) and the wide MLP 784-1024-1024-10. Every run retrains
#: :data:`RETRAIN_EPOCHS` epoch of the dense recipe.
#: Budget (CPU seconds of one thread, measured on a busy shared machine; two free cores take less):
#: dense training fc 47, lenet5 ~290, mlp ~47; a run's retraining epoch and evaluations fc 1.7,
#: lenet5 ~18-36, mlp ~12; prune at 90 %: fc FeTa 7.6, Net-Trim 9.7, L-OBS 5.8, SparseGPT 0.2;
#: lenet5 FeTa 29, Net-Trim 14 (with the cuts below), L-OBS 30, SparseGPT 4.9, Wanda 3.3; mlp
#: SparseGPT 0.7, Wanda 0.2, FeTa, L-OBS and Net-Trim at most ~45 each (their 30 s on two cores).
#: The 96 runs: ~40-50 minutes of one thread, LeNet-5's 32 retraining epochs the largest part.
MODELS = (
    ModelPlan("fc", dict(_FC.dense), retrain_epochs=RETRAIN_EPOCHS, calib_size=CALIB_SIZE,
              note="fc 784-100-100-10: the pitas recipe (30 Adam epochs)"),
    ModelPlan("lenet5", dict(_LENET5.dense), retrain_epochs=RETRAIN_EPOCHS, calib_size=CALIB_SIZE,
              overrides={"feta": {"max_samples": 10000}, "nettrim": {"max_samples": 2000}},
              note="lenet5: 10 dense epochs; the convolutions give 576 / 64 rows per image, so FeTa is fitted on "
                   "at most 10,000 rows per layer and Net-Trim on 2,000"),
    ModelPlan("mlp", {**_FC.dense, "epochs": 5}, retrain_epochs=RETRAIN_EPOCHS, calib_size=CALIB_SIZE,
              kwargs={"hidden": [1024, 1024]}, note="mlp 784-1024-1024-10: 5 Adam epochs of the same recipe"),
)
