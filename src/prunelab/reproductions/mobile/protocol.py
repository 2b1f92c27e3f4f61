"""The protocol of the ``mobile`` suite: LTP against GMP and magnitude + retraining on MobileNetV2,
EfficientNet-B0 and MixNet-S, its budgets and why they are what they are.

**The comparison.** Per model and seed one dense model is trained (:data:`DENSE`); from it LTP,
GMP and one-shot magnitude pruning + retraining each get the same :data:`RETRAIN` budget of
epochs (LTP: thresholds until the target, at most ``epochs - 1`` epochs, then fine-tuning with the
mask fixed; GMP: Zhu & Gupta's cubic schedule over the first half, then recovery; magnitude:
pruned at once, then retrained), at 2×, 4× and 8× compression (:data:`TARGETS`). Every
conv (stem, expansion, depthwise, squeeze-excite, projection, head) and the classifier is
prunable; batch-norm and biases are not.

**Scope of the baselines.** GMP and magnitude prune every layer to the target (``scope="layer"``),
the stronger of the two scopes here. Measured on MobileNetV2 with this suite's budgets (seed 0,
dense test top-1 81.11 %), test top-1 after the 3 epochs at 4×: magnitude 57.08 (layer) vs 10.00
(global), GMP 59.60 (layer) vs 56.52 (global); global magnitude pruned 100 % of the classifier
(GMP 98 %): its and the head's weights are small (fan-out init) and numerous. At 8× both scopes
ended at 10 % (chance) for magnitude and GMP alike: global removes the classifier, a uniform 87.5 %
disconnects these narrow networks (a stem of 8 filters keeps 9 of its 72 weights, a depthwise
filter about one of its 9). LTP learns per-layer thresholds, the allocation the comparison is
about: at 11.4× (λ = 10, no stop at the target) it kept the stem and the first blocks dense and
pruned the head 99 %.

**LTP's λ.** LTP's sparsity is set by λ (``penalty_weight``, :data:`LTP_LAMBDA`); each λ reaches its
target within the first LTP epoch on MobileNetV2 (63 steps): λ = 1 reached 2.0× at the first
check (step 10), λ = 3 4.4× at step 30, λ = 10 11.4× by the end of the epoch (run without the stop
at the target), so the rest of the budget fine-tunes (test top-1 78.75, 79.75 and, at 11.4× without
the stop, 75.12 %). λ was not tuned further, nor on the other two networks. Short of the target,
LTP prunes the rest by *global* magnitude (``match_target``), which can remove a whole classifier
as above; the report flags such runs ("†": target not reached).

**Budgets** (CPU seconds of one thread, measured on the 2-core machine while other jobs ran, so
on the high side; ``time.process_time`` of one epoch on a 2,000-image subset, batch 64):

=================  =============  =====================  ============  ==============
model              MACs / image   train s / 1k images    eval s / 1k   params
=================  =============  =====================  ============  ==============
mobilenetv2        4.75 M         2.5                    0.56          206,722
efficientnet-b0    4.55 M         3.9                    0.76          181,776
mixnet-s           6.04 M         5.6                    1.13          232,029
=================  =============  =====================  ============  ==============

At the models' default width 0.5 and depth 1 (21-27 M MACs, 4-5× more) one epoch of 1,000
images took 8.7, 14.6 and 18.9 wall seconds (mobilenetv2, efficientnet-b0, mixnet-s; batch 128, same
loaded machine), which would leave each run a few hundred images. So the suite uses width 0.25 and
depth 0.5 (:data:`MODEL_KWARGS`), a training subset of :data:`TRAIN_LIMIT` images (``limit``), a
validation split of :data:`VAL_SIZE` (``val_size``), and evaluates in batches of 128 (2-3× faster
than 1,000 on these networks; the scores do not depend on it beyond float rounding). The test split is the full 10,000
images: every run evaluates it once (magnitude twice), about a sixth of the suite's time.

Per model: dense :data:`DENSE` epochs, then 9 runs of :data:`RETRAIN` epochs, i.e.
``4,000 × (6 + 9 × 3) = 132,000`` training images, plus ~170,000 evaluated ones, so
``132 × 12.0 + 170 × 2.45 ≈ 2,000`` CPU seconds of one thread for the three models. Measured in the
harness on MobileNetV2 (CPU seconds, same loaded machine): the dense model ≈ 62, each run 35-44
(LTP 35 at 2× and 40 at 4×, GMP 37, magnitude 43-44), ≈ 420 in all; scaled by the training costs
above (×1.56, ×2.24) the three models take ≈ 2,020. That is about 35 minutes with ``--threads 1``
and 20-30 minutes with ``--threads 2`` on two free cores. Three seeds (the ``mobile-3seeds``
suite, or :func:`~prunelab.reproductions.mobile.suite.mobile_specs` with ``seeds=SEEDS_FULL``)
triple it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TARGETS", "SEEDS", "SEEDS_FULL", "MODEL_KWARGS", "TRAIN_LIMIT", "VAL_SIZE", "DATA_KWARGS", "DENSE",
           "RETRAIN", "LTP_COMMON", "LTP_LAMBDA", "BASELINE_SCOPE", "GMP_HP", "MAGNITUDE_HP", "MobilePlan", "MODELS",
           "METHODS", "LEAST_PRUNED_TARGET"]

#: target sparsities: 2×, 4× and 8× compression of the prunable weights.
TARGETS = (0.5, 0.75, 0.875)
#: the default seed, and the seeds of the three-seed option (each seed its own dense model).
SEEDS = (0,)
SEEDS_FULL = (0, 1, 2)
#: the networks' size: channel multiplier 0.25, half the blocks per stage (see the module docstring).
MODEL_KWARGS = {"width": 0.25, "depth": 0.5}
#: training images kept (of the 55,000 left after the validation carve) and validation images.
TRAIN_LIMIT = 4000
VAL_SIZE = 1000
#: data options: /255 inputs, the subset and the small validation split.
DATA_KWARGS = {"normalize": "unit", "limit": TRAIN_LIMIT, "val_size": VAL_SIZE}
#: the dense recipe: Adam, cosine to 0, batch 64 (63 steps an epoch on the subset).
DENSE = {"epochs": 6, "optimizer": "adam", "lr": 3e-3, "batch_size": 64, "schedule": "cosine",
         "eval_batch_size": 128}
#: the budget every method gets from the dense model, and the retraining / fine-tune recipe.
RETRAIN = {"epochs": 3, "optimizer": "adam", "lr": 1e-3, "batch_size": 64, "schedule": "cosine",
           "eval_batch_size": 128}
#: LTP hyperparameters of every run (the ``ltp`` suite's gradient); λ comes per target.
LTP_COMMON = {"gradient": "exact"}
#: λ per target (see the module docstring).
LTP_LAMBDA = {0.5: 1.0, 0.75: 3.0, 0.875: 10.0}
#: GMP and magnitude prune every layer to the target (see the module docstring).
BASELINE_SCOPE = "layer"
GMP_HP = {"end_fraction": 0.5, "scope": BASELINE_SCOPE}
MAGNITUDE_HP = {"scope": BASELINE_SCOPE}
#: the methods, in the report's order.
METHODS = ("ltp", "gmp", "magnitude")
#: the compression whose LTP runs give the per-layer sparsity of the report.
LEAST_PRUNED_TARGET = 0.875


@dataclass(frozen=True)
class MobilePlan:
    """One network of the suite.

    Attributes:
        model: the registered model.
        kwargs: its options (default :data:`MODEL_KWARGS`).
        note: what the report says about it.
    """

    model: str
    kwargs: dict = field(default_factory=lambda: dict(MODEL_KWARGS))
    note: str = ""


MODELS = (
    MobilePlan("mobilenetv2", note="MobileNetV2: inverted residuals, depthwise 3×3, ReLU6"),
    MobilePlan("efficientnet-b0", note="EfficientNet-B0: MBConv with squeeze-excite, SiLU"),
    MobilePlan("mixnet-s", note="MixNet-S: mixed-kernel depthwise convs, squeeze-excite"),
)
